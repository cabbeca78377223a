from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand

from routing.services.schedules import SCHEDULES, schedules_ensure


class Command(BaseCommand):
    help = (
        "Create SCOPE's periodic tasks (retraining, experiment stats, pacing, …) if missing; edits are kept."
    )

    def handle(self, *args: Any, **options: Any) -> None:
        created = schedules_ensure(actor="cli:ensure_schedules")
        self.stdout.write(
            f"periodic tasks: {len(created)} created, {len(SCHEDULES) - len(created)} already present"
        )
