from __future__ import annotations

import os
import signal
import threading
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from routing.services.decision_writer import (
    ForkedChild,
    decision_writer_for_default_database,
    stop_when_orphaned,
    supervise,
)


class Command(BaseCommand):
    help = (
        "Run the group-commit writer for decision rows on a Unix socket (`make serve` starts one and "
        "points its workers at it with SCOPE_DECISION_WRITER_SOCKET). With --supervise, run it in a "
        "forked child process and fork a new one whenever it dies."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--socket", required=True, help="Unix socket path to listen on")
        parser.add_argument("--max-batch", type=int, default=512, help="rows per COPY at most (default 512)")
        parser.add_argument(
            "--supervise",
            action="store_true",
            help="keep a writer running: restart it if it dies (kill -9, crash)",
        )
        parser.add_argument(
            "--exit-with-parent",
            action="store_true",
            help="stop (the writer too) when the process that started this one exits (gunicorn's master)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        stop = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
        if options["exit_with_parent"]:
            stop_when_orphaned(stop, parent=os.getppid())
        if options["supervise"]:
            self._supervise(options, stop)
            return
        self._serve(options, stop)

    def _serve(self, options: dict[str, Any], stop: threading.Event) -> int:
        try:
            writer = decision_writer_for_default_database(
                path=options["socket"], max_batch=options["max_batch"]
            )
        except RuntimeError as exc:
            raise CommandError(str(exc)) from exc
        writer.serve_forever(stop)
        self.stdout.write(f"decision writer stopped: {writer.stats_text()}")
        self.stdout.flush()
        return 0

    def _supervise(self, options: dict[str, Any], stop: threading.Event) -> None:
        try:  # refuse at once, not in a loop of children, when there is no PostgreSQL to write to
            decision_writer_for_default_database(path=options["socket"], max_batch=options["max_batch"])
        except RuntimeError as exc:
            raise CommandError(str(exc)) from exc

        supervisor_pid = os.getpid()

        def run_writer() -> int:  # in the forked child: its own stop event and signal handlers
            child_stop = threading.Event()
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, lambda *_: child_stop.set())
            stop_when_orphaned(child_stop, parent=supervisor_pid)
            return self._serve(options, child_stop)

        def started(child: ForkedChild) -> None:
            self.stdout.write(f"decision writer pid {child.pid} serving {options['socket']}")
            self.stdout.flush()

        # a new writer is forked from this process, which has Django loaded: it serves in
        # milliseconds, not the seconds a fresh `manage.py` takes
        restarts = supervise(lambda: ForkedChild(run_writer), stop, on_start=started)
        self.stdout.write(f"decision writer supervisor stopped: {restarts} restarts")
