"""The group-commit writer: rows committed before the answer, identical to the direct INSERT, none lost or doubled."""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from django.db import connections
from django.test import Client
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from psycopg import errors as psycopg_errors

from routing.audit import HASHED_FIELDS, decision_row_hash, decision_row_hash_texts
from routing.models import DecisionLog
from routing.services.decision_copy import decision_copy_line
from routing.services.decision_writer import (
    FAILED,
    DatabaseUnavailable,
    DecisionWriter,
    ForkedChild,
    WriterClient,
    decision_writer_for_default_database,
    supervise,
)
from tests.conftest import USER_MESSAGE, live_database_url, requires_postgres
from tests.factories import make_api_key, make_catalog, make_policy

pytestmark = [requires_postgres, pytest.mark.django_db(transaction=True)]

TRICKY = "tab\there, newline\nthere, CR\r, backslash \\ and \\n literally, quote \" and 'é ✓ 😀'"


@pytest.fixture(autouse=True)
def _close_worker_connection() -> Iterator[None]:
    yield
    from routing.services import decision_log

    if decision_log._client is not None:
        decision_log._client.close()
        decision_log._client = None


@contextlib.contextmanager
def _serving(w: DecisionWriter) -> Iterator[DecisionWriter]:
    """`w` serving in a thread until the block ends."""
    stop = threading.Event()
    thread = threading.Thread(target=w.serve_forever, args=(stop,), daemon=True)
    thread.start()
    assert w.ready.wait(5)
    try:
        yield w
    finally:
        stop.set()
        thread.join(5)


def _database_down(w: DecisionWriter) -> dict[str, Any]:
    """Point `w` at a port nothing listens on; returns its real connection arguments."""
    good = dict(w.connect_kwargs)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    w.connect_kwargs.update(host="127.0.0.1", port=port, connect_timeout=1)
    return good


@pytest.fixture
def writer(tmp_path: Path) -> Iterator[DecisionWriter]:
    with _serving(decision_writer_for_default_database(path=str(tmp_path / "writer.sock"))) as w:
        yield w


@pytest.fixture
def via_writer(writer: DecisionWriter, settings: Any) -> DecisionWriter:
    settings.SCOPE_DECISION_WRITER_SOCKET = writer.path
    return writer


def _row(**values: Any) -> DecisionLog:
    from django.utils import timezone

    from routing.services.decision_log import time_ordered_uuid

    defaults: dict[str, Any] = {
        "id": time_ordered_uuid(),
        "created_at": timezone.now(),
        "strategy": "hybrid",
        "predictor_version": "prior",
        "candidates": [{"model": "m", "quality": 0.5, "note": TRICKY}],
        "explanation": {"why": TRICKY, "nested": {"list": [1, 2.5, None, True]}},
        "features": {"n_chars": 3},
        "fallbacks": ["a", "b"],
        "metadata": {},
        "feature_schema": 2,
        "prompt": TRICKY,
        "prompt_sha256": "0" * 64,
        "row_hash": "1" * 64,
    }
    defaults.update(values)
    return DecisionLog(**defaults)


def _route(key: str, text: str, **extra: Any) -> Any:
    return Client().post(
        "/api/v1/route",
        data=json.dumps({"messages": USER_MESSAGE(text), "user": "u", **extra}),
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {key}",
    )


@pytest.mark.parametrize("writer_path", [True, False], ids=["group-commit writer", "direct insert"])
def test_numbers_jsonb_changes_still_verify(
    via_writer: DecisionWriter, settings: Any, writer_path: bool
) -> None:
    """jsonb keeps numbers as numeric: no -0.0, and 1e16 reads back as an integer. A row whose
    caller sent such numbers is hashed as jsonb gives them back, so verification finds it intact."""
    from routing.services.audit import audit_verify

    if not writer_path:
        settings.SCOPE_DECISION_WRITER_SOCKET = ""
    make_catalog()
    make_policy("default")
    _, key = make_api_key("numbers")
    # temperature -0.0 also reaches the features (their "temperature" value)
    tricky = {"temperature": -0.0, "big": 1e16, "huge": -1.5e300, "small": [1e-05, 2.5e-07], "n": 2**70}
    # beyond 64 bits (2**70, and -1.5e300 as the integer jsonb makes it) the row is in format 1
    for metadata in (tricky, {k: v for k, v in tricky.items() if k not in ("n", "huge")}):
        response = _route(key, "numbers", metadata=metadata)
        assert response.status_code == 200, response.content
        stored = DecisionLog.objects.get(id=response.json()["decision_id"])
        assert (
            stored.metadata["big"] == 10**16 and stored.metadata.get("huge", -15 * 10**299) == -15 * 10**299
        )
        fields = {name: getattr(stored, name) for name in HASHED_FIELDS}
        assert decision_row_hash(fields, stored.hash_format) == stored.row_hash
    assert DecisionLog.objects.values_list("hash_format", flat=True).distinct().count() == 2
    report = audit_verify()
    assert report.ok and report.rows_checked == 2, report.failure


