"""The decision writer beside gunicorn (`make serve` with sync workers): started, watched and stopped
from the master. Gevent workers, the default, commit their own rows and need none.

A regular module, not part of scope_site/gunicorn_conf.py, because gunicorn executes its config
file afresh on every reload (SIGHUP): state kept there would be forgotten, and the supervisor
started before the reload never stopped at exit. Imported once, this module keeps it.

The master starts `manage.py decision_writer --supervise --exit-with-parent` on a Unix socket and
hands the path to the workers (SCOPE_DECISION_WRITER_SOCKET, inherited when they are forked). A
thread of the master starts a new supervisor on the same socket whenever the running one dies;
a supervisor whose master is gone stops, and so does a writer whose supervisor is gone
(routing.services.decision_writer.stop_when_orphaned): nothing is left running unsupervised.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from scope_site.env import env_bool  # the settings' own parser; needs no Django

BASE_DIR = Path(__file__).resolve().parent.parent

_lock = threading.Lock()
_process: subprocess.Popen[bytes] | None = None
_stopping = threading.Event()
# the master was sent a signal that stops it. A stop of the whole process group (killpg, systemd's
# default KillMode, Ctrl-C) reaches the supervisor too, which exits before the master's on_exit runs:
# that exit is the stop, not a crash to log and repair
_master_told_to_stop = threading.Event()
STOP_SIGNALS = frozenset({signal.SIGTERM, signal.SIGINT, signal.SIGQUIT})


def wanted(worker_class: str) -> bool:
    """On PostgreSQL with workers other than gevent's (those commit their own rows, in batches of
    their connections' rows), unless SCOPE_GROUP_COMMIT=false or a writer socket is configured.
    `worker_class` is gunicorn's, as its settings and command line resolved it."""
    url = os.environ.get("DATABASE_URL", "")
    return (
        env_bool("SCOPE_GROUP_COMMIT", True)
        and url.startswith(("postgres", "pgsql"))
        and "gevent" not in worker_class.lower()
        and not os.environ.get("SCOPE_DECISION_WRITER_SOCKET")
    )


def start(server: Any) -> None:
    """In the master, before workers are forked: the writer, its socket path for them, the watch."""
    global _process
    if not wanted(server.cfg.worker_class_str):
        return
    _hear_stop_signals(server)
    from routing.services.decision_writer import writer_socket_path

    var_dir = Path(os.environ.get("SCOPE_VAR_DIR", "").strip() or BASE_DIR / "var")  # empty = unset
    path = writer_socket_path(var_dir, os.getpid())
    path.parent.mkdir(parents=True, exist_ok=True)
    with _lock:
        _process = _spawn(path)
        process = _process
    # the workers forked from here inherit the path; while nothing serves it they write their own rows
    os.environ["SCOPE_DECISION_WRITER_SOCKET"] = str(path)
    if _await_socket(path, process):
        server.log.info("decision writer (group commit) on %s, supervisor pid %s", path, process.pid)
    else:
        server.log.warning(
            "decision writer did not start; workers commit their own decision rows until one serves %s", path
        )
    threading.Thread(target=_watch, args=(server, path), name="decision-writer-watch", daemon=True).start()


def stop() -> None:
    """At the master's exit: no new supervisor from the watch, the running one told to stop."""
    _stopping.set()
    with _lock:
        process = _process
    if process is not None and process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()


def _hear_stop_signals(server: Any) -> None:
    """Note the master's stop signals as they arrive. gunicorn installs `server.signal` as its
    handler after on_starting (which calls start()) and only queues the signal there; its main loop
    acts on it later."""
    queue_signal = server.signal

    def signal_(sig: int, frame: Any) -> None:
        if sig in STOP_SIGNALS:
            _master_told_to_stop.set()
        queue_signal(sig, frame)

    server.signal = signal_


def _spawn(path: Path) -> subprocess.Popen[bytes]:
    command = ["decision_writer", "--supervise", "--exit-with-parent", "--socket", str(path)]
    return subprocess.Popen([sys.executable, str(BASE_DIR / "manage.py"), *command], cwd=BASE_DIR)


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


def _watch(
    server: Any, path: Path, *, poll: float = 1.0, max_delay: float = 30.0, grace: float = 0.5
) -> None:
    """Start another supervisor on the same socket whenever the running one dies.

    The workers keep the socket path they were given, so a new supervisor there is found by their
    next row; until then they write their own. The delay doubles up to `max_delay` while new ones
    die young (a database that refuses the writer) and resets once one has lived a minute. A
    supervisor that exits as the master is told to stop went with it (a stop of the process group):
    nothing to say or restart.
    """
    global _process
    delay, started = poll, time.monotonic()
    while not _stopping.wait(poll):
        with _lock:
            process = _process
        if process is None or process.poll() is None:
            continue
        # the same signal reaches the master's handler within moments: `grace` for it to arrive
        if _master_told_to_stop.wait(grace):
            return
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
        with _lock:
            if _stopping.is_set():
                return
            _process = process = _spawn(path)
        if _await_socket(path, process):
            server.log.info(
                "decision writer (group commit) on %s again, supervisor pid %s", path, process.pid
            )
