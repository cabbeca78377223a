from __future__ import annotations

import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from routing.services.decision_writer import decision_writer_for_default_database, supervise


class Command(BaseCommand):
    help = (
        "Run the group-commit writer for decision rows on a Unix socket (`make serve` starts one and "
        "points its workers at it with SCOPE_DECISION_WRITER_SOCKET). With --supervise, run it as a "
        "child process and start a new one whenever it dies."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--socket", required=True, help="Unix socket path to listen on")
        parser.add_argument("--max-batch", type=int, default=512, help="rows per COPY at most (default 512)")
        parser.add_argument(
            "--supervise",
            action="store_true",
            help="keep a writer running: restart it if it dies (kill -9, crash)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        stop = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
        if options["supervise"]:
            self._supervise(options, stop)
            return
        try:
            writer = decision_writer_for_default_database(
                path=options["socket"], max_batch=options["max_batch"]
            )
        except RuntimeError as exc:
            raise CommandError(str(exc)) from exc
        writer.serve_forever(stop)
        s = writer.stats
        self.stdout.write(
            f"decision writer stopped: {s.rows} rows in {s.batches} commits "
            f"(largest {s.largest_batch}), {s.failed_rows} not committed, "
            f"{s.outages} database outages"
        )

    def _supervise(self, options: dict[str, Any], stop: threading.Event) -> None:
        argv = [
            sys.executable,
            str(Path(settings.BASE_DIR) / "manage.py"),
            "decision_writer",
            "--socket",
            options["socket"],
            "--max-batch",
            str(options["max_batch"]),
        ]

        def started(child: subprocess.Popen[bytes]) -> None:
            self.stdout.write(f"decision writer pid {child.pid} serving {options['socket']}")
            self.stdout.flush()

        restarts = supervise(argv, stop, on_start=started)
        self.stdout.write(f"decision writer supervisor stopped: {restarts} restarts")
