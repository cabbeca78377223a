from __future__ import annotations

from decimal import Decimal
from typing import cast

from django.db import IntegrityError, transaction

from routing.models import ApiKey, ControlAction, RoutingPolicy
from routing.services.control_events import control_event_record
from scope_site.errors import Conflict, InvalidRequest, NotFound

_MAX_BUDGET_USD = Decimal(10) ** 8  # the column holds 12 digits, 4 of them decimals
_BUDGET_STEP = Decimal("0.0001")


def api_key_create(
    *,
    name: str,
    policy_slug: str | None = None,
    daily_budget_usd: Decimal | None = None,
    monthly_budget_usd: Decimal | None = None,
    rpm_limit: int | None = None,
    actor: str,
) -> tuple[ApiKey, str]:
    """Create a key; returns the row and the plain key, which is never stored and never shown again."""
    name = name.strip()
    limit = ApiKey._meta.get_field("name").max_length or 50
    if not name or len(name) > limit:
        raise InvalidRequest(f"name: must be 1 to {limit} characters")
    for field, budget in (("daily_budget_usd", daily_budget_usd), ("monthly_budget_usd", monthly_budget_usd)):
        if budget is not None and not (budget.is_finite() and 0 <= budget < _MAX_BUDGET_USD):
            # 0 is a key that may route but not spend
            raise InvalidRequest(f"{field}: must be an amount of USD from 0 to below {_MAX_BUDGET_USD:,}")
        if budget is not None and budget != budget.quantize(_BUDGET_STEP):
            # the column keeps 4 decimals: $0.00001 would be stored, and enforced, as $0.0000
            raise InvalidRequest(f"{field}: at most 4 decimals (steps of $0.0001), got {budget}")
    if rpm_limit is not None and rpm_limit < 1:
        raise InvalidRequest("rpm_limit: must be at least 1 request per minute")
    policy = None
    if policy_slug:
        policy = RoutingPolicy.objects.filter(slug=policy_slug).first()
        if policy is None:
            raise NotFound(f"Unknown policy {policy_slug!r}", code="unknown_policy")
    try:
        with transaction.atomic():
            row, key = ApiKey.objects.create_key(
                name=name,
                default_policy=policy,
                daily_budget_usd=daily_budget_usd,
                monthly_budget_usd=monthly_budget_usd,
                rpm_limit=rpm_limit,
            )
            # the key itself and its prefix are key material: the event names the row, never the key
            control_event_record(
                actor=actor,
                action=ControlAction.API_KEY_CREATE,
                target=api_key_target(cast(ApiKey, row)),
                detail={
                    "policy": policy_slug or None,
                    "daily_budget_usd": daily_budget_usd,
                    "monthly_budget_usd": monthly_budget_usd,
                    "rpm_limit": rpm_limit,
                },
            )
    except IntegrityError:
        # the constraint apikey_name_unique_unrevoked decides, not a look-up first: two creations
        # racing for one name would both pass a look-up
        if not ApiKey.objects.filter(name=name, revoked=False).exists():
            raise
        raise Conflict(
            f"name: an API key named {name!r} already exists; revoke it first or choose another name",
            code="api_key_name_taken",
        ) from None
    return cast(ApiKey, row), key


def api_key_target(row: ApiKey) -> str:
    """How the activity log names a key: its name and creation time. Never its id, which is the
    key's prefix plus its hash, nor the prefix: both are part of the key material."""
    return f"api_key:{row.name}@{row.created:%Y-%m-%dT%H:%M:%SZ}"


def api_key_revoke(*, prefix: str, actor: str) -> ApiKey:
    """Revoke the key whose public prefix (the part before the ".") is `prefix`; for good."""
    with transaction.atomic():
        row = ApiKey.objects.select_for_update().filter(prefix=prefix.split(".", 1)[0].strip()).first()
        if row is None:
            raise NotFound(f"No API key with prefix {prefix!r} (list them with `manage.py api_keys`)")
        if not row.revoked:
            row.revoked = True
            row.save(update_fields=["revoked"])
            control_event_record(actor=actor, action=ControlAction.API_KEY_REVOKE, target=api_key_target(row))
    return row
