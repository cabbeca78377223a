"""revoke_api_key PREFIX: revoke a key for good (requests with it get 401 within SCOPE_API_KEY_CACHE_SECONDS)."""

from __future__ import annotations

from typing import Any

from django.core.management.base import CommandParser

from routing.services.api_keys import api_key_revoke
from scope_site.commands import ScopeCommand


class Command(ScopeCommand):
    help = "Revoke an API key by its prefix (the part before the '.'; `api_keys` lists them). Irreversible."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("prefix")

    def handle(self, *args: Any, prefix: str, **options: Any) -> None:
        row = api_key_revoke(prefix=prefix, actor="cli:revoke_api_key")
        self.stdout.write(f"revoked {row.prefix} ({row.name})")
