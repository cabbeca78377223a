"""decide(): filter candidates (keeping a reason for each exclusion), apply rules, predict, rank."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from routing.engine.conditions import evaluate
from routing.engine.prior import PriorPredictor
from routing.engine.strategies import Strategy, StrategyContext
from routing.engine.types import (
    Candidate,
    Decision,
    ModelSpec,
    PolicySpec,
    Prediction,
    Predictor,
    RouteOptions,
)
from routing.features import RequestFeatures

_PRIOR = PriorPredictor()


class UnknownStrategy(LookupError):
    pass


def _constraint_reason(
    model: ModelSpec,
    policy: PolicySpec,
    options: RouteOptions,
    tokens_needed: int,
    capabilities_needed: Sequence[str],
) -> str:
    if not model.enabled:
        return "model disabled"
    if model.unavailable_reason:
        return model.unavailable_reason
    if policy.allowed_models and model.name not in policy.allowed_models:
        return f"not in policy {policy.slug!r} allowed models"
    if model.name in policy.denied_models:
        return f"denied by policy {policy.slug!r}"
    if options.models and model.name not in options.models:
        return "not in the request's models"
    missing = [cap for cap in capabilities_needed if cap not in model.capabilities]
    if missing:
        return f"missing capability: {', '.join(missing)}"
    mismatch = tag_mismatch(model.tags, policy.required_tags)
    if mismatch:
        return mismatch
    if model.context_window < tokens_needed:
        return f"context window {model.context_window} < {tokens_needed} tokens needed"
    return ""


def tag_mismatch(tags: Mapping[str, Any], required: Mapping[str, Any]) -> str:
    """Why `tags` fail a policy's required tags (a value, or a list of allowed values); "" if they pass."""
    for tag, wanted in required.items():
        have = tags.get(tag)
        if (have not in wanted) if isinstance(wanted, list) else (have != wanted):
            return f"tag {tag}={have!r} does not match required {wanted!r}"
    return ""


def _apply_rules(
    candidates: Sequence[Candidate],
    policy: PolicySpec,
    features: RequestFeatures,
    metadata: Mapping[str, Any],
) -> tuple[str | None, str, float | None, list[str]]:
    """Returns (forced model, the rule that forced it, alpha override, names of matched rules)."""
    feature_map = features.named()
    by_name = {c.model.name: c for c in candidates}
    forced: str | None = None
    forced_by = ""
    alpha: float | None = None
    matched: list[str] = []
    for rule in policy.rules:
        if not evaluate(rule.when, feature_map, metadata):
            continue
        matched.append(rule.name)
        if rule.action == "exclude" and rule.model in by_name:
            by_name[rule.model].exclude(f"excluded by rule {rule.name!r}")
        elif rule.action == "set_alpha" and alpha is None and rule.alpha is not None:
            alpha = rule.alpha
        elif rule.action == "force" and forced is None:
            forced, forced_by = rule.model, rule.name
    return forced, forced_by, alpha, matched


def with_prior_for_unknown(
    features: RequestFeatures, models: Sequence[ModelSpec], predictions: Sequence[Prediction]
) -> list[Prediction]:
    """A trained predictor's predictions, with the tier prior's for the models it has no data for."""
    out = list(predictions)
    gaps = [i for i, p in enumerate(out) if not p.known]
    if gaps:
        for i, p in zip(gaps, _PRIOR.predict(features, [models[i] for i in gaps]), strict=True):
            out[i] = p
    return out


def request_limits(options: RouteOptions) -> dict[str, Any]:
    """The request's own overrides (alpha, limits, model list, output budget), those it set only."""
    out: dict[str, Any] = {}
    if options.alpha is not None:
        out["alpha"] = options.alpha
    if options.max_cost_usd is not None:
        out["max_cost_usd"] = options.max_cost_usd
    if options.max_latency_ms is not None:
        out["max_latency_ms"] = options.max_latency_ms
    if options.models:
        out["models"] = list(options.models)
    if options.max_output_tokens is not None:
        out["max_output_tokens"] = options.max_output_tokens
    if options.required_capabilities:  # what the request needs (tools, vision, json)
        out["required_capabilities"] = list(options.required_capabilities)
    return out


def options_from_log(
    explanation: Mapping[str, Any] | None, metadata: Mapping[str, Any] | None
) -> RouteOptions:
    """RouteOptions of a logged decision (rows logged before limits were recorded: metadata only)."""
    request = (explanation or {}).get("request") or {}
    return RouteOptions(
        alpha=request.get("alpha"),
        max_cost_usd=request.get("max_cost_usd"),
        max_latency_ms=request.get("max_latency_ms"),
        models=tuple(request.get("models") or ()),
        metadata=metadata or {},
        max_output_tokens=request.get("max_output_tokens"),
        required_capabilities=tuple(request.get("required_capabilities") or ()),
    )


