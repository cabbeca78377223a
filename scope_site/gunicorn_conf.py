"""gunicorn settings for `make serve`: Prometheus multiprocess mode and the decision writer.

PROMETHEUS_MULTIPROC_DIR is set here, in the master, before any worker imports prometheus_client,
and emptied at start so counters from an earlier run do not leak into this one.

On PostgreSQL the master also starts one group-commit writer for decision rows
(`manage.py decision_writer`) and hands its socket to the workers through
SCOPE_DECISION_WRITER_SOCKET; SCOPE_GROUP_COMMIT=false turns that off. The command runs the writer
under a small supervisor (`--supervise`) that starts a new one if it dies (kill -9, crash). While
the writer is not there, workers commit their rows themselves: slower, never less durable. A
thread of the master watches the supervisor and starts another on the same socket if it dies; a
writer whose supervisor died stops by itself (decision_writer.stop_when_orphaned).

Each worker loads the catalog and the active predictor before it accepts connections
(post_worker_init), so no request waits for them, also after a --max-requests recycle.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from scope_site.env import env_bool  # the settings' own parser; needs no Django

_default_dir = (
    Path(os.environ.get("SCOPE_VAR_DIR", Path(__file__).resolve().parent.parent / "var")) / "prometheus"
)
multiproc_dir = os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", str(_default_dir))


_base_dir = Path(__file__).resolve().parent.parent
_writer: subprocess.Popen[bytes] | None = None
_stopping = threading.Event()


def on_starting(server: Any) -> None:
    shutil.rmtree(multiproc_dir, ignore_errors=True)
    Path(multiproc_dir).mkdir(parents=True, exist_ok=True)
    _start_decision_writer(server)


def on_exit(server: Any) -> None:
    _stopping.set()  # before the supervisor is told to stop: the watch must not start another
    if _writer is not None and _writer.poll() is None:
        _writer.terminate()
        try:
            _writer.wait(timeout=10)
        except subprocess.TimeoutExpired:
            _writer.kill()


def _wants_writer() -> bool:
    url = os.environ.get("DATABASE_URL", "")
    return (
        env_bool("SCOPE_GROUP_COMMIT", True)
        and url.startswith(("postgres", "pgsql"))
        and not os.environ.get("SCOPE_DECISION_WRITER_SOCKET")
    )


def _start_decision_writer(server: Any) -> None:
    global _writer
    if not _wants_writer():
        return
    var_dir = Path(os.environ.get("SCOPE_VAR_DIR", _base_dir / "var"))
    from routing.services.decision_writer import writer_socket_path

    path = writer_socket_path(var_dir, os.getpid())
    path.parent.mkdir(parents=True, exist_ok=True)
    _writer = _spawn_supervisor(path)
    if _await_socket(path, _writer):
        os.environ["SCOPE_DECISION_WRITER_SOCKET"] = str(path)  # the workers forked from here inherit it
        server.log.info("decision writer (group commit) on %s, supervisor pid %s", path, _writer.pid)
    else:
        server.log.warning("decision writer did not start; workers commit their own decision rows")
    threading.Thread(
        target=_watch_supervisor, args=(server, path), name="decision-writer-watch", daemon=True
    ).start()


def _spawn_supervisor(path: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            sys.executable,
            str(_base_dir / "manage.py"),
            "decision_writer",
            "--supervise",
            "--socket",
            str(path),
        ],
        cwd=_base_dir,
    )


def _await_socket(path: Path, process: subprocess.Popen[bytes], seconds: float = 30.0) -> bool:
    """Whether a writer accepts connections on `path` within `seconds` (a stale socket file left by
    a killed writer does not count)."""
    from routing.services.decision_writer import writer_reachable

    deadline = time.monotonic() + seconds
    while writer_reachable(str(path)) is not None:
        if process.poll() is not None or time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True


def _watch_supervisor(server: Any, path: Path, *, poll: float = 1.0, max_delay: float = 30.0) -> None:
    """In the master: start another supervisor on the same socket whenever the running one dies.

    The workers keep the socket path they were given, so a new supervisor there is found by their
    next row; until then they write their own. The delay doubles up to `max_delay` while new ones
    die young (a database that refuses the writer), and resets once one has lived a minute.
    """
    global _writer
    delay, started = poll, time.monotonic()
    while not _stopping.wait(poll):
        process = _writer
        if process is None or process.poll() is None:
            continue
        # gunicorn's own child reaping may have collected it first: then the code is unknown (0)
        server.log.error(
            "decision writer supervisor pid %s exited (code %s); starting another in %.0f s",
            process.pid,
            process.returncode,
            delay,
        )
        if _stopping.wait(delay):
            return
        delay = poll if time.monotonic() - started >= 60 else min(delay * 2, max_delay)
        started = time.monotonic()
        _writer = _spawn_supervisor(path)
        if _await_socket(path, _writer):
            server.log.info(
                "decision writer (group commit) on %s again, supervisor pid %s", path, _writer.pid
            )


def post_worker_init(worker: Any) -> None:
    """Before the worker accepts connections: load the catalog and the active predictor
    (routing/services/warmup.py), so its first requests do not wait for them."""
    from routing.services.warmup import warm_process

    warmed = warm_process()
    if not warmed.error:
        worker.log.info(
            "worker %s warmed in %.2f s: %d models, predictor %s",
            worker.pid,
            warmed.seconds,
            warmed.models,
            warmed.predictor_version or "none (tier prior)",
        )


def child_exit(server: Any, worker: Any) -> None:
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)
