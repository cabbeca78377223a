"""UI at scale: fill the decision log to N decisions (1,000,000 by default) and time the main pages.

    DATABASE_URL=postgres://…/scope_bench .venv/bin/python bench/ui_scale.py [--decisions 1000000]

Generation is skipped when the database already holds N decisions (re-runs only time the pages).
Rows are real decisions (routing.dashboard.synthetic: a prompt pool through extract_features +
decide, COPY on PostgreSQL). Then the periodic work is run once the way Celery beat would (the
hourly rollup, the audit seal) and timed, and each page is requested through Django's full stack
(middleware, session auth, templates) as an operator: the median of 5 warm requests is reported.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "scope_site.settings")

import django  # noqa: E402

django.setup()

from django.conf import settings  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.db import connection  # noqa: E402
from django.test import Client  # noqa: E402
from django.utils import timezone  # noqa: E402
from tqdm import tqdm  # noqa: E402

from routing.dashboard.accounts import user_create_or_update  # noqa: E402
from routing.dashboard.roles import Role  # noqa: E402
from routing.dashboard.synthetic import generate  # noqa: E402
from routing.models import AuditCheckpoint, DecisionLog  # noqa: E402
from routing.services.audit import audit_seal, audit_verify_step  # noqa: E402
from routing.services.experiments import experiment_upsert  # noqa: E402
from routing.services.rollup import rollup_catch_up  # noqa: E402

LIMIT_S = 1.0


def _estimate_rows() -> int:
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT reltuples::bigint FROM pg_class WHERE relname = 'routing_decisionlog'")
            estimate = int(cursor.fetchone()[0])
        if estimate > 0:
            return estimate
    return DecisionLog.objects.count()


def _fill(n: int) -> None:
    have = _estimate_rows()
    if have >= n * 0.98:
        print(f"decision log already holds ~{have:,} rows: generation skipped")
        return
    call_command("seed_demo")
    experiment_upsert(
        actor="cli:bench",
        name="alpha-test",
        policy="default",
        arms=[{"policy": "default", "name": "balanced"}, {"policy": "cheap-first", "name": "cheap"}],
    )
    todo = n - have
    started = time.perf_counter()
    with tqdm(total=todo, unit="rows", disable=not sys.stderr.isatty()) as bar:
        made = generate(
            decisions=todo,
            days=30,
            policies=["default", "cheap-first", "quality-first", "eu-only"],
            experiment=("alpha-test", {"balanced": "default", "cheap": "cheap-first"}),
            progress=bar.update,
        )
    took = time.perf_counter() - started
    print(
        f"generated {made.decisions:,} decisions, {made.outcomes:,} outcomes, {made.feedback:,} feedback "
        f"in {took:.0f} s ({made.decisions / took:,.0f} decisions/s)"
    )
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("ANALYZE routing_decisionlog; ANALYZE feedback_outcome; ANALYZE feedback_feedback")


def _periodic() -> None:
    later = timezone.now() + timedelta(minutes=1)
    started = time.perf_counter()
    rows = rollup_catch_up(now=later)
    print(f"rollup catch-up: {rows:,} rows aggregated in {time.perf_counter() - started:.1f} s")
    started = time.perf_counter()
    unsealed = DecisionLog.objects.filter(checkpoint__isnull=True).count()
    with tqdm(total=unsealed, unit="rows", disable=not sys.stderr.isatty()) as bar:
        sealed = audit_seal(now=later, progress=bar.update)
    took = time.perf_counter() - started
    print(
        f"audit seal: {sum(c.row_count for c in sealed):,} rows into {len(sealed)} checkpoints in {took:.1f} s"
    )
    started = time.perf_counter()
    step = audit_verify_step(after_sequence=0)
    took = time.perf_counter() - started
    print(f"audit verify: one UI step = {step.rows_checked:,} rows re-hashed in {took:.2f} s")


def _plain(headers: dict[str, str]) -> dict[str, str]:
    """WSGI-style names (HTTP_HX_REQUEST) → header names (HX-Request), as Client(headers=) takes them."""
    return {k.removeprefix("HTTP_").replace("_", "-").title(): v for k, v in headers.items()}


def _time(client: Client, url: str, headers: dict[str, str], repeat: int = 5) -> tuple[float, int]:
    client.get(url, headers=_plain(headers))  # warm (template and catalog caches)
    runs = []
    status = 0
    for _ in range(repeat):
        started = time.perf_counter()
        response: Any = client.get(url, headers=_plain(headers))
        if response.streaming:
            next(iter(response.streaming_content))  # time to the first chunk
            response.close()
        status = response.status_code
        runs.append(time.perf_counter() - started)
    return statistics.median(runs), status


def _pages() -> list[tuple[str, str, dict[str, str]]]:
    newest = (
        DecisionLog.objects.order_by("-created_at", "-id").only("id", "created_at", "chosen_model").first()
    )
    middle = (
        DecisionLog.objects.filter(created_at__lte=timezone.now() - timedelta(days=15))
        .order_by("-created_at", "-id")
        .only("id", "created_at")
        .first()
    )
    assert newest is not None and middle is not None
    cursor = quote(f"{middle.created_at.isoformat()}_{middle.id}")
    last_seq = AuditCheckpoint.objects.order_by("-sequence").values_list("sequence", flat=True).first() or 0
    hx = {"HTTP_HX_REQUEST": "true"}

    def days_ago(n: int) -> str:
        return f"{(timezone.now() - timedelta(days=n)).date()}T00:00"

    return [
        ("overview, 24 h", "/?range=24h", {}),
        ("overview, 7 days", "/?range=7d", {}),
        ("overview, 30 days", "/?range=30d", {}),
        ("providers & models", "/providers/", {}),
        ("policies", "/policies/", {}),
        ("policy editor", "/policies/default/", {}),
        ("experiments (live stats, ~250k rows)", "/experiments/", {}),
        ("predictor", "/predictor/", {}),
        ("decisions, newest page", "/decisions/", {}),
        ("decisions, page 15 days deep", f"/decisions/?after={cursor}", {}),
        ("decisions, filter model", f"/decisions/?model={newest.chosen_model}", {}),
        ("decisions, filter key + outcome=error", "/decisions/?key=support-bot&outcome=error", {}),
        (
            "decisions, filter experiment + 3 days",
            f"/decisions/?experiment=alpha-test&start={days_ago(3)}",
            {},
        ),
        ("decision page", f"/decisions/{newest.id}/", {}),
        ("audit page", "/audit/", {}),
        ("audit verify, one step (HTMX)", f"/audit/verify?after={max(0, last_seq - 1)}", hx),
        ("export CSV of a day, first chunk", f"/decisions/export.csv?start={days_ago(1)}", {}),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--decisions", type=int, default=1_000_000)
    parser.add_argument("--skip-periodic", action="store_true", help="do not run the rollup and seal first")
    parser.add_argument("--generate-only", action="store_true", help="fill the log, then stop")
    args = parser.parse_args()
    settings.ALLOWED_HOSTS = ["*"]
    vendor = connection.vendor
    print(f"database: {vendor} ({connection.settings_dict['NAME']}), cores: {os.cpu_count()}")
    if vendor != "postgresql":
        print("note: the figures that matter are on PostgreSQL (set DATABASE_URL)")
    _fill(args.decisions)
    if args.generate_only:
        return
    if not args.skip_periodic:
        _periodic()
    user_create_or_update(
        username="bench-operator", role=Role.OPERATOR, password="bench-operator-password", actor="cli:bench"
    )
    client = Client()
    assert client.login(username="bench-operator", password="bench-operator-password")
    print(f"\n{'page':44} {'median':>9}  status")
    worst = 0.0
    for name, url, headers in _pages():
        took, status = _time(client, url, headers)
        worst = max(worst, took)
        flag = (
            ""
            if took < LIMIT_S and status == 200
            else "  <-- over budget"
            if took >= LIMIT_S
            else "  <-- error"
        )
        print(f"{name:44} {took * 1000:7.0f} ms  {status}{flag}")
    print(
        f"\nslowest page: {worst * 1000:.0f} ms (budget {LIMIT_S * 1000:.0f} ms); rows: ~{_estimate_rows():,}"
    )


if __name__ == "__main__":
    main()
