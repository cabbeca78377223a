"""Catalog writes for providers and models (upserts by name)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from decimal import Decimal, InvalidOperation
from typing import Any
from urllib.parse import urlparse

from django.db import transaction

from providers.models import LLMModel, LoadBalancing, Provider, ProviderKind
from routing.services.control_events import control_upsert_record
from scope_site.errors import InvalidRequest
from scope_site.lengths import check_lengths


def _decimal(value: Any, where: str) -> Decimal:
    if isinstance(value, bool) or value is None:
        raise InvalidRequest(f"{where}: must be a number")
    try:
        result = Decimal(str(value))
    except InvalidOperation:
        raise InvalidRequest(f"{where}: must be a number (got {value!r})") from None
    if not result.is_finite():  # .inf / .nan in YAML: the decimal column would refuse it with a traceback
        raise InvalidRequest(f"{where}: must be a finite number (got {value!r})")
    if result < 0:
        raise InvalidRequest(f"{where}: must not be negative")
    return result


def _flag(value: Any, where: str) -> bool:
    if not isinstance(value, bool):  # bool("false") is True: a JSON catalog's "false" enabled the row
        raise InvalidRequest(f"{where}: must be true or false (got {value!r})")
    return value


def _seconds(value: Any, where: str) -> float:
    if not _is_number(value) or not 0 < value < math.inf:
        raise InvalidRequest(f"{where}: must be a positive number of seconds (got {value!r})")
    return float(value)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and not math.isnan(value)


# the simulated adapter's knobs (providers/adapters/simulated.py); a misspelt one would be ignored
SIM_PROFILE_SHARES = {"failure_rate", "cut_rate", "quality"}
SIM_PROFILE_KEYS = SIM_PROFILE_SHARES | {"latency_ms", "tokens_per_s", "fail_status"}


def _check_sim_profile(profile: Any, where: str) -> None:
    if not isinstance(profile, Mapping):
        raise InvalidRequest(f"{where}: must be an object")
    unknown = sorted(set(profile) - SIM_PROFILE_KEYS)
    if unknown:
        known = ", ".join(sorted(SIM_PROFILE_KEYS))
        raise InvalidRequest(f"{where}: unknown key(s) {', '.join(map(str, unknown))} (known: {known})")
    for key, value in profile.items():
        if not _is_number(value) or not math.isfinite(value) or value < 0:
            raise InvalidRequest(f"{where}.{key}: must be a non-negative number (got {value!r})")
        if key in SIM_PROFILE_SHARES and value > 1:
            raise InvalidRequest(f"{where}.{key}: must be from 0 to 1 (got {value!r})")
    status = profile.get("fail_status")
    if status is not None and (not isinstance(status, int) or not 400 <= status <= 599):
        raise InvalidRequest(f"{where}.fail_status: must be an HTTP error status from 400 to 599")


def provider_upsert(
    *,
    name: str,
    kind: str,
    base_url: str = "",
    api_key_env: str = "",
    connect_timeout_s: float = 3.0,
    read_timeout_s: float = 60.0,
    enabled: bool = True,
    actor: str,
) -> Provider:
    check_lengths(Provider, f"providers[{name[:100]}]", name=name, base_url=base_url, api_key_env=api_key_env)
    if kind not in ProviderKind.values:
        raise InvalidRequest(f"providers[{name}].kind: must be one of {', '.join(ProviderKind.values)}")
    if kind != ProviderKind.SIMULATED and not base_url:
        raise InvalidRequest(f"providers[{name}].base_url: required for kind {kind}")
    if base_url:
        parsed = urlparse(base_url)
        if parsed.scheme not in {"http", "https"} or not parsed.hostname:
            raise InvalidRequest(
                f"providers[{name}].base_url: must be an http:// or https:// URL with a host (got {base_url!r})"
            )
    connect_timeout_s = _seconds(connect_timeout_s, f"providers[{name}].connect_timeout_s")
    read_timeout_s = _seconds(read_timeout_s, f"providers[{name}].read_timeout_s")
    if api_key_env and not api_key_env.replace("_", "").isalnum():
        raise InvalidRequest(f"providers[{name}].api_key_env: must be an environment variable name")
    values = {
        "kind": kind,
        "base_url": base_url,
        "api_key_env": api_key_env,  # the variable's name; its value is never read here
        "connect_timeout_s": connect_timeout_s,
        "read_timeout_s": read_timeout_s,
        "enabled": _flag(enabled, f"providers[{name}].enabled"),
    }
    with transaction.atomic():
        before = Provider.objects.select_for_update().filter(name=name).values(*values).first()
        provider, _ = Provider.objects.update_or_create(name=name, defaults=values)
        control_upsert_record(actor=actor, entity="provider", name=name, before=before, after=values)
    return provider


def model_upsert(
    *,
    name: str,
    provider: str,
    input_usd_per_mtok: Any,
    output_usd_per_mtok: Any,
    context_window: int = 8192,
    tier: int = 3,
    capabilities: Sequence[str] = (),
    tags: Mapping[str, Any] | None = None,
    upstream_name: str = "",
    sim_profile: Mapping[str, Any] | None = None,
    load_balancing: str = LoadBalancing.WEIGHTED,
    enabled: bool = True,
    actor: str,
) -> LLMModel:
    where = f"models[{name[:200]}]"
    check_lengths(LLMModel, where, name=name, upstream_name=upstream_name)
    provider_row = Provider.objects.filter(name=provider).first()
    if provider_row is None:
        raise InvalidRequest(f"{where}.provider: unknown provider {provider!r}")
    if not isinstance(tier, int) or isinstance(tier, bool) or not 1 <= tier <= 5:
        raise InvalidRequest(f"{where}.tier: must be an integer from 1 to 5")
    if not isinstance(context_window, int) or context_window < 1:
        raise InvalidRequest(f"{where}.context_window: must be a positive integer")
    if load_balancing not in LoadBalancing.values:
        raise InvalidRequest(f"{where}.load_balancing: must be one of {', '.join(LoadBalancing.values)}")
    if not isinstance(capabilities, list | tuple) or not all(isinstance(c, str) for c in capabilities):
        raise InvalidRequest(f"{where}.capabilities: must be a list of strings")
    if tags is not None and not isinstance(tags, Mapping):
        raise InvalidRequest(f"{where}.tags: must be an object")
    if sim_profile is not None:
        _check_sim_profile(sim_profile, f"{where}.sim_profile")
    values: dict[str, Any] = {
        "input_usd_per_mtok": _decimal(input_usd_per_mtok, f"{where}.input_usd_per_mtok"),
        "output_usd_per_mtok": _decimal(output_usd_per_mtok, f"{where}.output_usd_per_mtok"),
        "context_window": context_window,
        "tier": tier,
        "capabilities": list(capabilities),
        "tags": dict(tags or {}),
        "upstream_name": upstream_name,
        "sim_profile": dict(sim_profile or {}),
        "load_balancing": load_balancing,
        "enabled": _flag(enabled, f"{where}.enabled"),
    }
    with transaction.atomic():
        before = (
            LLMModel.objects.select_for_update().filter(name=name).values("provider__name", *values).first()
        )
        model, _ = LLMModel.objects.update_or_create(name=name, defaults={"provider": provider_row, **values})
        if before is not None:
            before["provider"] = before.pop("provider__name")
        control_upsert_record(
            actor=actor, entity="model", name=name, before=before, after={"provider": provider, **values}
        )
    return model
