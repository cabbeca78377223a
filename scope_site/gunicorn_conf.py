"""gunicorn settings for `make serve`: Prometheus multiprocess mode and the decision writer.

PROMETHEUS_MULTIPROC_DIR is set here, in the master, before any worker imports prometheus_client,
and emptied at start so counters from an earlier run do not leak into this one.

Gevent workers (the default) each commit their own requests' decision rows in shared transactions
(routing.services.decision_writer.ProcessGroupCommit). With sync workers (SCOPE_WORKER_CLASS=sync),
on PostgreSQL the master starts one group-commit writer for decision rows
(`manage.py decision_writer`) and hands its socket to the workers through
SCOPE_DECISION_WRITER_SOCKET; SCOPE_GROUP_COMMIT=false turns that off. The command runs the writer
under a small supervisor (`--supervise`) that starts a new one if it dies (kill -9, crash). While
the writer is not there, workers commit their rows themselves: slower, never less durable. A
thread of the master starts another supervisor on the same socket if it dies
(scope_site/writer_process.py).

Each worker loads the catalog and the active predictor before it accepts connections
(post_worker_init), so no request waits for them, also after a --max-requests recycle.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from scope_site import writer_process  # a module of its own: its state outlives a config reload
from scope_site.green import serve_worker_class

_var_dir = Path(os.environ.get("SCOPE_VAR_DIR", "").strip() or Path(__file__).resolve().parent.parent / "var")
_default_dir = _var_dir / "prometheus"
multiproc_dir = os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", str(_default_dir))
# gunicorn's control socket (gunicornc) per var dir, not one per user (~/.gunicorn/gunicorn.ctl):
# two SCOPE servers on one host, e.g. a benchmark beside a dev server, must not share it
(_var_dir / "run").mkdir(parents=True, exist_ok=True)
control_socket = str(_var_dir / "run" / "gunicorn.ctl")
# gevent workers (scope_site/gevent_worker.py): a worker serves its other connections while one
# waits for its decision's commit; SCOPE_WORKER_CLASS=sync goes back to one request per process
worker_class = serve_worker_class()


def on_starting(server: Any) -> None:
    shutil.rmtree(multiproc_dir, ignore_errors=True)
    Path(multiproc_dir).mkdir(parents=True, exist_ok=True)
    writer_process.start(server)


def on_exit(server: Any) -> None:
    writer_process.stop()


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


def worker_exit(server: Any, worker: Any) -> None:
    """In the worker, as it stops: what its own group commit did (gevent workers)."""
    from routing.services.decision_log import process_group_commit_account

    account = process_group_commit_account()
    if account is not None:
        worker.log.info("worker %s decision commits: %s", worker.pid, account)


def child_exit(server: Any, worker: Any) -> None:
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)