def test_a_route_answer_has_its_row_committed_by_the_writer_with_a_valid_hash(
    via_writer: DecisionWriter,
) -> None:
    make_catalog()
    make_policy("default")
    _, key = make_api_key("writer")
    response = _route(key, TRICKY)
    assert response.status_code == 200, response.content
    assert via_writer.stats.rows == 1
    row = DecisionLog.objects.get(id=response.json()["decision_id"])
    assert row.prompt == TRICKY
    assert row.candidates == response.json()["candidates"]
    assert row.explanation == response.json()["explanation"]
    assert row.hash_format == 2
    assert decision_row_hash({name: getattr(row, name) for name in HASHED_FIELDS}, 2) == row.row_hash


def test_a_long_prompt_is_stored_lz4_compressed_and_reads_back_intact(via_writer: DecisionWriter) -> None:
    from django.db import connection

    with connection.cursor() as cursor:  # a PostgreSQL built without lz4 keeps pglz (migration 0007)
        cursor.execute("SELECT enumvals FROM pg_settings WHERE name = 'default_toast_compression'")
        methods = cursor.fetchone()[0]
    if "lz4" not in methods:
        pytest.skip("this PostgreSQL has no lz4 support")
    make_catalog()
    make_policy("default")
    _, key = make_api_key("lz4")
    prompt = " ".join(f"question {i}: why is {i} * {i + 7} not {i * i + 1}? {TRICKY}" for i in range(60))
    response = _route(key, prompt)
    assert response.status_code == 200, response.content
    decision_id = response.json()["decision_id"]
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_column_compression(prompt), length(prompt) FROM routing_decisionlog WHERE id = %s",
            [decision_id],
        )
        method, length = cursor.fetchone()
    assert (method, length) == ("lz4", len(prompt))
    assert DecisionLog.objects.get(id=decision_id).prompt == prompt


def test_the_copy_line_stores_what_the_orm_stores(writer: DecisionWriter) -> None:
    through_writer, through_orm = _row(), _row(alpha=0.25, policy_version=3, cache_hit=True)
    line = decision_copy_line(through_writer)
    client = WriterClient(writer.path)
    assert client.commit(line)
    client.close()
    through_orm.save(force_insert=True)
    a = DecisionLog.objects.get(id=through_writer.id)
    b = DecisionLog.objects.get(id=through_orm.id)
    for name in ("prompt", "candidates", "explanation", "features", "fallbacks", "created_at"):
        assert getattr(a, name) == getattr(through_writer, name)
    assert (b.alpha, b.policy_version, b.cache_hit) == (0.25, 3, True)
    assert a.alpha is None and a.policy_version is None and a.cache_hit is False


