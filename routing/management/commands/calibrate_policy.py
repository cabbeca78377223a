"""calibrate_policy SLUG (--target-share MODEL=0.3 | --target-cost-usd X) [--source NAME] [--dry-run]"""

from __future__ import annotations

from typing import Any

from django.core.management.base import CommandError, CommandParser

from feedback.services.alpha_calibration import describe, policy_calibrate
from scope_site.commands import ScopeCommand
from scope_site.errors import ApplicationError


def _share(value: str) -> tuple[str, float]:
    model, sep, share = value.rpartition("=")
    try:
        number = float(share)
    except ValueError:
        number = -1.0
    if not sep or not model or not 0.0 <= number <= 1.0:
        raise CommandError(f"--target-share must look like MODEL=0.3 (a share in [0, 1]), got {value!r}")
    return model, number


class Command(ScopeCommand):
    help = "Set a policy's alpha from logged (or imported) traffic and publish it as a new policy version."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("slug")
        parser.add_argument(
            "--target-share", default=None, help="MODEL=SHARE: the share of requests MODEL should get"
        )
        parser.add_argument(
            "--target-cost-usd", type=float, default=None, help="mean cost per request to stay within"
        )
        parser.add_argument(
            "--source", default="", help="calibrate on this imported data set instead of the log"
        )
        parser.add_argument("--limit", type=int, default=2000, help="how many requests to replay")
        parser.add_argument("--dry-run", action="store_true", help="print the result, publish nothing")

    def handle(self, *args: Any, **opts: Any) -> None:
        share = _share(opts["target_share"]) if opts["target_share"] else None
        try:
            result = policy_calibrate(
                slug=opts["slug"],
                target_share=share,
                target_cost_usd=opts["target_cost_usd"],
                source=opts["source"],
                limit=opts["limit"],
                dry_run=opts["dry_run"],
                actor="cli:calibrate_policy",
            )
        except ApplicationError as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(
            f"replayed {result.traffic} over {len(result.models)} eligible models "
            f"(predictor {result.predictor_version})"
        )
        self.stdout.write(describe(result.chosen, result.models, result.requests))
        if result.missed:
            self.stdout.write(f"target not reached: {result.missed}")
        if result.version is not None:
            self.stdout.write(f"published policy {opts['slug']!r} version {result.version.version}")
        else:
            self.stdout.write("dry run: nothing published")
