"""CPU instructions per request, no-op against route: a figure the machine's noise does not move.

Timings on these shared 2-vCPU machines swing by 2-3x with whatever else runs (the route's in-process
CPU went from 1.1 to 3.6 ms while another job used the other vCPU). Valgrind's callgrind counts the
instructions a process executes instead: for the same code and inputs they agree within about 1%
from run to run (string hashing is fixed with PYTHONHASHSEED=0, and the per-process caches of the
catalog, the active predictor, API keys and circuit states do not expire during the count). Each endpoint runs in a child process under callgrind with instrumentation off while Django
starts, the catalog and predictor load and 30 warm-up requests pass; it is switched on
(`callgrind_control -i on`) for the measured requests only. Requests go through every middleware
with Django's test client (no sockets), rows through a group-commit writer in its own process, as
under `make serve`; the writer and PostgreSQL are not counted.

    DATABASE_URL=postgres://… REDIS_URL=redis://… .venv/bin/python bench/instructions.py [--requests 100] [--top 15] [--stages] [--cold]

--cold also counts simulated cache misses per request with the caches flushed before every request
(callgrind's cache model, this machine's L1 sizes and its 2 MB L2 as the last level): what a request
pays when other processes ran on its CPU in between, which instructions alone do not show.

--stages also counts each route stage alone (features, predict and its parts, the log write and
its parts, …), called in a loop on one request's data, each into a callgrind dump of its own.

The instruction ratio tracks the in-process CPU ratio: on 2026-11-30, noop 1.87 M and route 8.08 M
instructions per request (0.232, the same in three runs), against 0.23 and 1.09 ms of CPU measured
in process on a quiet machine for the same code (0.21); 7.75 M after that day's two cuts (row
hashing, character TF-IDF lookups). Needs valgrind (Debian: valgrind).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
import zlib
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.breakdown import OneDecision  # noqa: E402
from bench.harness import (  # noqa: E402
    DEFAULT_DATABASE_URL,
    DEFAULT_REDIS_URL,
    activate_trained_predictor,
    bench_env,
    chat_body,
    prepare_database,
    refuse_prior_with_active_predictor,
    say,
    tmpdir,
)

WARM_UP_REQUESTS = 30
FLUSH_BYTES = 16 << 20
FLUSH_FUNCTION = "crc32_z"
# --cold's simulated caches: this machine's L1 (32 KB instructions, 48 KB data) and its 2 MB L2 as
# the last level, so a "last-level miss" is a line that had to come from L3 or memory
CACHE_SIM = ("--cache-sim=yes", "--I1=32768,8,64", "--D1=49152,12,64", "--LL=2097152,16,64")
REFRESH_SETTINGS = (
    "SCOPE_CATALOG_TTL_SECONDS",
    "SCOPE_PREDICTOR_CHECK_SECONDS",
    "SCOPE_API_KEY_CACHE_SECONDS",
    "SCOPE_CIRCUIT_SNAPSHOT_SECONDS",
)


def child(endpoint: str, requests: int) -> None:
    """Runs under callgrind: warm up uninstrumented, then count `requests` requests."""
    import django

    django.setup()
    from django.test import Client, override_settings

    from routing.services.warmup import warm_process

    warm_process()
    body = bench_body()
    with override_settings(SCOPE_DECISION_WRITER_SOCKET=os.environ["SCOPE_BENCH_WRITER_SOCKET"]):
        client = Client(HTTP_AUTHORIZATION=f"Bearer {os.environ['SCOPE_BENCH_KEY']}")
        for _ in range(WARM_UP_REQUESTS):
            response = client.post(f"/api/v1/{endpoint}", body, content_type="application/json")
            if response.status_code != 200:
                raise SystemExit(
                    f"/api/v1/{endpoint} answered {response.status_code}: {response.content[:300]!r}"
                )
        # --cold: every request starts with the simulated caches flushed by reading 16 MB (in zlib's
        # crc32_z, whose misses are left out of the count), as when other processes ran in between
        flush = os.urandom(FLUSH_BYTES) if os.environ.get("SCOPE_BENCH_COLD") else b""
        subprocess.run(["callgrind_control", "-i", "on", str(os.getpid())], check=True, capture_output=True)
        for _ in range(requests):
            if flush:
                zlib.crc32(flush)
            client.post(f"/api/v1/{endpoint}", body, content_type="application/json")
        subprocess.run(["callgrind_control", "-i", "off", str(os.getpid())], check=True, capture_output=True)


def bench_body() -> bytes:
    """The bench's chat body, limited to the candidates --models named (SCOPE_BENCH_MODELS), if any."""
    return chat_body(models=[m for m in os.environ.get("SCOPE_BENCH_MODELS", "").split(",") if m])


