from __future__ import annotations

from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand

from routing.services.catalog import catalog_load, catalog_parse
from routing.services.schedules import schedules_ensure

DEMO_CATALOG = Path(__file__).resolve().parents[2] / "demo_catalog.yaml"


class Command(BaseCommand):
    help = "Seed the demo catalog (simulated provider, real model names and list prices); idempotent."

    def handle(self, *args: Any, **options: Any) -> None:
        result = catalog_load(data=catalog_parse(DEMO_CATALOG), created_by="seed_demo")
        counts = ", ".join(f"{n} {k}" for k, n in result.counts.items())
        self.stdout.write(f"demo catalog: {counts} (served by the simulated provider)")
        created = schedules_ensure()  # periodic tasks, editable in the admin afterwards
        self.stdout.write(f"periodic tasks: {len(created)} created")
