"""import_outcomes FILE [--models models.json] [--source NAME]"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from django.core.management.base import CommandError, CommandParser
from tqdm import tqdm

from feedback.services.outcome_import import outcomes_import
from providers.models import LLMModel
from routing.predictor.dataset import RecordError, load_models
from scope_site.commands import ScopeCommand


class Command(ScopeCommand):
    help = "Import evaluation outcomes (BENCHMARK.md format); the same id and source update, never duplicate."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("file", type=Path)
        parser.add_argument(
            "--models", type=Path, default=None, help="models.json with prices (checked, reported)"
        )
        parser.add_argument("--source", default="", help="data set name (default: the file's folder name)")

    def handle(self, *args: Any, **opts: Any) -> None:
        path: Path = opts["file"]
        if not path.exists():
            raise CommandError(f"{path} does not exist")
        source = opts["source"] or path.resolve().parent.name
        try:
            prices = load_models(opts["models"]) if opts["models"] else {}
        except (RecordError, ValueError) as exc:
            raise CommandError(f"--models: {exc}") from None
        with tqdm(desc=f"importing {source}", unit="prompt", disable=not sys.stderr.isatty()) as bar:
            summary = outcomes_import(path=path, source=source, progress=bar.update)
        for number, why in summary.skipped:
            self.stderr.write(f"{path}:{number}: skipped: {why}")
        self.stdout.write(
            f"{source}: {summary.lines} lines, {summary.prompts_created} prompts created, "
            f"{summary.prompts_updated} updated, {summary.outcomes} outcomes, "
            f"{len(summary.models)} models, {len(summary.skipped)} lines skipped"
        )
        if prices:
            in_catalog = set(LLMModel.objects.filter(name__in=summary.models).values_list("name", flat=True))
            unpriced = sorted(
                m for m in summary.models if m in prices and prices[m].input_usd_per_mtok is None
            )
            missing = sorted(summary.models - set(prices))
            self.stdout.write(
                f"models.json: {len(summary.models & set(prices))} of the imported models listed, "
                f"{len(unpriced)} without a price, {len(in_catalog)} in the catalog"
            )
            if missing:
                self.stdout.write(
                    f"not in models.json: {', '.join(missing[:10])}{' …' if len(missing) > 10 else ''}"
                )
