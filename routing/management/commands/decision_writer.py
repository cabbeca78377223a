from __future__ import annotations

import signal
import threading
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from routing.services.decision_writer import decision_writer_for_default_database


class Command(BaseCommand):
    help = (
        "Run the group-commit writer for decision rows on a Unix socket (`make serve` starts one and "
        "points its workers at it with SCOPE_DECISION_WRITER_SOCKET)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--socket", required=True, help="Unix socket path to listen on")
        parser.add_argument("--max-batch", type=int, default=512, help="rows per COPY at most (default 512)")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            writer = decision_writer_for_default_database(
                path=options["socket"], max_batch=options["max_batch"]
            )
        except RuntimeError as exc:
            raise CommandError(str(exc)) from exc
        stop = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
        writer.serve_forever(stop)
        s = writer.stats
        self.stdout.write(
            f"decision writer stopped: {s.rows} rows in {s.batches} commits "
            f"(largest {s.largest_batch}), {s.failed_rows} not committed"
        )
