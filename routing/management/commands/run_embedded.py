"""run_embedded [addrport]: `runserver` plus the periodic tasks in process (what `make run` starts)."""

from __future__ import annotations

from typing import Any

from django.core.management.commands.runserver import Command as RunserverCommand

from routing.services.warmup import warm_process
from scope_site.embedded import periodic_tasks_start


class Command(RunserverCommand):
    help = "Development server with the periodic tasks (audit seal, rollups, stats…) run in process."

    def inner_run(self, *args: Any, **options: Any) -> None:
        periodic_tasks_start()  # in the serving process (the autoreloader's child), once per start
        warm_process()  # catalog, predictor and compiled kernels before the first request, as `make serve`
        super().inner_run(*args, **options)