def decide(
    *,
    features: RequestFeatures,
    models: Sequence[ModelSpec],
    policy: PolicySpec,
    options: RouteOptions,
    predictor: Predictor | None,
    strategies: Mapping[str, Strategy],
    max_fallbacks: int = 3,
) -> Decision:
    strategy = strategies.get(policy.strategy)
    if strategy is None:
        raise UnknownStrategy(f"policy {policy.slug!r} uses unknown strategy {policy.strategy!r}")
    notes: list[str] = []
    tokens_needed = features.input_tokens + (options.max_output_tokens or 0)
    capabilities_needed = _capabilities_needed(models, policy, options, notes)
    candidates = [Candidate(model=m) for m in models]
    for c in candidates:
        excluded_because = _constraint_reason(c.model, policy, options, tokens_needed, capabilities_needed)
        if excluded_because:
            c.exclude(excluded_because)

    forced: str | None = None
    forced_by = ""
    rule_alpha: float | None = None
    matched: list[str] = []
    if strategy.uses_rules and policy.rules:
        forced, forced_by, rule_alpha, matched = _apply_rules(candidates, policy, features, options.metadata)
    alpha = (
        options.alpha
        if options.alpha is not None
        else (rule_alpha if rule_alpha is not None else policy.alpha)
    )

    # one batched prediction for every model (excluded ones too: auditors see what was forgone)
    active: Predictor = predictor or _PRIOR
    predictions = active.predict(features, [c.model for c in candidates]) if candidates else []
    if predictor is None:
        notes.append("no trained predictor is active: predictions come from each model's tier prior")
    else:  # models the predictor has no data for: the tier prior, in one call
        predictions = with_prior_for_unknown(features, [c.model for c in candidates], predictions)
    for c, p in zip(candidates, predictions, strict=True):
        c.prediction = p
        c.cost_usd = c.model.cost_usd(features.input_tokens, p.output_tokens)
    unknown = [
        c.model.name for c in candidates if c.prediction and not c.prediction.known and predictor is not None
    ]
    if unknown:
        notes.append(f"no data for {', '.join(unknown)}: scored by tier prior with high uncertainty")

    max_cost = _tightest(policy.max_cost_usd, options.max_cost_usd)
    max_latency = _tightest(policy.max_latency_ms, options.max_latency_ms)
    for c in candidates:
        assert c.prediction is not None
        if max_cost is not None and c.cost_usd > max_cost:
            c.exclude(f"predicted cost ${c.cost_usd:.6f} > max ${max_cost:.6f}")
        elif max_latency is not None and c.prediction.latency_ms > max_latency:
            c.exclude(f"predicted latency {c.prediction.latency_ms:.0f} ms > max {max_latency:.0f} ms")

    eligible = [c for c in candidates if c.eligible]
    ctx = StrategyContext(features=features, policy=policy, alpha=alpha, metadata=options.metadata)
    ranked = strategy.rank(eligible, ctx) if eligible else []
    reason: str
    if forced is not None:
        forced_candidate = next((c for c in ranked if c.model.name == forced), None)
        if forced_candidate is not None:
            ranked.remove(forced_candidate)
            ranked.insert(0, forced_candidate)
            reason = f"forced by rule {forced_by!r}"
        else:
            notes.append(f"a rule forced {forced!r} but it is not eligible; ranking instead")
            reason = ""
    else:
        reason = ""
    for position, c in enumerate(ranked, start=1):
        c.rank = position
    chosen = ranked[0] if ranked else None
    if chosen is not None and not reason:
        reason = _why(strategy.name, alpha, chosen)
    fallbacks = tuple(c.model.name for c in ranked[1 : 1 + max_fallbacks])
    explanation: dict[str, Any] = {
        "summary": reason if chosen else "no eligible model: every candidate was excluded",
        "alpha": alpha,
        "rules_matched": matched,
        "notes": notes,
        "eligible": len(eligible),
        "excluded": len(candidates) - len(eligible),
    }
    request = request_limits(options)
    if request:  # what the request itself narrowed, so a replay re-decides it under the same limits
        explanation["request"] = request
    if chosen is not None and strategy.uses_predictor:
        source = active if chosen.prediction is not None and chosen.prediction.known else _PRIOR
        explanation["contributions"] = source.contributions(features, chosen.model)
    return Decision(
        model=chosen.model if chosen else None,
        fallbacks=fallbacks,
        candidates=tuple(candidates),
        strategy=strategy.name,
        alpha=alpha,
        predictor_version=active.version if strategy.uses_predictor else "none",
        explanation=explanation,
    )


def _capabilities_needed(
    models: Sequence[ModelSpec], policy: PolicySpec, options: RouteOptions, notes: list[str]
) -> tuple[str, ...]:
    """The policy's required capabilities plus the request's own, where the catalog uses the name."""
    wanted = [c for c in options.required_capabilities if c not in policy.required_capabilities]
    if wanted:  # most requests need nothing: no catalog scan for them
        declared = frozenset().union(*(m.capabilities for m in models))
        used = [c for c in wanted if c in declared]
        unknown = [c for c in wanted if c not in declared]
        if used:
            notes.append(f"the request needs: {', '.join(used)}")
        if unknown:
            notes.append(
                f"the request uses {', '.join(unknown)}, which no catalog model declares: not a constraint"
            )
        wanted = used
    return (*policy.required_capabilities, *wanted)


def _tightest(a: float | None, b: float | None) -> float | None:
    values = [v for v in (a, b) if v is not None]
    return min(values) if values else None


def _why(strategy: str, alpha: float, chosen: Candidate) -> str:
    p = chosen.prediction
    if strategy in {"pre_inference", "hybrid"} and p is not None:
        return (
            f"highest utility at alpha={alpha:.2f}: predicted quality {p.quality:.2f} "
            f"(±{p.uncertainty:.2f}), cost ${chosen.cost_usd:.6f}, latency {p.latency_ms:.0f} ms"
        )
    if strategy == "feature":
        return f"cheapest eligible model at the tier the request's difficulty calls for (tier {chosen.model.tier})"
    if strategy == "rule":
        return "no rule forced a model: the policy default / cheapest eligible model"
    return f"ranked first by strategy {strategy!r}"
