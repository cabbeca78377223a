from __future__ import annotations

from decimal import Decimal
from typing import cast

from routing.models import ApiKey, RoutingPolicy
from scope_site.errors import NotFound


def api_key_create(
    *,
    name: str,
    policy_slug: str | None = None,
    daily_budget_usd: Decimal | None = None,
    monthly_budget_usd: Decimal | None = None,
    rpm_limit: int | None = None,
) -> tuple[ApiKey, str]:
    """Create a key; returns the row and the plain key, which is never stored and never shown again."""
    policy = None
    if policy_slug:
        policy = RoutingPolicy.objects.filter(slug=policy_slug).first()
        if policy is None:
            raise NotFound(f"Unknown policy {policy_slug!r}", code="unknown_policy")
    row, key = ApiKey.objects.create_key(
        name=name,
        default_policy=policy,
        daily_budget_usd=daily_budget_usd,
        monthly_budget_usd=monthly_budget_usd,
        rpm_limit=rpm_limit,
    )
    return cast(ApiKey, row), key
