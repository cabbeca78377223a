"""evaluate_router --data DIR [--seed N] [--png PATH]: BENCHMARK.md metrics for SCOPE and baselines."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import CommandError, CommandParser

from feedback.management.progress import percent_bar
from feedback.services.router_report import plot_curves, split_table
from routing.predictor.dataset import load_models, load_records
from routing.predictor.evaluation import evaluate_split
from scope_site.commands import ScopeCommand, non_negative_int

MIN_PROMPTS = 10


class Command(ScopeCommand):
    help = "Train on half of a data set, route the other half, print the metrics of SCOPE and the baselines."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--data", required=True, type=Path, help="folder with outcomes.jsonl and models.json"
        )
        parser.add_argument("--seed", type=non_negative_int, default=0)
        parser.add_argument(
            "--png",
            type=Path,
            default=None,
            help="cost–quality plot (default $SCOPE_VAR_DIR/evaluate_router/<set>-seed<N>.png)",
        )

    def handle(self, *args: Any, **opts: Any) -> None:
        data: Path = opts["data"]
        if not (data / "outcomes.jsonl").exists():
            raise CommandError(f"{data}/outcomes.jsonl does not exist")
        png = opts["png"]
        if png is None:  # under var/, not wherever the command was started (often the repository)
            png = Path(settings.VAR_DIR) / "evaluate_router" / f"{data.name}-seed{opts['seed']}.png"
            png.parent.mkdir(parents=True, exist_ok=True)
        if not png.parent.is_dir():  # say so now, not after the whole run
            raise CommandError(f"--png: folder {png.parent} does not exist")
        records = load_records(data / "outcomes.jsonl")
        if len(records) < MIN_PROMPTS:
            raise CommandError(
                f"{data}/outcomes.jsonl has {len(records)} valid prompts; a 50/50 split needs {MIN_PROMPTS}"
            )
        models = load_models(data / "models.json") if (data / "models.json").exists() else {}
        with percent_bar(f"{data.name} seed {opts['seed']}") as progress:
            result = evaluate_split(records, models, seed=opts["seed"], progress=progress)
        self.stdout.write(
            f"{data.name}: {len(records)} prompts, 50/50 split (seed {opts['seed']}); "
            f"cost-aware evaluation over {len(result.priced_models)} priced models"
        )
        if result.unpriced_models:
            self.stdout.write(
                f"excluded from cost-aware evaluation (no price): {len(result.unpriced_models)} models "
                f"(still used for training)"
            )
        self.stdout.write(split_table(result))
        plot_curves(result, png, f"{data.name} (seed {opts['seed']})")
        self.stdout.write(f"cost–quality curves: {png}")
