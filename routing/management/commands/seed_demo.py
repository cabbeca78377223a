from __future__ import annotations

from pathlib import Path
from typing import Any

from django.core.management.base import CommandParser

from routing.services.catalog import catalog_load, catalog_parse
from routing.services.schedules import schedules_ensure
from scope_site.commands import ScopeCommand

DEMO_CATALOG = Path(__file__).resolve().parents[2] / "demo_catalog.yaml"


class Command(ScopeCommand):
    help = (
        "Seed the demo catalog (simulated provider, real model names and list prices). Creates only "
        "what is missing, so operators' edits survive every `make run`; --reset reloads the demo values."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--reset",
            action="store_true",
            help="load the demo's providers, models and policies over existing ones (new policy versions)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        data = catalog_parse(DEMO_CATALOG)
        result = catalog_load(
            data=data, actor="cli:seed_demo", source="demo_catalog.yaml", only_missing=not options["reset"]
        )
        counts = ", ".join(f"{n} {k}" for k, n in result.counts.items())
        verb = "loaded" if options["reset"] else "created"
        self.stdout.write(f"demo catalog: {counts} {verb} (served by the simulated provider)")
        if result.kept:
            self.stdout.write(f"  {len(result.kept)} already there, left as they are (--reset reloads them)")
        created = schedules_ensure(actor="cli:seed_demo")  # periodic tasks, editable in the admin afterwards
        self.stdout.write(f"periodic tasks: {len(created)} created")
