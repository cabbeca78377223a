from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from routing.features import RequestFeatures


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """What the engine knows of a model: a snapshot of the catalog row plus live health."""

    name: str
    provider: str
    provider_kind: str
    input_usd_per_mtok: float
    output_usd_per_mtok: float
    context_window: int
    tier: int
    capabilities: frozenset[str] = frozenset()
    tags: Mapping[str, Any] = field(default_factory=dict)
    enabled: bool = True
    unavailable_reason: str = ""  # e.g. "circuit open" — set by the caller from live health

    def cost_usd(self, input_tokens: float, output_tokens: float) -> float:
        return (input_tokens * self.input_usd_per_mtok + output_tokens * self.output_usd_per_mtok) / 1e6


@dataclass(frozen=True, slots=True)
class Rule:
    name: str
    when: Mapping[str, Any]
    action: str  # force | exclude | set_alpha
    model: str = ""
    alpha: float | None = None


@dataclass(frozen=True, slots=True)
class PolicySpec:
    slug: str
    version: int
    strategy: str = "hybrid"
    alpha: float = 0.5
    max_cost_usd: float | None = None
    max_latency_ms: float | None = None
    allowed_models: tuple[str, ...] = ()
    denied_models: tuple[str, ...] = ()
    required_capabilities: tuple[str, ...] = ()
    required_tags: Mapping[str, Any] = field(default_factory=dict)
    rules: tuple[Rule, ...] = ()
    options: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class RouteOptions:
    """Per-request overrides; they can only narrow what the policy allows."""

    alpha: float | None = None
    max_cost_usd: float | None = None
    max_latency_ms: float | None = None
    models: tuple[str, ...] = ()
    metadata: Mapping[str, Any] = field(default_factory=dict)
    max_output_tokens: int | None = None
    # what the request itself needs (routing.capabilities), counted for capabilities the catalog uses
    required_capabilities: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Prediction:
    quality: float
    uncertainty: float
    output_tokens: float
    latency_ms: float
    known: bool = True  # False when the predictor has no data about this model


@dataclass(slots=True)
class Candidate:
    model: ModelSpec
    prediction: Prediction | None = None
    cost_usd: float = 0.0
    eligible: bool = True
    excluded_reason: str = ""
    utility: float | None = None
    rank: int | None = None

    def exclude(self, reason: str) -> None:
        if self.eligible:
            self.eligible = False
            self.excluded_reason = reason

    def as_dict(self) -> dict[str, Any]:
        """The candidate as logged and answered, its numbers to a few decimals (`to_decimals`)."""
        try:
            return self._as_dict(to_decimals)
        except (OverflowError, ValueError):  # an infinity or a NaN: round() keeps it as it is
            return self._as_dict(round)

    def _as_dict(self, rounded: Callable[[float, int], float]) -> dict[str, Any]:
        p = self.prediction
        return {
            "model": self.model.name,
            "provider": self.model.provider,
            "tier": self.model.tier,
            "eligible": self.eligible,
            "excluded_reason": self.excluded_reason or None,
            "utility": None if self.utility is None else rounded(self.utility, 6),
            "rank": self.rank,
            "predictions": None
            if p is None
            else {
                "quality": rounded(p.quality, 4),
                "uncertainty": rounded(p.uncertainty, 4),
                "output_tokens": rounded(p.output_tokens, 1),
                "latency_ms": rounded(p.latency_ms, 1),
                "cost_usd": rounded(self.cost_usd, 8),
                "known": p.known,
            },
        }


_POW10 = tuple(10.0**n for n in range(16))


def to_decimals(x: float, digits: int) -> float:
    """x to `digits` decimals: x * 10**digits to the nearest integer (halves to even), divided back.

    round(x, digits) rounds x's exact decimal value instead; the two differ only where
    x * 10**digits lands within an ulp of a half. round() formats and parses the number (about
    3,500 instructions, 48 times per request) and took twice as long for a candidate's numbers.
    Raises OverflowError or ValueError for an infinity or a NaN."""
    scale = _POW10[digits]
    return round(x * scale) / scale


@dataclass(frozen=True, slots=True)
class Decision:
    model: ModelSpec | None
    fallbacks: tuple[str, ...]
    candidates: tuple[Candidate, ...]
    strategy: str
    alpha: float
    predictor_version: str
    explanation: Mapping[str, Any]

    @property
    def chosen(self) -> Candidate | None:
        if self.model is None:
            return None
        return next(c for c in self.candidates if c.model.name == self.model.name)


class Predictor(Protocol):
    """Scores every candidate model for one request in one batched call."""

    version: str

    def predict(self, features: RequestFeatures, models: Sequence[ModelSpec]) -> list[Prediction]: ...

    def contributions(
        self, features: RequestFeatures, model: ModelSpec, top: int = 5
    ) -> list[dict[str, Any]]:
        """The top feature contributions to `model`'s predicted quality (may be empty)."""
        ...