def decide_anew(one: OneDecision, features: Any) -> Any:
    one.features = features
    return one.decide()


def stage_calls(key: str) -> dict[str, Any]:
    """The route path's stages as calls on one request's data (the bench's 2.2 KB chat body)."""
    import dataclasses
    import hashlib
    import io
    import itertools

    import orjson
    from django.utils import timezone

    from providers.circuit import with_circuit_health
    from routing.audit import HASHED_FIELDS, decision_row_hash_texts
    from routing.capabilities import request_capabilities
    from routing.features import extract_features, text_char_ngrams, text_ngrams
    from routing.models import ApiKey, DecisionLog
    from routing.predictor.model import ScopePredictor
    from routing.route_input import route_input_validate
    from routing.selectors import model_specs
    from routing.services.decision_copy import decision_copy_values_line
    from routing.services.decision_log import _decision_row, _writer_client, time_ordered_uuid
    from routing.services.route import decision_payload, route_decide
    from routing.storable import storable_utf8, unstorable_path
    from scope_site.parsers import JSONParser

    body = bench_body()
    data = route_input_validate(JSONParser().parse(io.BytesIO(body)))
    one = OneDecision.prepare(data, ApiKey.objects.get(name=key))
    messages, features, predictor = one.messages, one.features, one.predictor
    # equal copies of the request's features, taken in turn: the serving kernel keeps the text side of
    # the last features object it saw (for contributions right after predict), so a loop over one
    # object would count that reuse instead of a new request's work
    fresh = itertools.cycle([dataclasses.replace(features) for _ in range(8)])
    row = one.write()
    values = {field.attname: getattr(row, field.attname) for field in DecisionLog._meta.concrete_fields}
    canonical = decision_row_hash_texts(values).json_utf8
    line = decision_copy_values_line(values, canonical)
    # the writer round trip sends rows with ids of their own: a repeated id would make the writer
    # retry its batch row by row
    lines = iter(
        [line.replace(str(row.id).encode(), str(time_ordered_uuid()).encode(), 1) for _ in range(5000)]
    )
    writer = _writer_client()
    candidates = one.decision.candidates
    prompt_utf8 = features.text.encode()
    calls: dict[str, Any] = {
        "route_decide (features … log write)": lambda: route_decide(
            messages=messages,
            api_key=one.api_key,
            metadata=one.metadata,
            catalog=with_circuit_health(model_specs()),
            required_capabilities=request_capabilities(messages=messages, options={}),
        ),
        "features": lambda: extract_features(messages, one.metadata),
        "  word n-grams (words, hashing)": lambda: text_ngrams(features.text),
        "  character n-grams": lambda: text_char_ngrams(features.text),
        "decide, with predict": lambda: decide_anew(one, next(fresh)),
        "  predict": lambda: predictor.predict(next(fresh), one.specs),
    }
    if isinstance(predictor, ScopePredictor):
        layout = predictor.plan.layout(one.specs)
        x = predictor.plan.rows(features, layout)
        projection = predictor.projection
        known = next((s for s in one.specs if s.name in predictor.anchors.index), None)
        calls.update(
            {
                "    design rows (text side + anchors)": lambda: predictor.plan.rows(next(fresh), layout),
                "      the same, numpy path": lambda: predictor.plan._rows_numpy(features, layout),
                "      word TF-IDF weights": lambda: projection.weights(
                    features.ngram_ids, features.ngram_counts
                ),
                "      character TF-IDF weights": lambda: projection.char_weights(features),
                "    trees": lambda: predictor.evaluator.predict(x),
            }
        )
        if known is not None:  # decide() explains a chosen known model, right after predict()
            calls["  contributions of a known model"] = lambda: predictor.contributions(features, known)
    calls.update(
        {
            "log write (row, hash, writer)": one.write,
            "  canonical JSON + hash": lambda: decision_row_hash_texts(
                {name: getattr(row, name) for name in HASHED_FIELDS}
            ),
            "  COPY line": lambda: decision_copy_values_line(values, canonical),
            "  storability checks (prompt encoded)": lambda: (
                storable_utf8(features.text),
                unstorable_path(one.metadata, "metadata") or unstorable_path("bench-breakdown", "user"),
            ),
            "  row instance": lambda: _decision_row(values, one.api_key),
            "  features and candidates as dicts": lambda: (
                features.as_dict(ngrams=False),
                [c.as_dict() for c in candidates],
            ),
            "  prompt sha256, id, clock": lambda: (
                hashlib.sha256(prompt_utf8).hexdigest(),
                time_ordered_uuid(),
                timezone.now(),
            ),
            "  writer round trip": lambda: writer is not None and writer.commit(next(lines)),
            "parse + validate the body": lambda: route_input_validate(JSONParser().parse(io.BytesIO(body))),
            "answer payload + JSON": lambda: orjson.dumps(decision_payload(row)),
        }
    )
    return calls


