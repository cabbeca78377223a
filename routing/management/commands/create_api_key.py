from __future__ import annotations

from decimal import Decimal
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from routing.services.api_keys import api_key_create
from scope_site.errors import ApplicationError


class Command(BaseCommand):
    help = "Create an API key and print it (only the key; it is stored hashed and shown only now)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("name")
        parser.add_argument("--policy", help="slug of the key's default policy")
        parser.add_argument("--daily-budget-usd", type=Decimal)
        parser.add_argument("--monthly-budget-usd", type=Decimal)
        parser.add_argument("--rpm", type=int, help="requests-per-minute limit")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            _, key = api_key_create(
                name=options["name"],
                policy_slug=options["policy"],
                daily_budget_usd=options["daily_budget_usd"],
                monthly_budget_usd=options["monthly_budget_usd"],
                rpm_limit=options["rpm"],
                actor="cli:create_api_key",
            )
        except ApplicationError as exc:
            raise CommandError(exc.message) from None
        self.stdout.write(key)
