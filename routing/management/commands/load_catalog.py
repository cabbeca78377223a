from __future__ import annotations

from pathlib import Path
from typing import Any

from django.core.management.base import CommandError, CommandParser

from routing.services.catalog import catalog_load, catalog_parse
from scope_site.commands import ScopeCommand
from scope_site.errors import InvalidRequest


class Command(ScopeCommand):
    help = "Load providers, models, policies and experiments from a YAML/JSON catalog file (idempotent)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("file", type=Path)

    def handle(self, *args: Any, file: Path, **options: Any) -> None:
        data = catalog_parse(file)  # its errors name the file already
        try:
            result = catalog_load(data=data, actor="cli:load_catalog", source=str(file))
        except InvalidRequest as exc:
            raise CommandError(f"{file}: {exc.message}") from None
        counts = ", ".join(f"{n} {k}" for k, n in result.counts.items())
        self.stdout.write(f"loaded {counts}")
        for item in result.new_policy_versions:
            self.stdout.write(f"new policy version: {item}")
