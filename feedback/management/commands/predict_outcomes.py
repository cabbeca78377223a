"""predict_outcomes --train TRAIN.jsonl --test TEST.jsonl --models MODELS.json --out PRED.jsonl [--seed 0]"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from django.core.management.base import CommandError, CommandParser
from tqdm import tqdm

from feedback.management.progress import percent_bar
from routing.predictor.dataset import RecordError
from routing.predictor.offline import predict_outcomes_files
from scope_site.commands import ScopeCommand, non_negative_int


class Command(ScopeCommand):
    help = "Train a fresh predictor on TRAIN alone and predict every (prompt, model) pair of TEST."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--train", required=True, type=Path)
        parser.add_argument("--test", required=True, type=Path)
        parser.add_argument("--models", type=Path, default=None)
        parser.add_argument("--out", required=True, type=Path)
        parser.add_argument("--seed", type=non_negative_int, default=0)

    def handle(self, *args: Any, **opts: Any) -> None:
        for name in ("train", "test"):
            if not opts[name].exists():
                raise CommandError(f"--{name}: {opts[name]} does not exist")
        test_bar = tqdm(desc="predicting", unit="prompt", disable=not sys.stderr.isatty())
        try:
            with percent_bar("training") as progress:
                result = predict_outcomes_files(
                    train=opts["train"],
                    test=opts["test"],
                    models=opts["models"],
                    out=opts["out"],
                    seed=opts["seed"],
                    progress=progress,
                    test_progress=test_bar.update,
                )
        except (RecordError, OSError) as exc:
            raise CommandError(str(exc)) from None
        finally:
            test_bar.close()
        for path, number, why in result.skipped_lines:
            self.stderr.write(f"{path}:{number}: skipped: {why}")
        self.stdout.write(
            f"trained on {result.train_prompts} prompts × {result.models} models in {result.train_seconds:.1f} s; "
            f"wrote predictions for {result.test_prompts} prompts to {opts['out']}"
        )
        if result.test_prompts == 0:  # every TEST line skipped: a wrong file, not a result
            raise CommandError(
                f"no TEST prompt could be predicted ({len(result.skipped_lines)} lines skipped); a TEST "
                'line is {"id": ..., "prompt": ..., "models": [...]} (../shared/BENCHMARK.md)'
            )
