"""The decision for a chat completion: routed (scope/auto, scope/<policy>) or passed through.

Either way exactly one DecisionLog row is written before any provider is called. Routing sees
live health: models with an open circuit are excluded, with the circuit's reason, in the
decision's candidates. A concrete model name is passed through (strategy "passthrough"): no
ranking, no fallbacks, but the same row with the model's predictions and the key's policy.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field

from providers.chat_request import ParsedChat
from providers.circuit import with_circuit_health
from routing.engine.prior import PriorPredictor
from routing.engine.types import Candidate, Decision, ModelSpec, PolicySpec
from routing.features import extract_features
from routing.models import ApiKey
from routing.predictor.registry import active_predictor
from routing.response_cache import ResponseCacheProbe
from routing.selectors import model_specs
from routing.services.decision_log import decision_log_write
from routing.services.route import resolve_policy, route_decide
from scope_site import metrics
from scope_site.errors import NotFound

PASSTHROUGH = "passthrough"


@dataclass(frozen=True, slots=True)
class ChatDecision:
    decision_id: str
    policy_slug: str
    strategy: str
    order: tuple[str, ...]  # chosen model, then its ranked fallbacks
    specs: Mapping[str, ModelSpec]
    input_tokens: int
    predicted_cost_usd: float
    costs: Mapping[str, float] = field(default_factory=dict)  # predicted cost per model of `order`


def _model_not_found(name: str) -> NotFound:
    return NotFound(
        f"The model {name!r} does not exist or is disabled; GET /v1/models lists what SCOPE serves.",
        code="model_not_found",
        extra={"param": "model"},
    )


def _passthrough(
    *,
    api_key: ApiKey | None,
    parsed: ParsedChat,
    kind: str,
    catalog: tuple[ModelSpec, ...],
    cache_probe: ResponseCacheProbe | None = None,
) -> ChatDecision:
    spec = next((m for m in catalog if m.name == parsed.model), None)
    if spec is None or not spec.enabled:
        raise _model_not_found(parsed.model)
    metadata = parsed.routing_metadata()
    features = extract_features(parsed.request.messages, metadata)
    try:
        policy = resolve_policy(requested=None, api_key=api_key)
    except NotFound:
        policy = PolicySpec(slug="", version=0)
    predictor = active_predictor() or PriorPredictor()
    prediction = predictor.predict(features, [spec])[0]
    if not prediction.known:
        predictor = PriorPredictor()
        prediction = predictor.predict(features, [spec])[0]
    candidate = Candidate(model=spec, prediction=prediction, rank=1)
    candidate.cost_usd = spec.cost_usd(features.input_tokens, prediction.output_tokens)
    notes = (
        [f"{spec.unavailable_reason}: called anyway only if it recovers"] if spec.unavailable_reason else []
    )
    decision = Decision(
        model=spec,
        fallbacks=(),
        candidates=(candidate,),
        strategy=PASSTHROUGH,
        alpha=policy.alpha,
        predictor_version=predictor.version,
        explanation={
            "summary": f"the request named {spec.name!r}: passed through without routing or fallbacks",
            "alpha": policy.alpha,
            "rules_matched": [],
            "notes": notes,
            "eligible": 1,
            "excluded": 0,
        },
    )
    row = decision_log_write(
        decision=decision,
        features=features,
        policy=policy,
        api_key=api_key,
        user=parsed.user,
        metadata=metadata,
        kind=kind,
        cache_hit=cache_probe is not None and cache_probe(decision, policy),  # HOOK(response cache)
    )
    return ChatDecision(
        decision_id=str(row.id),
        policy_slug=policy.slug,
        strategy=PASSTHROUGH,
        order=(spec.name,),
        specs={spec.name: spec},
        input_tokens=features.input_tokens,
        predicted_cost_usd=candidate.cost_usd,
        costs={spec.name: candidate.cost_usd},
    )


def chat_target_check(*, api_key: ApiKey | None, parsed: ParsedChat) -> None:
    """The 404 a chat would answer for its model or policy, raised up front: an async job's
    submission says so at once instead of accepting the job and failing it in the worker."""
    if parsed.passthrough:
        spec = next((m for m in model_specs() if m.name == parsed.model), None)
        if spec is None or not spec.enabled:
            raise _model_not_found(parsed.model)
    else:
        resolve_policy(requested=parsed.policy or None, api_key=api_key)


def chat_decide(
    *, api_key: ApiKey | None, parsed: ParsedChat, kind: str, cache_probe: ResponseCacheProbe | None = None
) -> ChatDecision:
    started = time.perf_counter()
    catalog = with_circuit_health(model_specs())
    if parsed.passthrough:
        decided = _passthrough(
            api_key=api_key, parsed=parsed, kind=kind, catalog=catalog, cache_probe=cache_probe
        )
    else:
        result = route_decide(
            messages=parsed.request.messages,
            api_key=api_key,
            policy=parsed.policy or None,
            alpha=parsed.alpha,
            max_cost_usd=parsed.max_cost_usd,
            max_latency_ms=parsed.max_latency_ms,
            models=parsed.models,
            user=parsed.user,
            metadata=parsed.routing_metadata(),
            max_output_tokens=parsed.request.max_tokens,
            required_capabilities=parsed.required_capabilities,
            kind=kind,
            catalog=catalog,
            cache_probe=cache_probe,  # HOOK(response cache)
        )
        decision = result.decision
        assert decision.model is not None  # route_decide raises NoEligibleModel otherwise
        chosen = decision.chosen
        decided = ChatDecision(
            decision_id=str(result.row.id),
            policy_slug=result.row.policy_slug,
            strategy=decision.strategy,
            order=(decision.model.name, *decision.fallbacks),
            specs={c.model.name: c.model for c in decision.candidates},
            input_tokens=result.features.input_tokens,
            predicted_cost_usd=chosen.cost_usd if chosen else 0.0,
            costs={c.model.name: c.cost_usd for c in decision.candidates if c.eligible},
        )
    metrics.decision_observed(
        kind=kind,
        policy=decided.policy_slug,
        model=decided.order[0],
        strategy=decided.strategy,
        seconds=time.perf_counter() - started,
    )
    return decided