def stages_child(calls_per_stage: int) -> None:
    """Runs under callgrind: each stage's calls counted into a dump of its own."""
    import django

    django.setup()
    from django.test import override_settings

    from routing.services.warmup import warm_process

    warm_process()
    with override_settings(SCOPE_DECISION_WRITER_SOCKET=os.environ["SCOPE_BENCH_WRITER_SOCKET"]):
        calls = stage_calls(os.environ["SCOPE_BENCH_KEY_NAME"])
        Path(os.environ["SCOPE_BENCH_STAGE_LABELS"]).write_text(json.dumps(list(calls)))
        for name, call in calls.items():
            for _ in range(5):
                call()
            _callgrind("-i", "on")
            for _ in range(calls_per_stage):
                call()
            _callgrind("-i", "off")
            _callgrind("-d", dump_key(name))


def dump_key(label: str) -> str:
    """A stage label as a callgrind dump description (callgrind_control drops the dump of a
    description with brackets or other punctuation, whose counts then go to the next dump)."""
    return re.sub(r"\W+", "_", label.strip()).strip("_")


def _callgrind(*args: str) -> None:
    subprocess.run(["callgrind_control", *args, str(os.getpid())], check=True, capture_output=True)


def total_instructions(out_file: Path) -> int:
    match = re.search(r"^totals:\s*(\d+)", out_file.read_text(errors="replace"), re.MULTILINE)
    if match is None:
        raise SystemExit(f"no totals in {out_file}")
    return int(match.group(1))


def top_functions(out_file: Path, count: int) -> list[str]:
    """The C-level functions with the most instructions of their own (Python code shows as the
    interpreter's eval loop, so this says where native work goes, not which Python function)."""
    text = subprocess.run(
        ["callgrind_annotate", str(out_file)], capture_output=True, text=True, check=True
    ).stdout
    lines = [line for line in text.splitlines() if re.match(r"^\s*[\d,]+ \(\s*[\d.]+%\)\s+\S", line)]
    return [line.strip() for line in lines[1 : 1 + count]]  # the first is PROGRAM TOTALS


