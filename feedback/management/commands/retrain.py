from __future__ import annotations

import json
from time import sleep
from typing import Any

from django.core.management.base import CommandError, CommandParser

from feedback.management.progress import percent_bar
from feedback.services.retraining import (
    OPEN,
    retraining_execute,
    retraining_request,
    training_run_is_lost,
)
from scope_site.commands import ScopeCommand, non_negative_int
from scope_site.errors import ApplicationError


class Command(ScopeCommand):
    help = (
        "Run one champion/challenger retraining now (what the schedule runs): train on live feedback + "
        "imported outcomes, compare on the same held-out data, promote only if better by the margin."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--margin", type=float, help="Brier improvement needed (default SCOPE_RETRAIN_MIN_IMPROVEMENT)"
        )
        parser.add_argument("--eval-source", help="only this imported data set (EvalPrompt source)")
        parser.add_argument("--weights", help='per-source weights as JSON, e.g. {"feedback": 3, "eval": 1}')
        parser.add_argument("--no-shadow", action="store_true", help="do not shadow a rejected challenger")
        parser.add_argument("--seed", type=non_negative_int, default=0)

    def handle(self, *args: Any, **options: Any) -> None:
        params: dict[str, Any] = {"seed": options["seed"], "shadow": not options["no_shadow"]}
        if options["margin"] is not None:
            params["margin"] = options["margin"]
        if options["eval_source"]:
            params["eval_source"] = options["eval_source"]
        if options["weights"]:
            try:
                params["weights"] = {k: float(v) for k, v in json.loads(options["weights"]).items()}
            except (ValueError, AttributeError, TypeError):
                raise CommandError("--weights must be a JSON object of numbers") from None
        actor = "cli:retrain"
        try:
            run = retraining_request(trigger="command", params=params, actor=actor)
        except ApplicationError as exc:
            raise CommandError(exc.message) from None
        if run.trigger != "command" or run.params != {**params, "requested_by": actor}:
            self.stderr.write(
                f"training run {run.pk} ({run.trigger}) was already {run.status}: following it instead; "
                "the options given here were not used"
            )
        run = retraining_execute(run_id=run.pk) or run  # a no-op if a worker already took it
        if run.status in OPEN:  # a worker took it first (or it was already open): follow it to the end
            with percent_bar(f"training run {run.pk}") as progress:
                while run.status in OPEN:
                    if training_run_is_lost(run):
                        raise CommandError(
                            f"training run {run.pk} stopped making progress (its worker was lost); "
                            "run the command again to start a new one"
                        )
                    progress(run.progress, run.progress_message)
                    sleep(1.0)
                    run.refresh_from_db()
        metrics = run.metrics or {}
        self.stdout.write(f"training run {run.pk}: {run.status}")
        self.stdout.write(f"data: {json.dumps(run.data_counts, sort_keys=True)}")
        for side in ("champion", "challenger"):
            m = metrics.get(side) or {}
            if m:
                shown = {k: round(v, 4) if isinstance(v, float) else v for k, v in m.items()}
                self.stdout.write(f"{side}: {json.dumps(shown, sort_keys=True)}")
        if metrics.get("decision"):
            self.stdout.write(str(metrics["decision"]))
        if run.error:
            raise CommandError(run.error)
