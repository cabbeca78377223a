"""`make serve`'s gunicorn config on PostgreSQL: a group-commit writer beside the workers, used by them."""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from routing.models import DecisionLog
from tests.conftest import USER_MESSAGE, live_database_url, requires_postgres
from tests.factories import make_api_key, make_catalog, make_policy

ROOT = Path(__file__).resolve().parents[2]
SYNC = {"SCOPE_WORKER_CLASS": "sync"}  # sync workers: a decision writer process commits their rows


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _post(url: str, key: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {key}"},
    )
    try:
        with urllib.request.urlopen(request, timeout=20) as response:
            return int(response.status), json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return int(exc.code), json.loads(exc.read() or b"{}")


@dataclass(frozen=True)
class Served:
    base: str
    key: str
    log_path: Path
    master: subprocess.Popen[bytes]
    first: dict[str, Any]  # the answer of a first route request
    supervisor: int  # the decision writer's supervisor and writer (sync workers; 0 under gevent)
    writer: int

    def route(self) -> dict[str, Any]:
        return _route(self.base, self.key, self.log_path)


@contextmanager
def _served(tmp_path: Path, *, workers: int = 2, extra_env: dict[str, str] | None = None) -> Iterator[Served]:
    """gunicorn with scope_site/gunicorn_conf.py (gevent workers unless `extra_env` says otherwise)
    on PostgreSQL, once it answered a first route request."""
    make_catalog()
    make_policy("default")
    _, key = make_api_key("served")
    port = _free_port()
    env = {
        **os.environ,
        "DATABASE_URL": live_database_url(),
        "SCOPE_VAR_DIR": str(tmp_path),
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "prom"),
        "DJANGO_SETTINGS_MODULE": "scope_site.settings",
        **(extra_env or {}),
    }
    env.pop("SCOPE_TESTING", None)
    env.pop("SCOPE_DECISION_WRITER_SOCKET", None)
    log_path = tmp_path / "serve.log"
    with log_path.open("wb") as log:
        server = subprocess.Popen(
            [
                str(Path(sys.executable).parent / "gunicorn"),
                "scope_site.wsgi:application",
                "-c",
                "scope_site/gunicorn_conf.py",
                "--bind",
                f"127.0.0.1:{port}",
                "--workers",
                str(workers),
            ],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # a process group of its own, as under systemd
        )
        try:
            base = f"http://127.0.0.1:{port}"
            first = _route(base, key, log_path)
            if env.get("SCOPE_WORKER_CLASS") == "sync":  # a writer process commits the workers' rows
                yield Served(
                    base, key, log_path, server, first, _supervisor_pid(log_path), _writer_pid(log_path)
                )
            else:
                yield Served(base, key, log_path, server, first, 0, 0)
        finally:
            server.terminate()
            server.wait(timeout=30)


def _route(base: str, key: str, log_path: Path, *, wait: float = 60) -> dict[str, Any]:
    """One answered route request (retried while the server is still starting)."""
    status, body = 0, dict[str, Any]()
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        try:
            status, body = _post(f"{base}/api/v1/route", key, {"messages": USER_MESSAGE("hi there")})
            break
        except OSError:
            time.sleep(0.25)
    assert status == 200, (body, log_path.read_text()[-3000:])
    return body


def _wait_for_line(log_path: Path, text: str, *, after: int = 0, seconds: float = 60) -> str:
    """The first log line holding `text` past character `after`; fails after `seconds`."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for line in log_path.read_text(errors="replace")[after:].splitlines():
            if text in line:
                return line
        time.sleep(0.1)
    raise AssertionError(f"no {text!r} in the log:\n" + log_path.read_text(errors="replace")[-3000:])


def _supervisor_pid(log_path: Path) -> int:
    """The pid in the master's "decision writer (group commit) on PATH, supervisor pid N" line."""
    return int(_wait_for_line(log_path, "supervisor pid").rsplit(" ", 1)[1])


def _writer_pid(log_path: Path, *, after: int = 0) -> int:
    """The pid in the supervisor's "decision writer pid N serving PATH" line."""
    line = _wait_for_line(log_path, " serving ", after=after)
    return int(line.split("decision writer pid ", 1)[1].split()[0])


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (exited, not yet reaped by its parent) is not alive either
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


def _gone(pid: int, seconds: float = 15) -> bool:
    deadline = time.monotonic() + seconds
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    return not _alive(pid)


@requires_postgres
@pytest.mark.django_db(transaction=True)
def test_gevent_workers_commit_their_own_rows_without_a_writer_process(tmp_path: Path) -> None:
    with _served(tmp_path, workers=2) as served:
        ids = [served.first["decision_id"]] + [served.route()["decision_id"] for _ in range(5)]
        assert DecisionLog.objects.filter(id__in=ids).count() == 6
        assert not list((tmp_path / "run").glob("decision-writer-*.sock"))
    text = served.log_path.read_text(errors="replace")
    assert "decision writer" not in text  # no writer, no supervisor, nothing said about either
    accounts = re.findall(r"worker \d+ decision commits: (\d+) rows in (\d+) commits", text)
    # each worker that committed says how much, as it stops
    assert accounts and sum(int(rows) for rows, _ in accounts) == 6, text[-3000:]