def under_callgrind(
    out_file: Path, mode: str, count: int, *, env: dict[str, str], options: tuple[str, ...] = ()
) -> None:
    subprocess.run(
        [
            "valgrind",
            "--tool=callgrind",
            "--instr-atstart=no",
            *options,
            f"--callgrind-out-file={out_file}",
            sys.executable,
            __file__,
            "--child",
            mode,
            str(count),
        ],
        cwd=ROOT,
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def cold_misses(out_file: Path, count: int) -> tuple[dict[str, float], list[tuple[float, str]]]:
    """Per request: {event: count} without the flush's own, and the functions by last-level misses."""
    text = subprocess.run(
        ["callgrind_annotate", "--sort=DLmr", str(out_file)], capture_output=True, text=True, check=True
    ).stdout
    events = re.search(r"^Events shown:\s+(.+)$", text, re.MULTILINE)
    if events is None:
        raise SystemExit(f"no events in {out_file}")
    names = events.group(1).split()
    total: dict[str, float] = {}
    functions: list[tuple[float, str]] = []
    for line in text.splitlines():
        values = re.findall(r"([\d,]+|\.)(?: \(\s*[\d.]+%\))?\s+", line[: line.rfind(" ") + 1])
        if len(values) < len(names) or not re.match(r"^\s*[\d,]+ \(", line):
            continue
        row = {
            name: 0.0 if v == "." else float(v.replace(",", ""))
            for name, v in zip(names, values, strict=False)
        }
        where = line.split(")")[-1].strip() if "PROGRAM TOTALS" in line else line.rsplit("%)", 1)[-1].strip()
        if "PROGRAM TOTALS" in line:
            total = row
        elif FLUSH_FUNCTION in where:
            total = {name: total[name] - row[name] for name in names}
        else:
            functions.append(((row["ILmr"] + row["DLmr"] + row["DLmw"]) / count, where))
    return {name: value / count for name, value in total.items()}, sorted(functions, reverse=True)


def stage_totals(out_file: Path, names: list[str]) -> list[tuple[str, int]]:
    """(label, instructions) of each stage's dump (callgrind writes OUT.1, OUT.2, … in dump order)."""
    by_key = {dump_key(name): name for name in names}
    totals = []
    for dump in sorted(out_file.parent.glob(out_file.name + ".*"), key=lambda f: int(f.suffix[1:])):
        text = dump.read_text(errors="replace")
        trigger = re.search(r"^desc: Trigger: .*dump (\S+)", text, re.MULTILINE)
        if trigger and trigger.group(1) in by_key:
            totals.append((by_key[trigger.group(1)], total_instructions(dump)))
    return totals


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--requests", type=int, default=100, help="measured requests per endpoint (default 100)"
    )
    parser.add_argument(
        "--top", type=int, default=0, help="also list the N costliest C functions of the route"
    )
    parser.add_argument(
        "--prior", action="store_true", help="route with the tier prior, not a trained predictor"
    )
    parser.add_argument(
        "--stages",
        action="store_true",
        help="also count each route stage alone (one request's data, in a loop)",
    )
    parser.add_argument(
        "--models",
        default="",
        help="comma-separated candidates the request is limited to (e.g. the models the predictor "
        "knows, so the chosen model's explanation runs the trees' contributions); default: all",
    )
    parser.add_argument(
        "--cold",
        action="store_true",
        help="also count simulated cache misses per request, every request starting with the caches "
        "flushed (slower: about 2 minutes per endpoint at 40 requests)",
    )
    parser.add_argument("--child", nargs=2, metavar=("ENDPOINT", "REQUESTS"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        if args.child[0] == "stages":
            stages_child(int(args.child[1]))
        else:
            child(args.child[0], int(args.child[1]))
        return 0
    for tool in ("valgrind", "callgrind_control", "callgrind_annotate"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is not installed (Debian: apt-get install valgrind)")
    database_url = os.environ.get("DATABASE_URL") or DEFAULT_DATABASE_URL
    redis_url = os.environ.get("REDIS_URL") or DEFAULT_REDIS_URL
    if not database_url.startswith(("postgres", "pgsql")):
        raise SystemExit("set DATABASE_URL to PostgreSQL: the rows go through the group-commit writer")
    env = bench_env(database_url=database_url, redis_url=redis_url, SCOPE_ENABLE_NOOP_ENDPOINT="1")
    key_name = f"bench-instructions-{int(time.time())}"
    say(f"preparing {database_url.rsplit('@', 1)[-1]} (migrate, seed_demo, API key {key_name})")
    key = prepare_database(env, key_name)
    if args.prior:
        refuse_prior_with_active_predictor(env)
    else:
        say(f"active predictor: {activate_trained_predictor(env) or 'none (the tier prior routes)'}")
    work = tmpdir("scope-instructions-")
    socket_path = str(work / "writer.sock")
    writer = subprocess.Popen(
        [sys.executable, "manage.py", "decision_writer", "--socket", socket_path],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
    )
    per_request: dict[str, float] = {}
    try:
        deadline = time.monotonic() + 30
        while not os.path.exists(socket_path) and writer.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        child_env = dict(
            env,
            SCOPE_BENCH_WRITER_SOCKET=socket_path,
            SCOPE_BENCH_KEY=key,
            SCOPE_BENCH_KEY_NAME=key_name,
            PYTHONHASHSEED="0",
            SCOPE_BENCH_MODELS=args.models,
            # callgrind runs ~50x slower: the per-process caches' refreshes, every few hundred
            # requests at full speed, would come every few requests and make the count vary
            **{name: "3600" for name in REFRESH_SETTINGS},
        )
        for endpoint in ("noop", "route"):
            out_file = work / f"callgrind.{endpoint}.out"
            started = time.monotonic()
            under_callgrind(out_file, endpoint, args.requests, env=child_env)
            per_request[endpoint] = total_instructions(out_file) / args.requests
            say(
                f"{endpoint:>5}: {per_request[endpoint] / 1e6:6.2f} M instructions per request "
                f"({args.requests} requests, {time.monotonic() - started:.0f} s under callgrind)"
            )
            if args.top and endpoint == "route":
                say(f"  costliest C functions of the route (own instructions, all {args.requests} requests):")
                for line in top_functions(out_file, args.top):
                    say(f"    {line[:150]}")
        if args.cold:
            cold_report(work, args, child_env)
        if args.stages:
            out_file = work / "callgrind.stages.out"
            labels = work / "stage-labels.json"
            under_callgrind(
                out_file, "stages", args.requests, env=dict(child_env, SCOPE_BENCH_STAGE_LABELS=str(labels))
            )
            say(
                f"route stages alone, one request's data in a loop ({args.requests} calls each), k instructions per call:"
            )
            for name, total in stage_totals(out_file, json.loads(labels.read_text())):
                say(f"  {name:<40} {total / args.requests / 1e3:8.0f}")
    finally:
        writer.terminate()
        writer.wait(timeout=30)
    say(
        f"noop/route instruction ratio: {per_request['noop'] / per_request['route']:.3f}  "
        f"(routing adds {(per_request['route'] - per_request['noop']) / 1e6:.2f} M instructions per request)"
    )
    return 0


def cold_report(work: Path, args: argparse.Namespace, child_env: dict[str, str]) -> None:
    """Cache misses per request from cold caches (--cold): what a request pays when other processes
    (the other workers, PostgreSQL, the writer, the load generator) ran on its CPU in between."""
    say(
        "from cold caches (flushed before every request; simulated L1 32 KB + 48 KB, last level 2 MB), "
        "per request:"
    )
    misses: dict[str, dict[str, float]] = {}
    for endpoint in ("noop", "route"):
        out_file = work / f"callgrind.{endpoint}.cold.out"
        under_callgrind(
            out_file, endpoint, args.requests, env=dict(child_env, SCOPE_BENCH_COLD="1"), options=CACHE_SIM
        )
        per, functions = cold_misses(out_file, args.requests)
        misses[endpoint] = per
        say(
            f"  {endpoint:>5}: L1 misses {(per['I1mr'] + per['D1mr'] + per['D1mw']) / 1e3:6.1f} k "
            f"(instructions {per['I1mr'] / 1e3:.1f} k), last-level misses "
            f"{(per['ILmr'] + per['DLmr'] + per['DLmw']) / 1e3:6.1f} k "
            f"(instructions {per['ILmr'] / 1e3:.1f} k, data read {per['DLmr'] / 1e3:.1f} k, "
            f"written {per['DLmw'] / 1e3:.1f} k)"
        )
        if args.top and endpoint == "route":
            say("    functions with the most last-level misses per request:")
            for count, where in functions[: args.top]:
                say(f"      {count:8.0f}  {where[:130]}")
    ll = {e: m["ILmr"] + m["DLmr"] + m["DLmw"] for e, m in misses.items()}
    say(f"  last-level misses, noop/route: {ll['noop'] / ll['route']:.3f}")


if __name__ == "__main__":
    raise SystemExit(main())
