from __future__ import annotations

import json
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from routing.models import Experiment
from routing.services.experiment_stats import experiment_stats_refresh, experiments_to_refresh


class Command(BaseCommand):
    help = "Recompute experiment statistics now (what the periodic task does) and print them."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "name", nargs="?", help="one experiment (default: running and recently ended ones)"
        )
        parser.add_argument("--json", action="store_true", help="print the full statistics as JSON")

    def handle(self, *args: Any, **options: Any) -> None:
        if options["name"]:
            experiment = Experiment.objects.filter(name=options["name"]).first()
            if experiment is None:
                raise CommandError(f"unknown experiment {options['name']!r}")
            ids = [experiment.pk]
        else:
            ids = experiments_to_refresh()
        for experiment_id in ids:
            stats = experiment_stats_refresh(experiment_id=experiment_id).stats
            if options["json"]:
                self.stdout.write(json.dumps(stats, indent=2, sort_keys=True))
                continue
            name = Experiment.objects.get(pk=experiment_id).name
            self.stdout.write(f"{name}: {stats['total_requests']} requests (control {stats['control']})")
            for arm, s in stats["arms"].items():
                fb = s["feedback_score"]
                fb_text = (
                    f"{fb['mean']:.3f} {_ci(fb['ci95'])} n={fb['n']}"
                    if fb["mean"] is not None
                    else "no feedback"
                )
                self.stdout.write(
                    f"  {arm:<20} share {_rate(s['share']['rate'])} {_ci(s['share']['ci95'])}  "
                    f"feedback {fb_text}  predicted $/req {_mean(s['predicted_cost_per_request_usd'])}"
                )
            for comparison in stats["comparisons"]:
                tests = {k: round(t["p_value"], 4) for k, t in comparison["tests"].items() if t}
                self.stdout.write(f"  {comparison['arm']} vs {comparison['against']}: p-values {tests}")
            if stats["split_check"]:
                check = stats["split_check"]
                units = f" of {check['units']} users/keys" if check.get("over") == "units" else ""
                self.stdout.write(f"  split check (chi-square{units} vs weights): p={check['p_value']:.3f}")


def _ci(interval: list[float] | None) -> str:
    return f"[{interval[0]:.3f}, {interval[1]:.3f}]" if interval else "[–]"


def _rate(value: float | None) -> str:
    return f"{value:.3f}" if value is not None else "–"  # None until the experiment has traffic


def _mean(value: dict[str, Any]) -> str:
    return f"{value['mean']:.6f}" if value["mean"] is not None else "–"
