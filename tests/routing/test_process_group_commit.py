"""A gevent worker's own group commit: its connections' rows committed together, answers as the writer's."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from routing.models import DecisionLog
from routing.services import decision_log
from routing.services.decision_copy import decision_copy_line
from routing.services.decision_writer import (
    DatabaseUnavailable,
    ProcessGroupCommit,
    process_group_commit_for_default_database,
)
from tests.conftest import live_database_url, requires_postgres
from tests.factories import make_api_key, make_catalog, make_policy
from tests.routing.test_decision_writer import _database_down, _route, _row

pytestmark = [requires_postgres, pytest.mark.django_db(transaction=True)]

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def group(monkeypatch: pytest.MonkeyPatch) -> Iterator[ProcessGroupCommit]:
    """The process group commit that a gevent worker's route requests use (gevent's detection
    answered yes: the requests themselves run on this test's thread)."""
    committer = process_group_commit_for_default_database()
    monkeypatch.setattr(decision_log, "_group", (os.getpid(), committer))
    yield committer
    committer.writer._reset()


def _routing_key(name: str) -> str:
    """A key that can route: the demo catalog and a default policy exist."""
    make_catalog()
    make_policy("default")
    return make_api_key(name)[1]


def test_rows_that_arrive_during_a_commit_share_the_next_one() -> None:
    group = process_group_commit_for_default_database()
    first_commit_started = threading.Event()
    commit = group.writer._commit

    def slow_first(lines: list[bytes]) -> list[str | None]:
        if not first_commit_started.is_set():
            first_commit_started.set()
            time.sleep(0.3)  # the other seven rows arrive meanwhile
        return commit(lines)

    group.writer._commit = slow_first  # type: ignore[method-assign]
    rows = [_row() for _ in range(8)]
    answers: dict[int, bool] = {}

    def send(i: int) -> None:
        answers[i] = group.commit(decision_copy_line(rows[i]))

    threads = [threading.Thread(target=send, args=(0,))]
    threads[0].start()
    assert first_commit_started.wait(5)
    threads += [threading.Thread(target=send, args=(i,)) for i in range(1, 8)]
    for t in threads[1:]:
        t.start()
    for t in threads:
        t.join(10)
    group.writer._reset()
    assert answers == dict.fromkeys(range(8), True)
    assert DecisionLog.objects.filter(id__in=[r.id for r in rows]).count() == 8
    stats = group.writer.stats
    assert (stats.rows, stats.batches, stats.largest_batch) == (8, 2, 7)


def test_a_gevent_workers_route_answer_has_its_row_committed_by_its_own_group_commit(
    group: ProcessGroupCommit, settings: Any
) -> None:
    settings.SCOPE_DECISION_WRITER_SOCKET = "/nonexistent/writer.sock"  # never asked
    key = _routing_key("own-group")
    response = _route(key, "committed by the worker")
    assert response.status_code == 200
    assert DecisionLog.objects.filter(id=response.json()["decision_id"]).count() == 1
    assert decision_log.process_group_commit_account() == (
        "1 rows in 1 commits (largest 1), 0 not committed, 0 database outages"
    )


def test_without_the_database_a_gevent_worker_answers_503_at_once(
    group: ProcessGroupCommit, caplog: pytest.LogCaptureFixture
) -> None:
    key = _routing_key("own-group-away")
    _database_down(group.writer)
    with caplog.at_level("WARNING", logger="scope.errors"):
        response = _route(key, "nobody can write this one")
    assert response.status_code == 503 and response["Retry-After"] == "2"
    assert not DecisionLog.objects.filter(api_key_name="own-group-away").exists()
    (said,) = [r.getMessage() for r in caplog.records if r.name == "scope.errors"]
    assert said.startswith("database unavailable: OperationalError: this worker's decision commits could not")


