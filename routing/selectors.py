"""Reads on the route path: the catalog and policies as engine specs, cached briefly per process.

Catalog edits reach every process within SCOPE_CATALOG_TTL_SECONDS (2 s by default) without a
query per request.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from django.conf import settings

from providers.models import LLMModel
from routing.engine.types import ModelSpec, PolicySpec, Rule
from routing.models import PolicyVersion, RoutingPolicy


@dataclass
class _Snapshot:
    loaded_at: float = 0.0
    models: tuple[ModelSpec, ...] = ()
    policies: dict[str, PolicySpec] = field(default_factory=dict)


_snapshot = _Snapshot()


def model_spec_from_row(row: LLMModel) -> ModelSpec:
    return ModelSpec(
        name=row.name,
        provider=row.provider.name,
        provider_kind=row.provider.kind,
        input_usd_per_mtok=float(row.input_usd_per_mtok),
        output_usd_per_mtok=float(row.output_usd_per_mtok),
        context_window=row.context_window,
        tier=row.tier,
        capabilities=frozenset(row.capabilities or ()),
        tags=dict(row.tags or {}),
        enabled=row.enabled and row.provider.enabled,
    )


def policy_spec_from_version(version: PolicyVersion, slug: str) -> PolicySpec:
    return PolicySpec(
        slug=slug,
        version=version.version,
        strategy=version.strategy,
        alpha=version.alpha,
        max_cost_usd=version.max_cost_usd,
        max_latency_ms=version.max_latency_ms,
        allowed_models=tuple(version.allowed_models or ()),
        denied_models=tuple(version.denied_models or ()),
        required_capabilities=tuple(version.required_capabilities or ()),
        required_tags=dict(version.required_tags or {}),
        rules=tuple(
            Rule(
                name=str(r.get("name", f"rule-{i + 1}")),
                when=r.get("when", {}),
                action=r.get("then", {}).get("action", ""),
                model=r.get("then", {}).get("model", ""),
                alpha=r.get("then", {}).get("alpha"),
            )
            for i, r in enumerate(version.rules or ())
        ),
        options=dict(version.options or {}),
    )


def _load() -> _Snapshot:
    rows = LLMModel.objects.select_related("provider").order_by("name")
    models = tuple(model_spec_from_row(row) for row in rows)
    policies = {
        p.slug: policy_spec_from_version(p.current, p.slug)
        for p in RoutingPolicy.objects.select_related("current").exclude(current=None)
        if p.current is not None
    }
    return _Snapshot(loaded_at=time.monotonic(), models=models, policies=policies)


def catalog_snapshot() -> _Snapshot:
    global _snapshot
    ttl = float(settings.SCOPE_CATALOG_TTL_SECONDS)
    if ttl <= 0 or time.monotonic() - _snapshot.loaded_at > ttl or not _snapshot.loaded_at:
        _snapshot = _load()
    return _snapshot


def catalog_invalidate() -> None:
    """Drop this process's cached catalog (other processes refresh within the TTL)."""
    global _snapshot
    _snapshot = _Snapshot()


def model_specs() -> tuple[ModelSpec, ...]:
    return catalog_snapshot().models


def policy_spec(slug: str) -> PolicySpec | None:
    return catalog_snapshot().policies.get(slug)
