"""Faults under load: PostgreSQL restarted, Redis gone. Prints what clients saw and what was kept.

1. PostgreSQL: wrk drives POST /api/v1/route; after a few seconds the cluster is stopped
   (`pg_ctlcluster --skip-systemctl-redirect <ver> main stop -m fast`) for --pg-outage seconds and
   started again. Figures: JSON 503s while it is down, any other 5xx, seconds from "PostgreSQL
   accepts connections again" to the first 2xx (recovery needs no manual action), and answered
   decisions missing from the database (must be 0).
2. Redis: SCOPE runs against a private redis-server on --redis-port (not the shared one), which is
   shut down for --redis-outage seconds under load. Figures: 5xx (must be 0), /healthz states seen,
   degraded-mode log lines, decisions lost; a job submitted while Redis is down and whether it is
   executed once Redis is back (the stale-job sweep re-enqueues it, a Celery worker runs it).
3. Decision writer (--writer-kill): the group-commit writer process that `make serve` starts for
   sync workers (SCOPE_WORKER_CLASS=sync; gevent workers commit their own rows) is killed with
   SIGKILL under load, rows in flight included. Figures: 5xx (must be 0), decisions
   lost (must be 0), worker fallbacks logged, and seconds until a writer serves the socket again
   (its supervisor starts a new one; meanwhile workers commit their own rows).
4. Writer supervisor (--supervisor-kill): the same with the supervisor killed instead. Its writer
   notices it is orphaned and stops, and gunicorn's master starts a new supervisor on the socket.

The PostgreSQL part restarts the machine's shared server: it is opt-in (--pg) and kept short.

    .venv/bin/python bench/faults.py --redis            # private Redis only
    .venv/bin/python bench/faults.py --pg --redis       # both (PostgreSQL down ~8 s)
    .venv/bin/python bench/faults.py --writer-kill      # kill -9 the decision writer under load
    .venv/bin/python bench/faults.py --supervisor-kill  # kill -9 the writer's supervisor under load
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import (  # noqa: E402
    DEFAULT_DATABASE_URL,
    DEFAULT_REDIS_URL,
    PYTHON,
    ROOT,
    Response,
    bench_env,
    chat_body,
    http_get_json,
    manage,
    missing_decisions,
    prepare_database,
    read_responses,
    recording_script,
    run_wrk,
    say,
    scope_server,
    tmpdir,
)
from routing.services.decision_writer import writer_reachable  # noqa: E402


def pg_version() -> str:
    return sorted(os.listdir("/etc/postgresql"))[-1]


def pg_ready() -> bool:
    return subprocess.run(["pg_isready", "-h", "127.0.0.1", "-q"], check=False).returncode == 0


def pg_ctl(action: str) -> None:
    extra = ["-m", "fast"] if action == "stop" else []
    subprocess.run(
        ["pg_ctlcluster", "--skip-systemctl-redirect", pg_version(), "main", action, *extra],
        check=True,
        capture_output=True,
        timeout=60,
    )


def ensure_pg_running() -> None:
    if not pg_ready():
        subprocess.run(
            ["pg_ctlcluster", "--skip-systemctl-redirect", pg_version(), "main", "start"],
            check=False,
            capture_output=True,
            timeout=60,
        )
    for _ in range(60):
        if pg_ready():
            return
        time.sleep(0.5)
    raise SystemExit("PostgreSQL is not accepting connections again: start it by hand!")


def post(url: str, body: bytes, key: str) -> tuple[int, dict[str, str], Any]:
    request = urllib.request.Request(
        url,
        data=body,
        method="POST",
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {key}"},
    )
    try:
        with urllib.request.urlopen(request, timeout=15) as response:
            return response.status, dict(response.headers), json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        try:
            data = json.loads(raw or b"null")
        except ValueError:
            data = raw[:200]
        return exc.code, dict(exc.headers), data


def summarize(responses: list[Response], database_url: str) -> tuple[Counter[int], int]:
    statuses = Counter(r.status for r in responses)
    answered = [r.decision_id for r in responses if 200 <= r.status < 300]
    return statuses, missing_decisions(database_url, answered)


def route_load_setup(name: str, database_url: str, redis_url: str) -> tuple[dict[str, str], str, Path, Path]:
    """(server environment, API key, work folder, wrk script recording every route answer)."""
    env = bench_env(database_url=database_url, redis_url=redis_url)
    key = prepare_database(env, f"faults-{name}-{int(time.time())}")
    work = tmpdir(f"scope-faults-{name}-")
    return env, key, work, recording_script(work / "route", body=chat_body(), key=key)


def route_load(base_url: str, script: Path, connections: int, seconds: float) -> threading.Thread:
    """wrk on POST /api/v1/route in the background (join the thread to wait for it)."""
    load = threading.Thread(
        target=run_wrk,
        args=(f"{base_url}/api/v1/route",),
        kwargs={"script": script, "connections": connections, "seconds": seconds, "timeout_s": 30},
    )
    load.start()
    return load


def postgres_fault(args: argparse.Namespace, database_url: str, redis_url: str) -> bool:
    say("== PostgreSQL stopped and started under load ==")
    env, key, work, script = route_load_setup("pg", database_url, redis_url)
    marks: dict[str, float] = {}
    probe: dict[str, Any] = {}
    try:
        with scope_server(env, log_dir=work) as server:
            load = route_load(
                server.base_url, script, args.connections, args.before + args.pg_outage + args.after
            )
            time.sleep(args.before)
            marks["stop"] = time.time()
            pg_ctl("stop")
            marks["stopped"] = time.time()
            time.sleep(1.0)
            status, headers, body = post(f"{server.base_url}/api/v1/route", chat_body(), key)
            probe.update(status=status, retry_after=headers.get("Retry-After"), body=body)
            time.sleep(max(0.0, args.pg_outage - (time.time() - marks["stopped"])))
            marks["start"] = time.time()
            pg_ctl("start")
            ensure_pg_running()
            marks["ready"] = time.time()
            load.join()
            time.sleep(1.0)
    finally:
        ensure_pg_running()
    responses = read_responses(work / "route")
    statuses, lost = summarize(responses, database_url)
    # whole seconds strictly between "stopped" and "start issued" (responses carry 1 s timestamps)
    during = Counter(r.status for r in responses if int(marks["stopped"]) < r.at < int(marks["start"]))
    after = Counter(r.status for r in responses if r.at > int(marks["ready"]))
    after_ok = sorted(r.at for r in responses if 200 <= r.status < 300 and r.at >= int(marks["ready"]))
    recovery = (after_ok[0] - int(marks["ready"])) if after_ok else float("nan")
    other_5xx = sum(n for s, n in statuses.items() if s >= 500 and s != 503)
    (work / "marks.json").write_text(json.dumps(marks))
    say(
        f"PostgreSQL stopped at +{args.before:.0f} s; {marks['start'] - marks['stopped']:.1f} s fully down, "
        f"{marks['ready'] - marks['stop']:.1f} s from stop to accepting connections again"
    )
    say(
        f"a request while it was down: HTTP {probe.get('status')}, Retry-After {probe.get('retry_after')}, "
        f"body {json.dumps(probe.get('body'))[:160]}"
    )
    say(
        f"all responses by status: {dict(sorted(statuses.items()))}; while down: {dict(sorted(during.items()))}; "
        f"after: {dict(sorted(after.items()))}"
    )
    say(f"5xx other than 503: {other_5xx}")
    say(
        f"first 2xx {recovery:.0f} s after PostgreSQL accepted connections again (1 s resolution); no manual step"
    )
    say(
        f"decisions lost: {lost}  ({sum(n for s, n in statuses.items() if 200 <= s < 300)} answered 2xx, "
        "each id looked up after the restart)"
    )
    return other_5xx == 0 and lost == 0 and probe.get("status") == 503 and bool(after_ok)


def redis_fault(args: argparse.Namespace, database_url: str) -> bool:
    say("== Redis (private instance) shut down under load ==")
    if shutil.which("redis-server") is None:
        raise SystemExit("redis-server is not installed")
    port = args.redis_port
    redis_url = f"redis://127.0.0.1:{port}/0"
    work = tmpdir("scope-faults-redis-")

    def start_redis() -> subprocess.Popen[bytes]:
        process = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(work),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for _ in range(50):
            if (
                subprocess.run(
                    ["redis-cli", "-p", str(port), "ping"], capture_output=True, check=False
                ).stdout.strip()
                == b"PONG"
            ):
                return process
            time.sleep(0.1)
        raise SystemExit(f"redis-server on port {port} did not start")

    redis = start_redis()
    env = bench_env(database_url=database_url, redis_url=redis_url, SCOPE_SIMULATED_SPEEDUP="50")
    stamp = int(time.time())
    key = prepare_database(env, f"faults-redis-{stamp}")
    limited = manage(env, "create_api_key", f"faults-redis-rpm-{stamp}", "--rpm", "1000000").splitlines()[-1]
    script = recording_script(work / "route", body=chat_body(), key=limited)  # exercises the RPM limiter
    health: list[tuple[float, int, str]] = []
    marks: dict[str, float] = {}
    job: dict[str, Any] = {}
    worker: subprocess.Popen[bytes] | None = None
    try:
        with scope_server(env, log_dir=work) as server:
            stop_polling = threading.Event()

            def poll_health() -> None:
                while not stop_polling.is_set():
                    try:
                        status, body = http_get_json(server.base_url + "/healthz", timeout=3)
                        health.append((time.time(), status, str((body or {}).get("status"))))
                    except OSError:
                        health.append((time.time(), 0, "no answer"))
                    time.sleep(0.5)

            poller = threading.Thread(target=poll_health)
            poller.start()
            load = route_load(
                server.base_url, script, args.connections, args.before + args.redis_outage + args.after
            )
            time.sleep(args.before)
            marks["down"] = time.time()
            redis.terminate()
            redis.wait(timeout=10)
            time.sleep(1.0)
            chat = json.loads(chat_body())
            job_body = json.dumps(
                {"model": "scope/auto", "messages": chat["messages"], "max_tokens": 50}
            ).encode()
            status, _, body = post(f"{server.base_url}/api/v1/jobs", job_body, key)
            job.update(
                submit_status=status,
                id=(body or {}).get("id") if isinstance(body, dict) else None,
                submit_body=body,
            )
            time.sleep(max(0.0, args.redis_outage - (time.time() - marks["down"])))
            redis = start_redis()
            marks["up"] = time.time()
            load.join()
            stop_polling.set()
            poller.join()
            if job.get("id"):
                # the job row survived; once Redis is back the stale-job sweep (a beat task in
                # production, here called at once) enqueues it again and a worker runs it
                worker = subprocess.Popen(
                    [
                        str(Path(PYTHON).parent / "celery"),
                        "-A",
                        "scope_site",
                        "worker",
                        "--pool",
                        "solo",
                        "--loglevel",
                        "WARNING",
                        "--hostname",
                        f"faults-{stamp}@%h",
                    ],
                    cwd=ROOT,
                    env=env,
                    stdout=(work / "worker.log").open("wb"),
                    stderr=subprocess.STDOUT,
                )
                manage(
                    env,
                    "shell",
                    "-c",
                    "from routing.services.jobs import jobs_requeue_stale; "
                    "print(jobs_requeue_stale(queued_older_than_s=0))",
                )
                deadline = time.time() + 60
                while time.time() < deadline:
                    request = urllib.request.Request(
                        f"{server.base_url}/api/v1/jobs/{job['id']}",
                        headers={"Authorization": f"Bearer {key}"},
                    )
                    with urllib.request.urlopen(request, timeout=5) as response:
                        job["final"] = json.loads(response.read())
                    if job["final"].get("status") in ("succeeded", "failed"):
                        break
                    time.sleep(1.0)
            log_text = server.log_path.read_text(errors="replace")
    finally:
        if worker is not None:
            worker.terminate()
            worker.wait(timeout=30)
        redis.terminate()
        redis.wait(timeout=10)
    responses = read_responses(work / "route")
    statuses, lost = summarize(responses, database_url)
    fivexx = sum(n for s, n in statuses.items() if s >= 500)
    down_states = Counter(state for t, _, state in health if marks["down"] + 1 <= t < marks["up"])
    up_states = Counter(state for t, _, state in health if t >= marks["up"] + 2)
    degraded_lines = [line for line in log_text.splitlines() if "degraded" in line.lower()]
    say(f"Redis down for {marks['up'] - marks['down']:.1f} s under {args.connections} clients")
    say(f"route responses by status: {dict(sorted(statuses.items()))}; 5xx: {fivexx}")
    say(f"/healthz while Redis was down: {dict(down_states)}; after: {dict(up_states)}")
    say(
        f"log lines saying degraded: {len(degraded_lines)}"
        + (f"; first: {degraded_lines[0][:160]}" if degraded_lines else "")
    )
    say(f"decisions lost: {lost}")
    final = job.get("final") or {}
    say(
        f"job submitted while Redis was down: HTTP {job.get('submit_status')}"
        + (f", then {final.get('status')} after Redis came back" if final else f" {job.get('submit_body')}")
    )
    job_ok = job.get("submit_status") == 202 and final.get("status") == "succeeded"
    return fivexx == 0 and lost == 0 and down_states.get("degraded", 0) > 0 and job_ok


_WRITER_PID = re.compile(r"decision writer pid (\d+) serving (\S+)")
_WRITER_STOPPED = re.compile(r"decision writer stopped: .*")


def writer_pid(log_path: Path) -> tuple[int, str] | None:
    """The pid and socket of the writer its supervisor started last, from the server log."""
    found = _WRITER_PID.findall(log_path.read_text(errors="replace"))
    return (int(found[-1][0]), found[-1][1]) if found else None


_SUPERVISOR_PID = re.compile(r"decision writer \(group commit\) on \S+, supervisor pid (\d+)")


def writer_kill_fault(
    args: argparse.Namespace, database_url: str, redis_url: str, *, supervisor: bool = False
) -> bool:
    """kill -9 the writer (or with `supervisor`, its supervisor) under load; a new writer must serve."""
    victim = "supervisor" if supervisor else "writer"
    say(f"== decision {victim} killed (SIGKILL) under load ==")
    env, _, work, script = route_load_setup(victim, database_url, redis_url)
    env["SCOPE_WORKER_CLASS"] = "sync"  # gevent workers commit their own rows: only sync ones use a writer
    marks: dict[str, float] = {}
    killed: tuple[int, str] | None = None
    with scope_server(env, log_dir=work) as server:
        load = route_load(server.base_url, script, args.connections, args.before + args.after)
        time.sleep(args.before)
        killed = writer_pid(server.log_path)
        supervisors = _SUPERVISOR_PID.findall(server.log_path.read_text(errors="replace"))
        if supervisor and not supervisors:
            killed = None  # no "supervisor pid N" line: nothing to kill
        if killed is not None:
            marks["kill"] = time.time()
            os.kill(int(supervisors[-1]) if supervisor else killed[0], signal.SIGKILL)
            deadline = time.time() + args.after
            time.sleep(0.05)
            while time.time() < deadline:
                again = writer_pid(server.log_path)
                if again and again[0] != killed[0] and writer_reachable(again[1]) is None:
                    marks["serving"] = time.time()
                    break
                time.sleep(0.1)
        load.join()
        time.sleep(1.0)
    log_text = server.log_path.read_text(errors="replace")  # after the stop: the writers' stats are in
    responses = read_responses(work / "route")
    statuses, lost = summarize(responses, database_url)
    fivexx = sum(n for s, n in statuses.items() if s >= 500)
    after_kill = [r for r in responses if "kill" in marks and r.at >= int(marks["kill"])]
    fallbacks = sum(
        1
        for line in log_text.splitlines()
        if "decision writer connection failed" in line
        or "decision writer unreachable" in line
        or "decision writer did not commit" in line
    )
    if killed is None:
        say(f"no writer or supervisor pid in {server.log_path}: nothing killed")
        return False
    what = "the supervisor of writer" if supervisor else "writer"
    say(f"{what} pid {killed[0]} killed at +{args.before:.0f} s under {args.connections} clients")
    say(
        f"route responses by status: {dict(sorted(statuses.items()))}; after the kill: "
        f"{dict(sorted(Counter(r.status for r in after_kill).items()))}; 5xx: {fivexx}"
    )
    say(f"worker log lines falling back to their own write: {fallbacks}")
    if "serving" in marks:
        say(
            f"a new writer served the socket {marks['serving'] - marks['kill']:.1f} s after the kill (no manual step)"
        )
    else:
        say(
            f"no writer served the socket again within {args.after:.0f} s; workers kept writing their own rows"
        )
    for line in _WRITER_STOPPED.findall(log_text):
        say(f"  {line}")
    say(f"decisions lost: {lost}  ({sum(n for s, n in statuses.items() if 200 <= s < 300)} answered 2xx)")
    return fivexx == 0 and lost == 0 and "serving" in marks


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pg", action="store_true", help="restart the machine's PostgreSQL under load")
    parser.add_argument("--redis", action="store_true", help="stop a private Redis under load")
    parser.add_argument("--writer-kill", action="store_true", help="kill -9 the decision writer under load")
    parser.add_argument(
        "--supervisor-kill", action="store_true", help="kill -9 the decision writer's supervisor under load"
    )
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--before", type=float, default=8.0, help="seconds of load before the fault")
    parser.add_argument("--after", type=float, default=12.0, help="seconds of load after recovery")
    parser.add_argument("--pg-outage", type=float, default=8.0)
    parser.add_argument("--redis-outage", type=float, default=10.0)
    parser.add_argument("--redis-port", type=int, default=6390)
    args = parser.parse_args(argv)
    if not (args.pg or args.redis or args.writer_kill or args.supervisor_kill):
        parser.error("choose --pg, --redis, --writer-kill and/or --supervisor-kill")
    database_url = os.environ.get("DATABASE_URL") or DEFAULT_DATABASE_URL
    redis_url = os.environ.get("REDIS_URL") or DEFAULT_REDIS_URL
    ok = True
    if args.redis:
        ok = redis_fault(args, database_url) and ok
    if args.writer_kill:
        ok = writer_kill_fault(args, database_url, redis_url) and ok
    if args.supervisor_kill:
        ok = writer_kill_fault(args, database_url, redis_url, supervisor=True) and ok
    if args.pg:
        ok = postgres_fault(args, database_url, redis_url) and ok
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
