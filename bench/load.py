"""Sustained load: 64 clients on POST /api/v1/route for 2 minutes, plus budgeted chat completions.

Prints: throughput, status classes (no 5xx allowed), decisions answered vs logged (every answered
decision id is looked up in the database: none may be missing), and for a key with a daily budget
hammered with chat completions at the same time, its spend against the budget (never over).

    .venv/bin/python bench/load.py                      # 120 s, 64 clients
    .venv/bin/python bench/load.py --duration 30        # a shorter run
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from decimal import Decimal
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import (  # noqa: E402
    DEFAULT_DATABASE_URL,
    DEFAULT_REDIS_URL,
    Response,
    WrkResult,
    bench_env,
    chat_body,
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


def psql_value(database_url: str, sql: str) -> str:
    result = subprocess.run(["psql", database_url, "-tAc", sql], capture_output=True, text=True, check=True)
    return result.stdout.strip()


def status_line(responses: list[Response]) -> str:
    classes = Counter(f"{r.status // 100}xx" for r in responses)
    return ", ".join(f"{k}: {v}" for k, v in sorted(classes.items())) or "none"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=float, default=120.0)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--chat-connections", type=int, default=4, help="budgeted chat-completion clients")
    parser.add_argument("--daily-budget-usd", default="0.05")
    parser.add_argument("--workers", type=int, default=None)
    args = parser.parse_args(argv)

    database_url = os.environ.get("DATABASE_URL") or DEFAULT_DATABASE_URL
    redis_url = os.environ.get("REDIS_URL") or DEFAULT_REDIS_URL
    # simulated providers answer 50x faster than their profile, so the budget is reached in the run
    env = bench_env(database_url=database_url, redis_url=redis_url, SCOPE_SIMULATED_SPEEDUP="50")
    stamp = int(time.time())
    route_key_name, budget_key_name = f"load-route-{stamp}", f"load-budget-{stamp}"
    route_key = prepare_database(env, route_key_name)
    budget_key = manage(env, "create_api_key", budget_key_name, "--daily-budget-usd", args.daily_budget_usd)
    budget_key = budget_key.splitlines()[-1]
    work = tmpdir("scope-load-")
    route_script = recording_script(work / "route", body=chat_body(), key=route_key)
    chat = json.loads(chat_body())
    chat_request = json.dumps(
        {"model": "scope/auto", "messages": chat["messages"], "max_tokens": 400, "user": "load"}
    ).encode()
    chat_script = recording_script(work / "chat", body=chat_request, key=budget_key)

    results: dict[str, WrkResult] = {}
    with scope_server(env, workers=args.workers, log_dir=work) as server:
        say(
            f"SCOPE on {server.base_url}: {args.connections} clients on /api/v1/route and "
            f"{args.chat_connections} on /v1/chat/completions (daily budget ${args.daily_budget_usd}) "
            f"for {args.duration:.0f} s"
        )

        def drive(name: str, path: str, script: Path, clients: int) -> None:
            results[name] = run_wrk(
                f"{server.base_url}{path}",
                script=script,
                connections=clients,
                seconds=args.duration,
                timeout_s=30,
            )

        threads = [
            threading.Thread(target=drive, args=("route", "/api/v1/route", route_script, args.connections)),
            threading.Thread(
                target=drive, args=("chat", "/v1/chat/completions", chat_script, args.chat_connections)
            ),
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        time.sleep(2.0)  # let requests in flight at the cut-off finish

    route_responses = read_responses(work / "route")
    chat_responses = read_responses(work / "chat")
    route_ok = [r.decision_id for r in route_responses if 200 <= r.status < 300]
    chat_ok = [r.decision_id for r in chat_responses if 200 <= r.status < 300 and r.decision_id != "-"]
    route_rows = int(
        psql_value(
            database_url, f"SELECT count(*) FROM routing_decisionlog WHERE api_key_name = '{route_key_name}'"
        )
    )
    lost_route = missing_decisions(database_url, route_ok)
    lost_chat = missing_decisions(database_url, chat_ok)
    r = results["route"]
    say()
    say(
        f"route: {r.requests} responses in {r.seconds:.0f} s = {r.rps:.0f} req/s; p50 {r.p50_ms:.1f} ms, "
        f"p99 {r.p99_ms:.1f} ms; socket errors {r.socket_errors}"
    )
    say(f"route status classes: {status_line(route_responses)}")
    say(
        f"chat completions status classes: {status_line(chat_responses)} "
        f"({Counter(x.status for x in chat_responses).get(429, 0)} refused by the budget)"
    )
    fivexx = sum(1 for x in route_responses + chat_responses if x.status >= 500)
    say(f"5xx responses: {fivexx}")
    say(
        f"decisions answered (2xx): {len(route_ok)} route + {len(chat_ok)} chat; "
        f"route decision rows logged: {route_rows} (extra rows = requests cut off by wrk's stop)"
    )
    say(f"decisions lost: {lost_route + lost_chat}  (answered decision ids without a committed row)")
    ledger = psql_value(
        database_url,
        "SELECT coalesce(sum(l.spent_usd), 0), coalesce(sum(l.reserved_usd), 0) FROM routing_spendledger l "
        f"JOIN routing_apikey k ON k.id = l.api_key_id WHERE k.name = '{budget_key_name}' AND l.period = 'day'",
    )
    spent, reserved = (Decimal(x) for x in ledger.split("|"))
    budget = Decimal(args.daily_budget_usd)
    say(
        f"budgeted key: spent ${spent:.6f} + reserved ${reserved:.6f} of a ${budget} daily budget: "
        + ("within the budget" if spent + reserved <= budget else "OVER THE BUDGET")
    )
    ok = fivexx == 0 and lost_route + lost_chat == 0 and spent + reserved <= budget
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
