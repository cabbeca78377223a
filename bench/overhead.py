"""`make bench-overhead`: what routing costs next to a no-op endpoint of the same stack.

Starts SCOPE with `make serve` (gunicorn's gevent workers) on PostgreSQL + Redis with the no-op
endpoint enabled, then drives POST /api/v1/route and POST /api/v1/noop (same middleware, API-key
auth and JSON parsing; no routing, no write) with wrk at 16 and 64 concurrent clients, several
alternating rounds, and prints medians: throughput, p50/p99, the route/noop throughput ratio,
the single-INSERT floor (POST /api/v1/noop-insert, the no-op plus one committed INSERT of a small
row, at the first concurrency: what any endpoint that durably writes a row per request could reach
on this machine), and decisions lost (2xx answers minus new decision rows), and plots throughput
and CPU per request by process to var/bench-overhead/overhead.png. Then, in this process, the time of
each stage of one decision and the predictor's time as the candidate list grows.

    DATABASE_URL=postgres://… REDIS_URL=redis://… make bench-overhead
    .venv/bin/python bench/overhead.py --duration 10 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import (  # noqa: E402
    DEFAULT_DATABASE_URL,
    DEFAULT_REDIS_URL,
    WrkResult,
    activate_trained_predictor,
    bench_env,
    chat_body,
    count_decisions,
    machine_shares,
    machine_ticks,
    postgres_backends_cpu,
    prepare_database,
    process_tree_cpu_split,
    refuse_prior_with_active_predictor,
    run_wrk,
    say,
    scope_server,
    serve_workers,
    tmpdir,
    wrk_script,
)

ENDPOINTS = ("noop", "route")
# the no-op plus one committed INSERT of a small row: the single-INSERT floor, on this machine, at
# the first concurrency (scope_site/noop.py)
FLOOR = "noop-insert"
ALL_ENDPOINTS = (*ENDPOINTS, FLOOR)


def post_once(url: str, body: bytes, key: str) -> int:
    request = urllib.request.Request(
        url,
        data=body,
        method="POST",
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {key}"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return int(response.status)


def served_compiled(base_url: str) -> str:
    """What /healthz says of the answering worker's compiled kernels: a kernel refused on this CPU
    leaves numpy serving (the same results, slower), which the figures below would otherwise hide."""
    with urllib.request.urlopen(f"{base_url}/healthz", timeout=10) as response:
        parts = json.loads(response.read())["acceleration"]
    numpy = ", ".join(parts["numpy"]) or "nothing"
    return f"compiled in the worker that answered /healthz: {', '.join(parts['compiled']) or 'nothing'}; numpy: {numpy}"


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per wrk run (default 10)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds per setting (default 3)")
    parser.add_argument("--connections", default="16,64", help="concurrent clients (default 16,64)")
    parser.add_argument(
        "--workers", type=int, default=None, help="gunicorn workers (default: the Makefile's)"
    )
    parser.add_argument("--skip-breakdown", action="store_true", help="HTTP figures only")
    parser.add_argument(
        "--in-process-only", action="store_true", help="in-process figures only (no server, no wrk)"
    )
    parser.add_argument(
        "--prior",
        action="store_true",
        help="route with the tier prior (default: import routellm-gsm8k and route with a trained predictor)",
    )
    parser.add_argument(
        "--models",
        default="",
        help="comma-separated candidates each route request is limited to (e.g. the models the "
        "predictor knows, so the chosen model's explanation runs the trees' contributions); default: all",
    )
    args = parser.parse_args(argv)

    database_url = os.environ.get("DATABASE_URL") or DEFAULT_DATABASE_URL
    redis_url = os.environ.get("REDIS_URL") or DEFAULT_REDIS_URL
    if not database_url.startswith(("postgres", "pgsql")):
        raise SystemExit("bench-overhead measures the production stack: set DATABASE_URL to PostgreSQL")
    connections = [int(c) for c in args.connections.split(",") if c.strip()]
    env = bench_env(database_url=database_url, redis_url=redis_url, SCOPE_ENABLE_NOOP_ENDPOINT="1")
    key_name = f"bench-overhead-{int(time.time())}"
    say(f"preparing {database_url.rsplit('@', 1)[-1]} (migrate, seed_demo, API key {key_name})")
    key = prepare_database(env, key_name)
    if args.prior:
        refuse_prior_with_active_predictor(env)
    else:
        version = activate_trained_predictor(env)
        say(f"active predictor: {version or 'none (no data set found: the tier prior routes)'}")
    body = chat_body(models=[m for m in args.models.split(",") if m])
    if args.in_process_only:
        in_process_figures(env, body=body, key=key)
        return 0
    work = tmpdir("scope-bench-")
    script = wrk_script(work, body=body, key=key)

    results: dict[tuple[str, int], list[WrkResult]] = {}
    cpu_ms: dict[tuple[str, int], list[float]] = {}  # server + PostgreSQL CPU per request
    cpu_parts: dict[tuple[str, int], list[dict[str, float]]] = {}  # the same, per part
    machine: dict[tuple[str, int], list[tuple[float, float]]] = {}  # (busy, stolen) shares per run
    answered = logged = 0
    with scope_server(env, workers=args.workers, log_dir=work) as server:
        for endpoint in ALL_ENDPOINTS:
            status = post_once(f"{server.base_url}/api/v1/{endpoint}", body, key)
            if status != 200:
                raise SystemExit(f"/api/v1/{endpoint} answered {status}")
        say(
            f"SCOPE on {server.base_url} (make serve, {serve_workers(env, args.workers)}); body {len(body)} bytes; "
            f"wrk {args.duration:.0f} s per run, {args.rounds} rounds"
        )
        # warm-up: imports, connections, catalog snapshot in every worker
        for endpoint in ALL_ENDPOINTS:
            warm_up(f"{server.base_url}/api/v1/{endpoint}", script=script)
        say(served_compiled(server.base_url))
        for round_no in range(args.rounds):
            for clients in connections:
                endpoints = ALL_ENDPOINTS if clients == connections[0] else ENDPOINTS
                order = endpoints if round_no % 2 == 0 else tuple(reversed(endpoints))
                for endpoint in order:
                    before = count_decisions(database_url, key_name) if endpoint == "route" else 0
                    cpu_before = cpu_now(server.process.pid, database_url)
                    ticks_before = machine_ticks()
                    result = run_wrk(
                        f"{server.base_url}/api/v1/{endpoint}",
                        script=script,
                        connections=clients,
                        seconds=args.duration,
                    )
                    busy, stolen = machine_shares(ticks_before, machine_ticks())
                    machine.setdefault((endpoint, clients), []).append((busy, stolen))
                    cpu_after = cpu_now(server.process.pid, database_url)
                    per_request = {
                        part: 1000 * (cpu_after[part] - cpu_before[part]) / max(result.requests, 1)
                        for part in cpu_after
                    }
                    results.setdefault((endpoint, clients), []).append(result)
                    cpu_ms.setdefault((endpoint, clients), []).append(sum(per_request.values()))
                    cpu_parts.setdefault((endpoint, clients), []).append(per_request)
                    if endpoint == "route":
                        time.sleep(1.0)  # requests still in flight when wrk stopped finish
                        logged += count_decisions(database_url, key_name) - before
                        answered += result.answered_2xx
                    say(
                        f"  round {round_no + 1} {endpoint:>11} c={clients:<3} {result.rps:8.0f} req/s  "
                        f"p50 {result.p50_ms:6.2f} ms  p99 {result.p99_ms:7.2f} ms  non-2xx {result.non_2xx}  "
                        f"socket errors {result.socket_errors}  CPU {cpu_ms[(endpoint, clients)][-1]:.2f} ms/req  "
                        f"machine busy {busy:.0%} (stolen {stolen:.0%})"
                    )

    say()
    say("endpoint     clients   req/s (median)   p50 ms   p99 ms   non-2xx   socket errors   CPU ms/req")
    for (endpoint, clients), runs in sorted(results.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        say(
            f"{endpoint:<11}  {clients:>7}   {median([r.rps for r in runs]):>14.0f}   "
            f"{median([r.p50_ms for r in runs]):>6.2f}   {median([r.p99_ms for r in runs]):>6.2f}   "
            f"{sum(r.non_2xx for r in runs):>7}   {sum(r.socket_errors for r in runs):>13}   "
            f"{median(cpu_ms[(endpoint, clients)]):>10.2f}"
        )
    for clients in connections:
        measured = [e for e in ALL_ENDPOINTS if (e, clients) in results]
        ratios = [
            route.rps / noop.rps
            for route, noop in zip(results[("route", clients)], results[("noop", clients)], strict=True)
            if noop.rps
        ]
        label = "route/noop throughput ratio" + (
            "" if clients == connections[0] else f" at {clients} clients"
        )
        say(f"{label}: {median(ratios):.2f}  (rounds: {', '.join(f'{r:.2f}' for r in ratios)})")
        if (FLOOR, clients) in results:
            floors = [
                floor.rps / noop.rps
                for floor, noop in zip(results[(FLOOR, clients)], results[("noop", clients)], strict=True)
                if noop.rps
            ]
            say(
                f"  single-INSERT floor on this machine, noop-insert/noop throughput ratio: {median(floors):.2f}  "
                f"(rounds: {', '.join(f'{r:.2f}' for r in floors)}; the no-op plus one committed INSERT of a "
                "small row, nothing else)"
            )
        cpu_ratio = median(cpu_ms[("noop", clients)]) / median(cpu_ms[("route", clients)])
        say(
            f"  CPU per request at {clients} clients (gunicorn workers + PostgreSQL backends): noop "
            f"{median(cpu_ms[('noop', clients)]):.2f} ms, route {median(cpu_ms[('route', clients)]):.2f} ms; "
            f"noop/route CPU ratio {cpu_ratio:.2f} (the throughput ratio on an otherwise idle machine)"
        )
        say(
            "  every CPU of the machine busy (wrk and all else included), medians over rounds: "
            + ", ".join(
                f"{endpoint} {median([m[0] for m in machine[(endpoint, clients)]]):.0%} "
                f"(stolen {median([m[1] for m in machine[(endpoint, clients)]]):.0%})"
                for endpoint in measured
            )
        )
        for endpoint in measured:
            parts = cpu_parts[(endpoint, clients)]
            say(
                f"    {endpoint}: "
                + ", ".join(f"{part} {median([p[part] for p in parts]):.2f}" for part in parts[0])
                + " ms (medians over rounds)"
            )
    say(group_commit_account(server.log_path.read_text(errors="replace")))
    plot_path = plot_overhead(results, cpu_parts, connections)
    say(f"plot: {plot_path}")
    lost = answered - logged
    say(
        f"decisions lost: {max(0, lost)}  ({answered} answered 2xx, {logged} new decision rows"
        + (f"; {-lost} rows of requests still in flight when wrk stopped" if lost < 0 else "")
        + ")"
    )

    if not args.skip_breakdown:
        in_process_figures(env, body=body, key=key)
    return 0 if lost <= 0 else 1


_ACCOUNT = re.compile(
    r"(?:decision writer stopped|decision commits): (\d+) rows in (\d+) commits \(largest (\d+)\), "
    r"(\d+) not committed, (\d+) database outages"
)


def group_commit_account(log: str) -> str:
    """The group commits' own accounts, printed as they stop (the writer process, or each gevent
    worker), summed."""
    found = [[int(x) for x in m.groups()] for m in _ACCOUNT.finditer(log)]
    if not found:
        return "group commit: no account in the server log"
    rows, commits, largest, failed, outages = (
        sum(f[0] for f in found),
        sum(f[1] for f in found),
        max(f[2] for f in found),
        sum(f[3] for f in found),
        sum(f[4] for f in found),
    )
    return (
        f"group commit ({len(found)} {'committer' if len(found) == 1 else 'committers'}): {rows} rows "
        f"in {commits} commits (largest {largest}), {failed} not committed, {outages} database outages"
    )


def plot_overhead(
    results: dict[tuple[str, int], list[WrkResult]],
    cpu_parts: dict[tuple[str, int], list[dict[str, float]]],
    connections: list[int],
) -> Path:
    """var/bench-overhead/overhead.png: throughput per round and the median CPU per request by
    process (workers, decision writer, PostgreSQL), no-op beside route, per concurrency."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(__file__).resolve().parent.parent / "var" / "bench-overhead" / "overhead.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5))
    colours = {"noop": "#94a3b8", "route": "#2563eb", FLOOR: "#f97316"}
    width = 0.27
    for i, clients in enumerate(connections):
        for j, endpoint in enumerate(ALL_ENDPOINTS):
            runs = results.get((endpoint, clients))
            if not runs:
                continue
            x = i + (j - 1) * width
            left.bar(x, median([r.rps for r in runs]), width, color=colours[endpoint],
                     label=endpoint if i == 0 else None)  # fmt: skip
            left.scatter([x] * len(runs), [r.rps for r in runs], color="black", s=10, zorder=3)
            bottom = 0.0
            parts = cpu_parts[(endpoint, clients)]
            for k, part in enumerate(parts[0]):
                value = median([p[part] for p in parts])
                shade = ("#1e3a8a", "#60a5fa", "#f59e0b", "#10b981")[k % 4]
                right.bar(x, value, width, bottom=bottom, color=shade, edgecolor="white",
                          label=part if i == 0 and j == 1 else None)  # fmt: skip
                bottom += value
            right.text(x, bottom, f"{endpoint}\n{bottom:.2f}", ha="center", va="bottom", fontsize=8)
    for ax in (left, right):
        ax.set_xticks(range(len(connections)), [f"{c} clients" for c in connections])
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=8)
    left.set_title("throughput (bars: median, dots: rounds)")
    left.set_ylabel("requests per second")
    right.set_title("CPU per request by process (medians)")
    right.set_ylabel("ms")
    right.margins(y=0.15)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def warm_up(url: str, *, script: Path, runs: int = 6) -> None:
    """3 s runs until two in a row agree within 10%: every worker's caches, connections and
    per-process memos are filled before a round is measured (one short warm-up left some of that
    inside the first round)."""
    previous = 0.0
    for _ in range(runs):
        rps = run_wrk(url, script=script, connections=16, seconds=3).rps
        if previous and abs(rps - previous) <= 0.1 * max(rps, previous):
            return
        previous = rps


