from __future__ import annotations

import sys
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from tqdm import tqdm

from routing.models import DecisionLog
from routing.services.audit import audit_seal, audit_verify


class Command(BaseCommand):
    help = "Verify every decision row's hash and the checkpoint chain; exits 1 naming the first mismatch."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--seal-first", action="store_true", help="seal the unsealed rows before verifying"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if options["seal_first"]:
            sealed = audit_seal()
            self.stdout.write(
                f"sealed {sum(c.row_count for c in sealed)} rows into {len(sealed)} checkpoints"
            )
        with tqdm(total=DecisionLog.objects.count(), unit="rows", disable=not sys.stderr.isatty()) as bar:
            report = audit_verify(progress=bar.update)
        if report.failure is not None:
            raise CommandError(report.failure.message)  # it names the row or checkpoint
        self.stdout.write(
            f"chain intact: {report.rows_checked} rows in {report.checkpoints_checked} checkpoints "
            f"({report.unsealed_rows} not sealed yet, their row hashes checked)"
        )
