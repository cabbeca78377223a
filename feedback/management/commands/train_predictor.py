"""train_predictor [--source NAME] [--models models.json] [--activate] [--seed N]"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from django.core.management.base import CommandError, CommandParser

from feedback.management.progress import percent_bar
from feedback.services.predictor_jobs import predictor_train_job
from scope_site.commands import ScopeCommand, non_negative_int
from scope_site.errors import ApplicationError


def metrics_line(metrics: Mapping[str, Any]) -> str:
    """`examples 526 · brier 0.179 · auc 0.688 · apgr 0.605 …` (numbers to 3 decimals, None as —)."""
    parts = []
    for name, value in metrics.items():
        if isinstance(value, bool) or not isinstance(value, int | float | None):
            continue
        shown = "—" if value is None else str(value) if isinstance(value, int) else f"{value:.3f}"
        parts.append(f"{name} {shown}")
    return " · ".join(parts) or "none (too few prompts to hold out)"


class Command(ScopeCommand):
    help = "Train a predictor on imported outcomes, evaluate it on held-out prompts, store it, promote if better."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--source", default="", help="only this imported data set (default: all)")
        parser.add_argument(
            "--models", type=Path, default=None, help="models.json: prices of non-catalog models"
        )
        parser.add_argument(
            "--activate", action="store_true", help="activate even if it does not beat the active one"
        )
        parser.add_argument("--seed", type=non_negative_int, default=0)

    def handle(self, *args: Any, **opts: Any) -> None:
        with percent_bar("training") as progress:
            try:
                result = predictor_train_job(
                    source=opts["source"],
                    actor="cli:train_predictor",
                    models_file=opts["models"],
                    force_activate=opts["activate"],
                    seed=opts["seed"],
                    progress=progress,
                )
            except ApplicationError as exc:
                raise CommandError(str(exc)) from None
        v = result.version
        self.stdout.write(f"stored predictor {v.name} (id {v.pk}) trained in {v.training_seconds:.1f} s")
        self.stdout.write(f"held-out metrics: {metrics_line(result.challenger)}")
        if result.champion is not None:
            self.stdout.write(f"active predictor on the compared prompts: {metrics_line(result.champion)}")
        self.stdout.write(("ACTIVATED: " if result.promoted else "not activated: ") + result.reason)
