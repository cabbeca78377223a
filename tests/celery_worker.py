"""A real Celery worker (subprocess) on the Redis broker and the pytest test database.

Use it from a test module:

    from tests import celery_worker as worker_fixtures
    from tests.celery_worker import CeleryWorker

    celery_worker = worker_fixtures.celery_worker  # makes the fixture visible in this module

    @pytest.mark.celery_worker
    @pytest.mark.django_db(transaction=True)
    def test_it_runs_on_a_worker(celery_worker: CeleryWorker) -> None:
        ... enqueue (on commit) ...
        celery_worker.wait_for(lambda: Job.objects.get(...).status == "succeeded")

The fixture depends on `transactional_db`: rows the test writes are committed, so the worker
process sees them. The worker points at the test database (pytest-django's `test_<name>`), the
same REDIS_URL, SCOPE_TESTING=1 and SCOPE_CATALOG_TTL_SECONDS=0; pass more environment with
`run_celery_worker(env={...})`. It is skipped (with the reason) unless REDIS_URL is set and the
test database is PostgreSQL (an in-memory SQLite test database cannot be shared between
processes). Startup waits for the worker's "ready" line; teardown asks for a warm shutdown.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

ROOT = Path(__file__).resolve().parent.parent
_READY_TIMEOUT_S = 60.0


def _database_url() -> str:
    """The URL of the database this test process uses now (the test database)."""
    from django.db import connection

    if connection.vendor != "postgresql":
        pytest.skip("a real Celery worker needs PostgreSQL (DATABASE_URL): it must share the test database")
    s = connection.settings_dict
    auth = quote(s.get("USER") or "", safe="")
    if s.get("PASSWORD"):
        auth += ":" + quote(s["PASSWORD"], safe="")
    host = s.get("HOST") or "127.0.0.1"
    port = f":{s['PORT']}" if s.get("PORT") else ""
    return f"postgres://{auth}{'@' if auth else ''}{host}{port}/{s['NAME']}"


class CeleryWorker:
    """A `celery -A scope_site.worker worker` subprocess (as `make worker`); `output` keeps its log lines."""

    def __init__(self, env: Mapping[str, str], *, pool: str = "solo", concurrency: int = 1):
        self.name = f"scope-test-{uuid.uuid4().hex[:8]}@%h"
        self.env = dict(env)
        self.pool = pool
        self.concurrency = concurrency
        self.output: list[str] = []
        self.process: subprocess.Popen[str] | None = None
        self._ready = threading.Event()

    def start(self) -> CeleryWorker:
        self._ready.clear()
        command = [
            sys.executable, "-m", "celery", "-A", "scope_site.worker", "worker",
            "--loglevel", "INFO", "--hostname", self.name, "--pool", self.pool,
            "--concurrency", str(self.concurrency),
            "--without-gossip", "--without-mingle", "--without-heartbeat",
        ]  # fmt: skip
        self.process = subprocess.Popen(
            command,
            cwd=ROOT,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,  # its own process group: stop() signals only this worker
        )
        threading.Thread(target=self._read, args=(self.process,), daemon=True).start()
        if not self._ready.wait(_READY_TIMEOUT_S):
            self.stop()
            raise RuntimeError("the Celery worker did not become ready:\n" + self.log())
        return self

    def _read(self, process: subprocess.Popen[str]) -> None:
        assert process.stdout is not None
        for line in process.stdout:
            self.output.append(line.rstrip())
            if " ready." in line:
                self._ready.set()

    def log(self) -> str:
        return "\n".join(self.output[-200:])

    def stop(self, *, timeout: float = 20.0) -> None:
        """Warm shutdown (SIGTERM: finish the task at hand), then a kill if it hangs."""
        process = self.process
        if process is None or process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        """Kill -9, as a crashed machine would: nothing is acknowledged or cleaned up."""
        process = self.process
        if process is None or process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)

    def restart(self) -> CeleryWorker:
        self.stop()
        return self.start()

    def wait_for(self, condition: Callable[[], Any], *, timeout: float = 30.0, interval: float = 0.1) -> Any:
        """Poll `condition` until it is truthy; fail with the worker's log if it never is."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = condition()
            if value:
                return value
            if self.process is not None and self.process.poll() is not None:
                raise AssertionError("the Celery worker exited:\n" + self.log())
            time.sleep(interval)
        raise AssertionError(f"condition not met within {timeout} s; worker log:\n" + self.log())


@contextlib.contextmanager
def run_celery_worker(env: Mapping[str, str] | None = None, **options: Any) -> Iterator[CeleryWorker]:
    """Start a worker on the current test database and REDIS_URL; stop it on exit."""
    redis_url = os.environ.get("REDIS_URL")
    if not redis_url:
        pytest.skip("a real Celery worker needs Redis as its broker (REDIS_URL); CI runs it")
    worker_env = {
        **os.environ,
        "DATABASE_URL": _database_url(),
        "REDIS_URL": redis_url,
        "SCOPE_TESTING": "1",
        "SCOPE_CATALOG_TTL_SECONDS": "0",
        "SCOPE_API_KEY_CACHE_SECONDS": "0",
        "SCOPE_CONN_MAX_AGE": "0",  # no idle connection outlives the test (the test DB is dropped)
        "PYTHONUNBUFFERED": "1",
        "SCOPE_WORKER_METRICS_PORT": "0",  # a test that wants them picks a free port
        **dict(env or {}),
    }
    worker = CeleryWorker(worker_env, **options).start()
    try:
        yield worker
    finally:
        worker.stop()


@pytest.fixture
def celery_worker(transactional_db: Any) -> Iterator[CeleryWorker]:
    """A real worker for this test (its rows are committed, so the worker sees them)."""
    with run_celery_worker(env={"SCOPE_SIMULATED_SPEEDUP": "1000"}) as worker:
        yield worker
