"""Strategies rank eligible candidates; they are registered by name.

A deployment adds its own with SCOPE_EXTRA_STRATEGIES="name=package.module.Class"; the class
follows the `Strategy` protocol below.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from routing.engine.prior import request_difficulty
from routing.engine.types import Candidate, PolicySpec
from routing.features import RequestFeatures


@dataclass(frozen=True, slots=True)
class StrategyContext:
    features: RequestFeatures
    policy: PolicySpec
    alpha: float
    metadata: Mapping[str, Any]


class Strategy(Protocol):
    """Orders eligible candidates best first and sets each one's `utility`."""

    name: str
    uses_rules: bool  # whether the policy's IF-THEN rules apply before ranking
    uses_predictor: bool

    def rank(self, candidates: Sequence[Candidate], ctx: StrategyContext) -> list[Candidate]: ...


def risk_adjusted_quality(candidate: Candidate, ctx: StrategyContext) -> float:
    assert candidate.prediction is not None
    aversion = float(ctx.policy.options.get("risk_aversion", 0.5))
    return candidate.prediction.quality - aversion * candidate.prediction.uncertainty


def utility_rank(candidates: Sequence[Candidate], ctx: StrategyContext) -> list[Candidate]:
    """α·quality − (1−α)·cost/max_cost: α = 1 picks the best predicted quality, α = 0 the cheapest."""
    max_cost = max((c.cost_usd for c in candidates), default=0.0) or 1.0
    for c in candidates:
        c.utility = ctx.alpha * risk_adjusted_quality(c, ctx) - (1.0 - ctx.alpha) * c.cost_usd / max_cost
    # ties: cheaper first, then name, so decisions are deterministic
    return sorted(candidates, key=lambda c: (-(c.utility or 0.0), c.cost_usd, c.model.name))


class PreInferenceStrategy:
    name = "pre_inference"
    uses_rules = False
    uses_predictor = True

    def rank(self, candidates: Sequence[Candidate], ctx: StrategyContext) -> list[Candidate]:
        return utility_rank(candidates, ctx)


class HybridStrategy(PreInferenceStrategy):
    name = "hybrid"
    uses_rules = True


class RuleStrategy:
    """Rules decide; without a forcing rule the policy's `default_model`, else the cheapest eligible."""

    name = "rule"
    uses_rules = True
    uses_predictor = False

    def rank(self, candidates: Sequence[Candidate], ctx: StrategyContext) -> list[Candidate]:
        default = ctx.policy.options.get("default_model")
        ordered = sorted(candidates, key=lambda c: (c.model.name != default, c.cost_usd, c.model.name))
        for position, c in enumerate(ordered):
            c.utility = float(-position)
        return ordered


class FeatureStrategy:
    """Difficulty from the request's features picks a target tier; the cheapest model at or above it wins."""

    name = "feature"
    uses_rules = True
    uses_predictor = False

    def rank(self, candidates: Sequence[Candidate], ctx: StrategyContext) -> list[Candidate]:
        difficulty = request_difficulty(ctx.features)
        target = 1 + round(difficulty * 4 * (0.5 + ctx.alpha))
        target = max(1, min(5, target))

        def key(c: Candidate) -> tuple[int, int, float, str]:
            gap = c.model.tier - target
            return (0 if gap >= 0 else 1, gap if gap >= 0 else -gap, c.cost_usd, c.model.name)

        ordered = sorted(candidates, key=key)
        for position, c in enumerate(ordered):
            c.utility = float(-position)
        return ordered


BUILTIN_STRATEGIES: tuple[type[Any], ...] = (
    RuleStrategy,
    FeatureStrategy,
    PreInferenceStrategy,
    HybridStrategy,
)


def load_strategies(extra: Iterable[str] = ()) -> dict[str, Strategy]:
    """Built-in strategies plus `name=dotted.path.Class` entries; a bad entry fails loudly."""
    registry: dict[str, Strategy] = {cls.name: cls() for cls in BUILTIN_STRATEGIES}
    for entry in extra:
        name, sep, path = entry.partition("=")
        if not sep or not name.strip() or "." not in path:
            raise ValueError(f"strategy entry {entry!r} must look like name=package.module.Class")
        module_name, _, class_name = path.strip().rpartition(".")
        cls = getattr(importlib.import_module(module_name), class_name)
        strategy = cls()
        for attr in ("rank", "uses_rules", "uses_predictor"):
            if not hasattr(strategy, attr):
                raise ValueError(f"strategy {path} has no {attr!r}")
        strategy.name = name.strip()
        registry[name.strip()] = strategy
    return registry
