"""api_keys: list the API keys (prefix, name, state, default policy, limits); never the keys themselves."""

from __future__ import annotations

from typing import Any

from routing.models import ApiKey
from scope_site.commands import ScopeCommand


class Command(ScopeCommand):
    help = "List API keys: prefix (what revoke_api_key takes), name, state, default policy and limits."

    def handle(self, *args: Any, **options: Any) -> None:
        rows = ApiKey.objects.select_related("default_policy").order_by("-created")
        self.stdout.write(f"{'prefix':<10} {'state':<8} {'created (UTC)':<17} {'policy':<16} limits  name")
        for k in rows:
            state = "revoked" if k.revoked else "active" if k.is_active else "inactive"
            limits = ", ".join(
                text
                for text in (
                    f"${k.daily_budget_usd}/day" if k.daily_budget_usd is not None else "",
                    f"${k.monthly_budget_usd}/month" if k.monthly_budget_usd is not None else "",
                    f"{k.rpm_limit} rpm" if k.rpm_limit else "",
                )
                if text
            )
            policy = k.default_policy.slug if k.default_policy else "-"
            created = k.created.strftime("%Y-%m-%d %H:%M")
            self.stdout.write(
                f"{k.prefix:<10} {state:<8} {created:<17} {policy:<16} {limits or '-'}  {k.name}"
            )