def test_a_committer_that_fails_answers_with_the_reason_and_the_row_is_written_directly(
    group: ProcessGroupCommit, caplog: pytest.LogCaptureFixture
) -> None:
    key = _routing_key("own-group-bug")
    commit = group.writer._commit
    calls = []

    def broken_once(lines: list[bytes]) -> list[str | None]:
        calls.append(len(lines))
        if len(calls) == 1:
            raise RuntimeError("a bug in the committer")
        return commit(lines)

    group.writer._commit = broken_once  # type: ignore[method-assign]
    with caplog.at_level("WARNING", logger="scope.decision_writer"):
        first = _route(key, "written directly")
    second = _route(key, "committed by the group again")  # the committing thread lived on
    assert first.status_code == second.status_code == 200
    ids = [first.json()["decision_id"], second.json()["decision_id"]]
    assert DecisionLog.objects.filter(id__in=ids).count() == 2
    assert calls == [1, 1] and group.writer.stats.rows == 1
    (warned,) = [r.getMessage() for r in caplog.records if "did not commit a row" in r.getMessage()]
    assert warned.startswith("this worker's decision commits did not commit a row (RuntimeError: a bug")


def test_a_caller_whose_commit_never_comes_is_told_the_database_is_away() -> None:
    group = process_group_commit_for_default_database()
    group.wait_seconds = 0.2
    release = threading.Event()
    group.writer._commit = lambda lines: [None] * len(lines) if release.wait(5) else []  # type: ignore[method-assign]
    try:
        with pytest.raises(DatabaseUnavailable, match="no commit within 0 s"):
            group.commit(decision_copy_line(_row()))
    finally:
        release.set()


_PATCHED = """
import gevent.monkey
gevent.monkey.patch_all()
import os, sys, time
import django
django.setup()
import gevent
from django.utils import timezone
from routing.models import DecisionLog
from routing.services.decision_copy import decision_copy_line
from routing.services.decision_log import time_ordered_uuid
from routing.services.decision_writer import process_group_commit_for_default_database

group = process_group_commit_for_default_database()
row = DecisionLog(
    id=time_ordered_uuid(), created_at=timezone.now(), strategy="hybrid", predictor_version="prior",
    candidates=[], explanation={}, features={}, fallbacks=[], metadata={}, feature_schema=2,
    prompt="p", prompt_sha256="0" * 64, row_hash="1" * 64,
)
ticks = [0]
def ticker():
    while True:
        gevent.sleep(0.01)
        ticks[0] += 1
gevent.spawn(ticker)
print("committing", flush=True)
started = time.monotonic()
answer = group.commit(decision_copy_line(row))
print(f"answer={answer!r} ticks={ticks[0]} waited={time.monotonic() - started:.2f} id={row.id}", flush=True)
"""


def test_under_gevent_a_commit_waiting_on_postgresql_lets_the_workers_other_greenlets_run() -> None:
    """The table is locked by this test, so the worker's INSERT waits in PostgreSQL for a second:
    meanwhile another greenlet of that process keeps running (blocking libpq calls would stop it)."""
    env = {**os.environ, "DATABASE_URL": live_database_url(), "DJANGO_SETTINGS_MODULE": "scope_site.settings"}
    env.pop("SCOPE_TESTING", None)
    with psycopg.connect(live_database_url()) as locker:
        locker.execute("LOCK TABLE routing_decisionlog IN SHARE MODE")  # INSERTs wait for it
        child = subprocess.Popen(
            [sys.executable, "-c", _PATCHED], cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True
        )
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "committing"
        time.sleep(1.0)
        locker.commit()  # the lock goes: the INSERT proceeds
    out, _ = child.communicate(timeout=30)
    fields = dict(part.split("=", 1) for part in out.split())
    assert fields["answer"] == "True", out
    assert float(fields["waited"]) >= 0.8
    assert int(fields["ticks"]) >= 30, out  # ~100 ticks of 10 ms in the second it waited
    assert DecisionLog.objects.filter(id=fields["id"]).count() == 1