@pytest.mark.parametrize("with_key", [True, False], ids=["api key", "no api key"])
def test_a_logged_row_is_the_instance_and_the_stored_row_the_orm_would_make(
    via_writer: DecisionWriter, with_key: bool
) -> None:
    """decision_log_write builds its row from one dict of values instead of DecisionLog(...), and
    stores it through a COPY line built from the same dict: the instance it returns must be the
    one the constructor makes, and the row the writer commits the one the ORM's INSERT stores."""
    from django.db.models.signals import post_init, pre_init

    from providers.circuit import with_circuit_health
    from routing.selectors import model_specs
    from routing.services.decision_log import time_ordered_uuid
    from routing.services.route import route_decide

    make_catalog()
    make_policy("default")
    api_key = make_api_key("same-row")[0] if with_key else None
    metadata = {"team": TRICKY, "n": [1, 2.5, None, True], "small": 1e-05, "nested": {"b": {}, "a": []}}
    row = route_decide(
        messages=USER_MESSAGE(f"{TRICKY} and a long tail " * 40),
        api_key=api_key,
        user=TRICKY,
        metadata=metadata,
        catalog=with_circuit_health(model_specs()),
    ).row
    assert via_writer.stats.rows == 1
    # the instance: what DecisionLog(...) builds from the same values, its state included
    assert not pre_init.has_listeners(DecisionLog) and not post_init.has_listeners(DecisionLog)
    values = {field.attname: row.__dict__[field.attname] for field in DecisionLog._meta.concrete_fields}
    assert set(vars(row)) == {"_state", *values}
    built = DecisionLog(api_key=api_key, **{k: v for k, v in values.items() if k != "api_key_id"})
    assert {k: v for k, v in vars(row).items() if k != "_state"} == {
        k: v for k, v in vars(built).items() if k != "_state"
    }
    assert vars(row._state) == vars(built._state)
    assert (row._state.adding, row._state.db) == (True, "default" if with_key else None)
    # the stored row: every column as the ORM's INSERT of the same values stores it
    built.id = time_ordered_uuid()
    built.save(force_insert=True)
    stored, saved = DecisionLog.objects.get(id=row.id), DecisionLog.objects.get(id=built.id)
    for name in values:
        if name != "id":
            assert (name, getattr(stored, name)) == (name, getattr(saved, name))
    assert stored.metadata == metadata and stored.prompt == row.prompt and stored.user == TRICKY
    assert decision_row_hash({name: getattr(stored, name) for name in HASHED_FIELDS}, 2) == row.row_hash


@pytest.mark.parametrize(
    ("metadata", "expected_format"),
    [
        # floats that orjson prints otherwise than repr does (1e-05 → 0.00001, 2.5e-07 → 2.5e-7)
        ({"team": TRICKY, "n": [1, None], "small": [1e-05, 2.5e-07, 7.851e-05, 0.1, 12345678.9]}, 2),
        ({"team": TRICKY, "big": 2**70}, 1),  # beyond orjson's 64 bits: format 1
    ],
)
def test_the_copy_line_from_the_hashed_texts_stores_what_the_orm_stores(
    writer: DecisionWriter, metadata: dict[str, Any], expected_format: int
) -> None:
    row = _row(metadata=metadata, alpha=0.5)
    hash_format, row_hash, texts, _ = decision_row_hash_texts(
        {name: getattr(row, name) for name in HASHED_FIELDS}
    )
    assert row_hash == decision_row_hash({name: getattr(row, name) for name in HASHED_FIELDS}, hash_format)
    row.hash_format = hash_format
    line = decision_copy_line(row, texts)
    assert line != decision_copy_line(row)  # the texts were used (sorted keys, no ASCII escapes)
    client = WriterClient(writer.path)
    assert client.commit(line)
    client.close()
    stored = DecisionLog.objects.get(id=row.id)
    for name in ("candidates", "explanation", "features", "fallbacks", "metadata", "prompt", "alpha"):
        assert getattr(stored, name) == getattr(row, name)
    assert stored.hash_format == hash_format == expected_format
    assert decision_row_hash({name: getattr(stored, name) for name in HASHED_FIELDS}, hash_format) == row_hash


@pytest.mark.parametrize(
    "value",
    [0.5, 0.1 + 0.2, 1e-07, 2.5e-07, 1e-05, 12345678.9, 1e16, 1.7976931348623157e308, 5e-324, -0.0]
    + [math.nan, math.inf, -math.inf],
)
def test_a_float_column_stores_the_very_float(writer: DecisionWriter, value: float) -> None:
    # the COPY line writes floats as orjson prints them (1e-7, not repr's 1e-07): the same double
    row = _row(alpha=value, predicted_cost_usd=-value, predicted_quality=np.float64(value))
    client = WriterClient(writer.path)
    assert client.commit(decision_copy_line(row))
    client.close()
    stored = DecisionLog.objects.get(id=row.id)
    for got, expected in (
        (stored.alpha, value),
        (stored.predicted_cost_usd, -value),
        (stored.predicted_quality, value),
    ):
        assert type(got) is float
        assert (math.isnan(got) and math.isnan(expected)) or (
            got == expected and math.copysign(1, got) == math.copysign(1, expected)
        )