@requires_postgres
@pytest.mark.django_db(transaction=True)
def test_gunicorn_starts_a_decision_writer_and_its_workers_commit_through_it(tmp_path: Path) -> None:
    with _served(tmp_path, extra_env=SYNC) as served:
        log_path = served.log_path
        assert DecisionLog.objects.filter(id=served.first["decision_id"]).count() == 1
        sockets = list((tmp_path / "run").glob("decision-writer-*.sock"))
        assert len(sockets) == 1 and oct(sockets[0].stat().st_mode & 0o777) == "0o600"
    text = log_path.read_text()
    assert "decision writer (group commit) on" in text
    assert text.count("models, predictor none (tier prior)") == 2  # each worker warmed before serving
    assert "decision writer stopped: 1 rows in 1 commits" in text  # the answered row went through it
    assert not list((tmp_path / "run").glob("*.sock"))  # the writer removed its socket


@requires_postgres
@pytest.mark.django_db(transaction=True)
def test_a_killed_writer_supervisor_is_replaced_and_its_orphaned_writer_stops(tmp_path: Path) -> None:
    with _served(tmp_path, extra_env=SYNC) as served:
        log_path, supervisor, writer = served.log_path, served.supervisor, served.writer
        mark = len(log_path.read_text(errors="replace"))
        os.kill(supervisor, signal.SIGKILL)

        _wait_for_line(log_path, f"its parent {supervisor} is gone; stopping", after=mark)
        _wait_for_line(log_path, "decision writer stopped: 1 rows", after=mark)  # it drained and left
        assert _gone(writer)
        _wait_for_line(log_path, f"supervisor pid {supervisor} exited", after=mark)
        again = _wait_for_line(log_path, "decision writer (group commit) on", after=mark)
        assert "again" in again
        new_writer = _writer_pid(log_path, after=mark)
        assert new_writer != writer

        # a worker whose connection went with the old writer writes its next row itself, then reconnects
        ids = [served.first["decision_id"]] + [served.route()["decision_id"] for _ in range(4)]
        assert DecisionLog.objects.filter(id__in=ids).count() == 5
    stopped = re.findall(r"decision writer stopped: (\d+) rows", log_path.read_text(errors="replace")[mark:])
    assert len(stopped) == 2 and stopped[0] == "1" and int(stopped[1]) >= 1, stopped  # the new one served
    assert not _alive(new_writer)
    assert not list((tmp_path / "run").glob("*.sock"))


@requires_postgres
@pytest.mark.django_db(transaction=True)
def test_after_a_reload_the_master_still_stops_its_writer_at_exit(tmp_path: Path) -> None:
    """gunicorn runs its config file afresh on SIGHUP; the writer's state must survive that."""
    with _served(tmp_path, extra_env=SYNC) as served:
        mark = len(served.log_path.read_text(errors="replace"))
        served.master.send_signal(signal.SIGHUP)
        _wait_for_line(served.log_path, "Hang up", after=mark)
        _wait_for_line(served.log_path, "warmed in", after=mark)  # new workers, same writer
        served.route()
        assert _alive(served.supervisor) and _alive(served.writer)
    assert _gone(served.supervisor) and _gone(served.writer)
    assert "decision writer supervisor stopped: 0 restarts" in served.log_path.read_text(errors="replace")


@requires_postgres
@pytest.mark.django_db(transaction=True)
def test_a_master_killed_with_sigkill_leaves_no_writer_running(tmp_path: Path) -> None:
    with _served(tmp_path, extra_env=SYNC) as served:
        served.master.send_signal(signal.SIGKILL)
        assert _gone(served.supervisor) and _gone(served.writer)  # --exit-with-parent, then the writer
        workers = re.findall(r"Booting worker with pid: (\d+)", served.log_path.read_text(errors="replace"))
        assert workers and all(_gone(int(pid)) for pid in workers)  # gunicorn's own orphan check
    text = served.log_path.read_text(errors="replace")
    assert f"its parent {served.master.pid} is gone; stopping" in text
    assert "decision writer stopped: 1 rows" in text  # it committed, then left cleanly


@requires_postgres
@pytest.mark.django_db(transaction=True)
def test_a_stop_of_the_whole_process_group_is_not_logged_as_a_writer_crash(tmp_path: Path) -> None:
    """killpg(SIGTERM), as systemd's default KillMode and Ctrl-C do: the supervisor exits at once,
    the master only after its workers (here held by an idle keep-alive connection for the graceful
    timeout, longer than the watch's poll). Its supervisor's exit is the stop, not a crash to repair."""
    extra = {**SYNC, "GUNICORN_CMD_ARGS": "--graceful-timeout 3"}
    with _served(tmp_path, extra_env=extra) as served:
        held = http.client.HTTPConnection(served.base.removeprefix("http://"), timeout=10)
        held.request("GET", "/healthz")
        held.getresponse().read()  # the connection stays open: its worker waits for it to close
        mark = len(served.log_path.read_text(errors="replace"))
        os.killpg(served.master.pid, signal.SIGTERM)
        served.master.wait(timeout=30)
        held.close()
    assert _gone(served.supervisor) and _gone(served.writer)
    after = served.log_path.read_text(errors="replace")[mark:]
    assert "decision writer supervisor stopped" in after
    assert "exited (code" not in after and "starting another" not in after, after
