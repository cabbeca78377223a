from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from django.core.management.base import CommandError, CommandParser
from tqdm import tqdm

from feedback.services.calibration import (
    anchors_from_file,
    anchors_from_imported,
    calibration_describe,
    calibration_import,
    calibration_run,
)
from scope_site.commands import ScopeCommand
from scope_site.errors import ApplicationError


class Command(ScopeCommand):
    help = (
        "Calibrate a new model: run it on N anchor prompts through its provider (or import its scored "
        "outcomes with --from-file), store the scores, and let it explore a capped share of traffic."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("model", help="the model's catalog name")
        parser.add_argument("--anchors", type=int, default=50, help="number of anchor prompts (default 50)")
        parser.add_argument("--source", help="take anchors from this imported data set (EvalPrompt source)")
        parser.add_argument(
            "--anchors-file", type=Path, help="JSONL anchors: id, prompt, optional reference, task"
        )
        parser.add_argument(
            "--from-file", type=Path, help="import the model's outcomes from an outcomes.jsonl"
        )
        parser.add_argument(
            "--judge", help="judge model for answers without a reference (default SCOPE_JUDGE_MODEL)"
        )
        parser.add_argument(
            "--cap", type=float, help="exploration cap: share of requests (default SCOPE_EXPLORATION_CAP)"
        )
        parser.add_argument("--min-outcomes", type=int, help="live outcomes before the cap is lifted")

    def handle(self, *args: Any, **options: Any) -> None:
        n = options["anchors"]
        if n < 1:
            raise CommandError("--anchors must be at least 1")
        try:
            if options["from_file"]:
                calibration = calibration_import(
                    model=options["model"], path=options["from_file"], limit=n,
                    cap=options["cap"], min_live_outcomes=options["min_outcomes"], actor="cli:calibrate_model",
                )  # fmt: skip
            else:
                if options["anchors_file"]:
                    anchors = anchors_from_file(options["anchors_file"])[:n]
                else:
                    anchors = anchors_from_imported(n, source=options["source"])
                bar = tqdm(total=len(anchors), desc="anchors", disable=not sys.stderr.isatty())
                calibration = calibration_run(
                    model=options["model"], anchors=anchors, judge=options["judge"], cap=options["cap"],
                    min_live_outcomes=options["min_outcomes"], progress=lambda i, total: bar.update(1),
                    actor="cli:calibrate_model",
                )  # fmt: skip
                bar.close()
        except ApplicationError as exc:
            raise CommandError(exc.message) from None
        except OSError as exc:
            raise CommandError(f"cannot read file: {exc}") from None
        info = calibration_describe(calibration)
        self.stdout.write(
            f"{info['model']}: {info['anchors']} anchors, mean score {info['anchor_score']:.3f} ({info['scoring']}); "
            f"exploring at most {info['exploration_cap']:.0%} of requests until {info['min_live_outcomes']} live outcomes"
        )