@hypothesis_settings(max_examples=500, deadline=None)
@given(st.uuids(), st.datetimes(timezones=st.just(UTC)), st.datetimes(), st.floats())
def test_uuid_time_and_float_cells_are_the_python_texts(
    row_id: uuid.UUID, utc: datetime, naive: datetime, number: float
) -> None:
    cells = dict(
        zip(
            [f.attname for f in DecisionLog._meta.concrete_fields],
            decision_copy_line(_row(id=row_id, created_at=utc, alpha=number)).rstrip(b"\n").split(b"\t"),
            strict=True,
        )
    )
    assert cells["id"] == str(row_id).encode()
    assert cells["created_at"] == utc.isoformat().encode()
    assert decision_copy_line(_row(created_at=naive)).split(b"\t")[1] == naive.isoformat().encode()
    assert float(cells["alpha"]) == number or (math.isnan(number) and cells["alpha"] == b"nan")


def test_concurrent_workers_share_commits_and_every_row_lands(writer: DecisionWriter) -> None:
    client = WriterClient(writer.path)
    rows = [_row() for _ in range(120)]
    results: list[bool] = []
    lock = threading.Lock()

    def send(chunk: list[DecisionLog]) -> None:
        for row in chunk:
            line = decision_copy_line(row)
            ok = client.commit(line)
            with lock:
                results.append(ok)
        client.close()

    threads = [threading.Thread(target=send, args=(rows[i::8],)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [True] * 120
    assert DecisionLog.objects.filter(id__in=[r.id for r in rows]).count() == 120
    assert writer.stats.rows == 120 and writer.stats.batches <= 120


def test_one_bad_row_fails_alone_and_its_batch_neighbours_commit(writer: DecisionWriter) -> None:
    good, bad = _row(), _row(kind="x" * 50)  # kind is varchar(8): the row cannot be stored
    lines = [decision_copy_line(good), decision_copy_line(bad)]
    answers = writer._commit(lines)
    assert answers[0] is None
    assert answers[1] is not None and "StringDataRightTruncation" in answers[1]
    assert DecisionLog.objects.filter(id=good.id).exists()
    assert not DecisionLog.objects.filter(id=bad.id).exists()


def test_a_malformed_frame_is_refused_with_a_reason(writer: DecisionWriter) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(5)
        sock.connect(writer.path)
        payload = b"only\ttwo columns\n"
        sock.sendall(struct.pack("!I", len(payload)) + payload)
        assert sock.recv(1) == FAILED
        (size,) = struct.unpack("!H", sock.recv(2))
        assert b"malformed frame" in sock.recv(size)


def test_without_a_writer_the_worker_commits_the_row_itself(settings: Any, tmp_path: Path) -> None:
    settings.SCOPE_DECISION_WRITER_SOCKET = str(tmp_path / "nobody-listens.sock")
    make_catalog()
    make_policy("default")
    _, key = make_api_key("no-writer")
    response = _route(key, "hello")
    assert response.status_code == 200
    assert DecisionLog.objects.filter(id=response.json()["decision_id"]).count() == 1


def _one_shot_server(path: str, behaviour: Callable[[socket.socket, bytes], None]) -> threading.Thread:
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(1)

    def serve() -> None:
        conn, _ = listener.accept()
        with conn, listener:
            (size,) = struct.unpack("!I", conn.recv(4))
            data = b""
            while len(data) < size:
                data += conn.recv(size - len(data))
            behaviour(conn, data)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return thread


def test_a_writer_that_commits_then_dies_before_answering_leaves_exactly_one_row(
    settings: Any, tmp_path: Path
) -> None:
    """The answer is lost, not the row: the worker's own write must not add a second one."""
    real = decision_writer_for_default_database(path=str(tmp_path / "unused.sock"))

    def commit_then_vanish(conn: socket.socket, line: bytes) -> None:
        assert real._commit([line]) == [None]
        real._reset()
        connections.close_all()

    path = str(tmp_path / "dies.sock")
    server = _one_shot_server(path, commit_then_vanish)
    settings.SCOPE_DECISION_WRITER_SOCKET = path
    make_catalog()
    make_policy("default")
    _, key = make_api_key("dying-writer")
    response = _route(key, "still logged once")
    server.join(5)
    assert response.status_code == 200
    assert DecisionLog.objects.filter(id=response.json()["decision_id"]).count() == 1
    assert DecisionLog.objects.filter(api_key_name="dying-writer").count() == 1


def test_a_writer_that_cannot_reach_the_database_says_so_and_the_worker_answers_503_at_once(
    settings: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    w = decision_writer_for_default_database(path=str(tmp_path / "down.sock"))
    _database_down(w)
    line = decision_copy_line(_row())
    assert w._commit([line])[0] is not None and "database unavailable" in str(w._commit([line])[0])
    with _serving(w):
        settings.SCOPE_DECISION_WRITER_SOCKET = w.path
        make_catalog()
        make_policy("default")
        _, key = make_api_key("db-away-writer")
        with caplog.at_level("WARNING", logger="scope.errors"):
            response = _route(key, "nobody can write this one")
    # the worker does not try the database itself (in a gevent worker it would wait for its pool)
    assert response.status_code == 503 and response["Retry-After"] == "2"
    assert response.json()["error"]["code"] == "service_unavailable"
    assert not DecisionLog.objects.filter(api_key_name="db-away-writer").exists()
    assert w.stats.failed_rows == 1
    (said,) = [r.getMessage() for r in caplog.records if r.name == "scope.errors"]
    assert said.startswith("database unavailable: OperationalError: the decision writer could not reach it: ")
    assert said.count("unavailable") == 1, said


def test_a_worker_warns_of_refused_rows_once_a_minute_with_a_count(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    w = decision_writer_for_default_database(path=str(tmp_path / "refuse.sock"))
    client = WriterClient(w.path)
    malformed = b"not a COPY line of a decision\n"  # every such row is refused
    with _serving(w), caplog.at_level("WARNING", logger="scope.decision_writer"):
        try:
            assert not any(client.commit(malformed) for _ in range(5))
            assert client._refusals_warned_at is not None
            client._refusals_warned_at -= 61  # a minute later
            assert not client.commit(malformed)
        finally:
            client.close()
    refused = [r.getMessage() for r in caplog.records if "did not commit a row" in r.getMessage()]
    assert len(refused) == 2
    assert "malformed frame" in refused[0] and "more rows" not in refused[0]
    assert "(4 more rows since the last warning)" in refused[1]
    assert w.stats.failed_rows == 6


def test_a_client_whose_writer_cannot_reach_the_database_raises_database_unavailable(tmp_path: Path) -> None:
    w = decision_writer_for_default_database(path=str(tmp_path / "away.sock"))
    _database_down(w)
    client = WriterClient(w.path)
    with _serving(w):
        try:
            with pytest.raises(DatabaseUnavailable, match="database unavailable"):
                client.commit(decision_copy_line(_row()))
        finally:
            client.close()


def test_the_writer_says_when_the_database_goes_away_and_reconnects_by_itself(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    w = decision_writer_for_default_database(path=str(tmp_path / "flaky.sock"))
    good = _database_down(w)
    lost, kept = _row(), _row()
    lost_line, kept_line = decision_copy_line(lost), decision_copy_line(kept)
    with caplog.at_level("WARNING", logger="scope.decision_writer"):
        assert "database unavailable" in str(w._commit([lost_line])[0])
        assert "database unavailable" in str(w._commit([lost_line])[0])  # still away: said once
        w.connect_kwargs = good  # the database is back; nothing else is done to the writer
        assert w._commit([kept_line]) == [None]
    try:
        messages = [r.getMessage() for r in caplog.records if r.name == "scope.decision_writer"]
        assert len([m for m in messages if "database unavailable" in m]) == 1
        assert len([m for m in messages if "reconnected" in m]) == 1
        assert w.stats.outages == 1
        assert DecisionLog.objects.filter(id=kept.id).exists()
        assert not DecisionLog.objects.filter(id=lost.id).exists()
    finally:
        w._reset()


def test_a_writer_whose_connection_is_killed_commits_the_next_batch_on_a_new_one(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # as after a PostgreSQL restart, which ends every open connection: the batch must not be refused
    # (a refusal for the database makes its workers answer 503)
    w = decision_writer_for_default_database(path=str(tmp_path / "killed.sock"))
    first, after = _row(), _row()
    try:
        assert w._commit([decision_copy_line(first)]) == [None]
        backend = w._connection().info.backend_pid
        with connections["default"].cursor() as cursor:
            cursor.execute("SELECT pg_terminate_backend(%s)", [backend])
        with caplog.at_level("WARNING", logger="scope.decision_writer"):
            assert w._commit([decision_copy_line(after)]) == [None]
        assert w._connection().info.backend_pid != backend
        assert w.stats.outages == 0 and not caplog.records
        assert DecisionLog.objects.filter(id__in=[first.id, after.id]).count() == 2
    finally:
        w._reset()


def test_a_constraint_error_comes_back_as_psycopgs_exception_class(tmp_path: Path) -> None:
    w = decision_writer_for_default_database(path=str(tmp_path / "dup.sock"))
    row = _row()
    try:
        assert w._commit([decision_copy_line(row)]) == [None]
        with pytest.raises(psycopg_errors.UniqueViolation):
            w._write([decision_copy_line(row)])
        assert w._commit([decision_copy_line(row)]) == [
            None
        ]  # already there: an earlier attempt committed it
        assert w._commit([decision_copy_line(_row())]) == [None]  # the connection is still usable
    finally:
        w._reset()


def _wait_for(condition: Callable[[], bool], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


def test_supervise_ends_when_the_child_stops_cleanly() -> None:
    children: list[ForkedChild] = []
    restarts = supervise(lambda: ForkedChild(lambda: 0), threading.Event(), on_start=children.append)
    assert restarts == 0 and len(children) == 1 and children[0].returncode == 0


def test_a_supervised_writer_killed_with_sigkill_is_replaced_and_commits_again(tmp_path: Path) -> None:
    """`manage.py decision_writer --supervise`, as `make serve` runs it: kill -9 the writer, a new one serves."""
    path = str(tmp_path / "supervised.sock")
    env = dict(os.environ, DATABASE_URL=live_database_url(), SCOPE_LOG_LEVEL="WARNING")
    manage_py = str(Path(__file__).resolve().parents[2] / "manage.py")
    supervisor = subprocess.Popen(
        [sys.executable, manage_py, "decision_writer", "--supervise", "--socket", path],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    client = WriterClient(path, retry_seconds=0.05)
    try:
        assert supervisor.stdout is not None
        seen: list[str] = []

        def next_writer_pid() -> int:  # the supervisor's "decision writer pid N serving PATH" lines
            assert supervisor.stdout is not None
            for text in supervisor.stdout:
                seen.append(text)
                if text.startswith("decision writer pid") and "serving" in text:
                    return int(text.split()[3])
            raise AssertionError("".join(seen))

        writer_pid = next_writer_pid()
        before, after = _row(), _row()
        line = decision_copy_line(before)
        assert _wait_for(lambda: Path(path).exists(), 60)
        assert client.commit(line)
        os.kill(writer_pid, signal.SIGKILL)
        assert next_writer_pid() != writer_pid
        assert any("died (killed by signal 9)" in text for text in seen), seen
        line = decision_copy_line(after)
        assert _wait_for(
            lambda: client.commit(line), 60
        )  # the first tries fall back: the new one is starting
        assert DecisionLog.objects.filter(id__in=[before.id, after.id]).count() == 2
    finally:
        client.close()
        supervisor.terminate()
        out, _ = supervisor.communicate(timeout=30)
    assert supervisor.returncode == 0
    assert "decision writer stopped: 1 rows" in out and "supervisor stopped: 1 restarts" in out, (
        "".join(seen) + out
    )


def test_a_worker_warns_once_per_outage_and_says_when_the_writer_is_back(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = str(tmp_path / "later.sock")
    client = WriterClient(path, retry_seconds=0.0)
    line = decision_copy_line(_row())
    with caplog.at_level("INFO", logger="scope.decision_writer"):
        assert [client.commit(line) for _ in range(5)] == [False] * 5
        unreachable = [r for r in caplog.records if "unreachable" in r.getMessage()]
        assert len(unreachable) == 1
        with _serving(decision_writer_for_default_database(path=path)):
            try:
                assert client.commit(line)
            finally:
                client.close()
    assert any("reachable again" in r.getMessage() for r in caplog.records)


def test_a_commit_delay_holds_a_first_row_for_a_connected_sender_that_has_not_sent_yet(
    tmp_path: Path,
) -> None:
    w = decision_writer_for_default_database(path=str(tmp_path / "delay.sock"))
    w.commit_delay = 2.0
    first, second = WriterClient(w.path), WriterClient(w.path)
    rows = [_row(), _row()]
    line_a, line_b = decision_copy_line(rows[0]), decision_copy_line(rows[1])
    results: list[bool] = []
    with _serving(w):
        try:
            # both workers connected; only the first has a row: the writer waits for the second's
            assert second._socket() is not None
            sender = threading.Thread(target=lambda: results.append(first.commit(line_a)))
            sender.start()
            time.sleep(0.3)
            assert not results  # held, not committed alone
            assert second.commit(line_b)
            sender.join(5)
        finally:
            first.close()
            second.close()
    assert results == [True]
    assert (w.stats.batches, w.stats.largest_batch) == (1, 2)
    assert DecisionLog.objects.filter(id__in=[r.id for r in rows]).count() == 2


def test_the_writer_socket_moves_to_the_temp_dir_when_the_var_path_is_too_long(tmp_path: Path) -> None:
    from routing.services.decision_writer import writer_socket_path

    short = writer_socket_path(Path("/srv/scope/var"), 42)
    assert short == Path("/srv/scope/var/run/decision-writer-42.sock")
    deep = writer_socket_path(tmp_path / ("d" * 120), 42)
    assert len(os.fsencode(deep)) <= 100 and deep.name.endswith("-42.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.bind(str(deep))  # bindable, unlike the 200-byte path under var/
    deep.unlink()


def test_supervise_restarts_a_killed_writer_and_stops_the_live_one_when_told() -> None:
    children: list[ForkedChild] = []
    stop = threading.Event()
    result: list[int] = []

    def run() -> int:
        time.sleep(120)
        return 0

    thread = threading.Thread(
        target=lambda: result.append(
            supervise(lambda: ForkedChild(run), stop, first_delay=0.05, poll=0.05, on_start=children.append)
        ),
        daemon=True,
    )
    thread.start()
    try:
        assert _wait_for(lambda: len(children) == 1, 10)
        os.kill(children[0].pid, signal.SIGKILL)
        assert _wait_for(lambda: len(children) == 2, 10)
        assert children[0].returncode == -signal.SIGKILL
        assert children[1].poll() is None
    finally:
        stop.set()
        thread.join(20)
    assert result == [1]
    assert children[1].returncode == -signal.SIGTERM  # stopped with the supervisor


def test_a_forked_child_exits_with_what_its_run_returns_or_1_if_it_raises() -> None:
    def boom() -> int:
        raise RuntimeError("no database")

    assert ForkedChild(lambda: 3).wait(10) == 3
    assert ForkedChild(boom).wait(10) == 1


def test_a_batch_whose_row_fails_commits_none_of_its_rows(writer: DecisionWriter) -> None:
    """The pipelined INSERTs before one Sync are one transaction: all of them commit, or none."""
    stored, fresh = _row(), _row()
    assert writer._commit([decision_copy_line(stored)]) == [None]
    with pytest.raises(psycopg_errors.UniqueViolation):
        writer._write([decision_copy_line(fresh), decision_copy_line(stored)])
    assert not DecisionLog.objects.filter(id=fresh.id).exists()
    assert writer._commit([decision_copy_line(fresh)]) == [None]  # the connection is still usable
    assert DecisionLog.objects.filter(id=fresh.id).exists()


def test_a_writer_prepares_its_insert_again_on_a_new_connection(writer: DecisionWriter) -> None:
    assert writer._commit([decision_copy_line(_row())]) == [None]
    writer._reset()  # as after a lost connection
    row = _row()
    assert writer._commit([decision_copy_line(row)]) == [None]
    assert DecisionLog.objects.filter(id=row.id).exists()
