"""The route path up to the decision: features → policy → candidates → predict → rank → log."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from django.conf import settings

from feedback.services.exploration import exploration_gate
from feedback.services.shadow import shadow_explanation
from routing.engine.decide import UnknownStrategy, decide
from routing.engine.strategies import Strategy, load_strategies
from routing.engine.types import Decision, ModelSpec, PolicySpec, RouteOptions
from routing.features import RequestFeatures, extract_features
from routing.models import ApiKey, DecisionKind, DecisionLog
from routing.predictor.registry import active_predictor
from routing.selectors import model_specs, policy_spec
from routing.services.decision_log import decision_log_write
from routing.services.experiments import experiment_policy
from scope_site.errors import InvalidRequest, NoEligibleModel, NotFound, ServiceUnavailable
from scope_site.renderers import api_time


@dataclass(frozen=True, slots=True)
class RouteResult:
    row: DecisionLog
    decision: Decision
    policy: PolicySpec
    features: RequestFeatures


@lru_cache(maxsize=4)
def _strategies(extra: tuple[str, ...]) -> dict[str, Strategy]:
    return load_strategies(extra)


def strategies() -> dict[str, Strategy]:
    return _strategies(tuple(settings.SCOPE_EXTRA_STRATEGIES))


def resolve_policy(*, requested: str | None, api_key: ApiKey | None) -> PolicySpec:
    if requested:
        slug = requested
    elif api_key is not None and api_key.default_policy_id is not None:
        slug = api_key.default_policy.slug if api_key.default_policy else settings.SCOPE_DEFAULT_POLICY
    else:
        slug = settings.SCOPE_DEFAULT_POLICY
    policy = policy_spec(slug)
    if policy is None:
        if requested or slug != settings.SCOPE_DEFAULT_POLICY:
            raise NotFound(f"Unknown policy {slug!r}", code="unknown_policy")
        # the client named no policy: say where 'default' came from, or the 404 reads as nonsense
        raise NotFound(
            f"Unknown policy {slug!r}: the request names no policy and its API key has none, so "
            f"SCOPE_DEFAULT_POLICY ({slug!r}) applies, and no such policy is published",
            code="unknown_policy",
        )
    return policy


def route_decide(
    *,
    messages: Sequence[Mapping[str, Any]],
    api_key: ApiKey | None,
    policy: str | None = None,
    alpha: float | None = None,
    max_cost_usd: float | None = None,
    max_latency_ms: float | None = None,
    models: Sequence[str] = (),
    user: str = "",
    metadata: Mapping[str, Any] | None = None,
    max_output_tokens: int | None = None,
    required_capabilities: Sequence[str] = (),
    kind: str = DecisionKind.ROUTE,
    catalog: Sequence[ModelSpec] | None = None,
    cache_probe: Callable[[Decision, PolicySpec], bool] | None = None,
) -> RouteResult:
    """Decide and durably log; raises NoEligibleModel (after logging) when nothing can serve.

    `cache_probe` (routing.response_cache) looks the decided request up in the response cache
    before the row is written, so the row says whether the answer will come from the cache.
    `required_capabilities` are what the request needs (routing.capabilities.request_capabilities).
    """
    metadata = dict(metadata or {})
    features = extract_features(messages, metadata)
    policy_spec_ = resolve_policy(requested=policy, api_key=api_key)
    # an experiment running on this policy may substitute an arm's policy (sticky per user/key)
    policy_spec_, assignment = experiment_policy(
        policy=policy_spec_, user=user, api_key_id=api_key.pk if api_key is not None else None
    )
    specs = tuple(catalog) if catalog is not None else model_specs()
    if models:
        known = {m.name for m in specs}
        unknown = [m for m in models if m not in known]
        if unknown:
            raise InvalidRequest(f"Unknown model(s) in models: {', '.join(unknown)}", code="unknown_model")
    specs = exploration_gate(specs, requested=models)  # new models: a candidate in a capped share only
    try:
        decision = decide(
            features=features,
            models=specs,
            policy=policy_spec_,
            options=RouteOptions(
                alpha=alpha,
                max_cost_usd=max_cost_usd,
                max_latency_ms=max_latency_ms,
                models=tuple(models),
                metadata=metadata,
                max_output_tokens=max_output_tokens,
                required_capabilities=tuple(required_capabilities),
            ),
            predictor=active_predictor(),
            strategies=strategies(),
            max_fallbacks=settings.SCOPE_MAX_FALLBACKS,
        )
    except UnknownStrategy as exc:
        # published by a process whose SCOPE_EXTRA_STRATEGIES named the strategy, served by one whose
        # does not: a deployment mismatch, not the client's fault (was a 500)
        raise ServiceUnavailable(
            f"{exc}: SCOPE_EXTRA_STRATEGIES of this server does not define it; set it alike on every "
            "process that routes",
            code="unknown_strategy",
        ) from None
    # a challenger predictor scoring live traffic without routing it (None unless one is set)
    shadow = shadow_explanation(features=features, models=specs, decision=decision)
    if shadow is not None:
        decision = dataclasses.replace(decision, explanation={**decision.explanation, "shadow": shadow})
    cache_hit = decision.model is not None and cache_probe is not None and cache_probe(decision, policy_spec_)
    row = decision_log_write(
        decision=decision,
        features=features,
        policy=policy_spec_,
        api_key=api_key,
        user=user,
        metadata=metadata,
        kind=kind,
        experiment=assignment.experiment if assignment else "",
        arm=assignment.arm if assignment else "",
        cache_hit=bool(cache_hit),
    )
    if decision.model is None:
        raise NoEligibleModel(
            "No model satisfies this request's policy and constraints; see the decision's candidates.",
            extra={"decision_id": str(row.id)},
        )
    return RouteResult(row=row, decision=decision, policy=policy_spec_, features=features)


def decision_payload(row: DecisionLog) -> dict[str, Any]:
    """The answer of POST /api/v1/route, built from the logged row (what is answered is what is logged)."""
    return {
        "decision_id": str(row.id),
        "created_at": api_time(row.created_at),
        "model": row.chosen_model,
        "provider": row.chosen_provider,
        "strategy": row.strategy,
        "policy": {"slug": row.policy_slug, "version": row.policy_version},
        "predictor_version": row.predictor_version,
        "alpha": row.alpha,
        "experiment": {"name": row.experiment, "arm": row.arm} if row.experiment else None,
        "candidates": row.candidates,
        "fallbacks": row.fallbacks,
        "explanation": row.explanation,
        "feature_schema": row.feature_schema,
    }