def cpu_now(root: int, database_url: str) -> dict[str, float]:
    """CPU seconds so far: gunicorn master + workers, the decision writer, PostgreSQL backends."""
    return {**process_tree_cpu_split(root), "postgres": postgres_backends_cpu(database_url)}


def in_process_figures(env: dict[str, str], *, body: bytes, key: str) -> None:
    keep = ("DATABASE_URL", "REDIS_URL", "DJANGO_SETTINGS_MODULE", "SCOPE_ENABLE_NOOP_ENDPOINT")
    os.environ.update({k: env[k] for k in keep})
    import django

    django.setup()
    from bench.breakdown import decision_breakdown, feature_timing, predictor_scaling, request_breakdown

    say()
    say("one decision, in process (median / p99 ms; one sender, so the group commit has nothing to group):")
    work = tmpdir("scope-writer-")
    socket_path = str(work / "writer.sock")
    writer = subprocess.Popen(
        [sys.executable, "manage.py", "decision_writer", "--socket", socket_path],
        cwd=Path(__file__).resolve().parent.parent,
        env=env,
        stdout=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while not os.path.exists(socket_path) and writer.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        timings = decision_breakdown(body=body, key=key, writer_socket=socket_path)
        in_request = request_breakdown(body=body, key=key, writer_socket=socket_path)
    finally:
        writer.terminate()
        writer.wait(timeout=30)
    for t in timings:
        say(f"  {t.name:<34} {t.p50_ms:7.3f} / {t.p99_ms:7.3f}")
    say(
        f"  {'sum of medians (group commit)':<34} {sum(t.p50_ms for t in timings if 'own INSERT' not in t.name):7.3f}"
    )
    say()
    say("whole requests in process (every middleware, no sockets; CPU time, mean ms per request):")
    say(
        f"  noop {in_request.noop_ms:.3f}, route {in_request.route_ms:.3f}: routing adds "
        f"{in_request.route_ms - in_request.noop_ms:.3f} ms; route stages as they cost inside those requests:"
    )
    for label, ms in in_request.stages_ms.items():
        say(f"  {label:<34} {ms:7.3f}")
    ft = feature_timing()
    say(f"  {ft.name:<34} {ft.p50_ms:7.3f} / {ft.p99_ms:7.3f}   (target p99 < 0.3 ms)")
    import json

    version, scaling = predictor_scaling(prompt_messages=json.loads(body)["messages"])
    say(
        f"predictor time per decision ({version}{', the tier prior: no trained predictor is active' if version == 'prior' else ''}), median / p99 ms:"
    )
    for t in scaling:
        say(f"  {t.name:<16} {t.p50_ms:7.3f} / {t.p99_ms:7.3f}")


if __name__ == "__main__":
    raise SystemExit(main())
