"""The embedded default's periodic tasks: Celery beat in a thread of the `make run` server.

Without Redis there is no broker and no worker: tasks run eagerly in the caller. A beat service in
a daemon thread of the server process reads the same django-celery-beat schedule as `make beat`
and, because the app is eager, runs each due task right there (audit sealing, dashboard rollups,
experiment statistics, pacing, the stale-job sweep, nightly retraining). With REDIS_URL set this
does nothing: run `make worker` and `make beat` instead.
"""

from __future__ import annotations

import logging
import threading

from celery.beat import Service
from django.db import connections

from scope_site.celery import app

log = logging.getLogger("scope.embedded")


class PeriodicTasksThread(threading.Thread):
    def __init__(self) -> None:
        super().__init__(name="scope-beat", daemon=True)
        self.service = Service(
            app, max_interval=1, scheduler_cls=app.conf.beat_scheduler, remote_control=False
        )  # wakes every second: stops promptly

    def run(self) -> None:
        app.set_current()
        try:
            self.service.start()
        finally:
            connections.close_all()  # this thread's database connections

    def stop(self, timeout: float = 10.0) -> None:
        self.service.stop(wait=False)
        self.join(timeout)


def periodic_tasks_start() -> PeriodicTasksThread | None:
    """Start beat in a daemon thread when tasks run in process; returns it (None otherwise)."""
    if not app.conf.task_always_eager:
        return None
    # register every task now: beat sends a task it does not know to the broker instead of running it
    app.loader.import_default_modules()
    thread = PeriodicTasksThread()
    thread.start()
    log.info("periodic tasks run in this process (embedded mode: no broker, no worker)")
    return thread
