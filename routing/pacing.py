"""Budget pacing (pure): replay recent decisions at other α values and pick the highest α that fits.

The decision log keeps every eligible candidate's predicted quality, uncertainty and cost, so the
controller can ask "what would recent traffic have cost at α = a?" without recomputing anything:
it re-ranks each logged decision with the pre-inference utility the live strategy uses.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

ALPHA_GRID = tuple(round(i * 0.025, 3) for i in range(41))


@dataclass(frozen=True, slots=True)
class LoggedChoice:
    """One logged decision's eligible candidates as (predicted quality − risk, cost)."""

    options: tuple[tuple[float, float], ...]


@dataclass(frozen=True, slots=True)
class CurvePoint:
    alpha: float
    mean_cost_usd: float
    mean_quality: float


@dataclass(frozen=True, slots=True)
class PacingChoice:
    alpha: float
    projected_spend_usd: float
    point: CurvePoint | None
    reason: str


def logged_choice(candidates: Sequence[Mapping[str, Any]], risk_aversion: float = 0.5) -> LoggedChoice | None:
    options = []
    for c in candidates:
        p = c.get("predictions")
        if not c.get("eligible") or not p:
            continue
        options.append(
            (float(p["quality"]) - risk_aversion * float(p.get("uncertainty") or 0.0), float(p["cost_usd"]))
        )
    return LoggedChoice(options=tuple(options)) if options else None


def replay(choices: Sequence[LoggedChoice], alpha: float) -> CurvePoint:
    """Mean predicted cost and quality of the models the utility α·q − (1−α)·cost/max_cost picks."""
    total_cost = total_quality = 0.0
    for choice in choices:
        max_cost = max(cost for _, cost in choice.options) or 1.0
        quality, cost = max(
            choice.options, key=lambda o: (alpha * o[0] - (1 - alpha) * o[1] / max_cost, -o[1])
        )
        total_cost += cost
        total_quality += quality
    n = max(len(choices), 1)
    return CurvePoint(alpha=alpha, mean_cost_usd=total_cost / n, mean_quality=total_quality / n)


def choose_alpha(
    *,
    choices: Sequence[LoggedChoice],
    current_alpha: float,
    spent_usd: float,
    target_usd: float,
    expected_requests: float,
    cost_scale: float = 1.0,
    min_alpha: float = 0.0,
    max_alpha: float = 1.0,
    max_step: float = 0.2,
) -> PacingChoice:
    """The highest α in [min, max] (within max_step of the current one) whose projected spend fits."""
    lo, hi = max(0.0, current_alpha - max_step), min(1.0, current_alpha + max_step)
    grid = sorted(
        {a for a in ALPHA_GRID if min_alpha <= a <= max_alpha and lo - 1e-9 <= a <= hi + 1e-9}
        | {max(min_alpha, lo), min(max_alpha, hi)}
    )
    remaining = target_usd - spent_usd
    if not choices or expected_requests <= 0:
        return PacingChoice(current_alpha, spent_usd, None, "no recent traffic to project from: α unchanged")
    best: PacingChoice | None = None
    for alpha in grid:
        point = replay(choices, alpha)
        projected = spent_usd + expected_requests * point.mean_cost_usd * cost_scale
        if projected <= target_usd and (best is None or alpha > best.alpha):
            best = PacingChoice(alpha, projected, point, "")
    if best is not None:
        fit = best.point
        assert fit is not None
        why = (
            f"highest α whose projected spend fits: ${best.projected_spend_usd:.4f} ≤ target ${target_usd:.4f} "
            f"(spent ${spent_usd:.4f}, ~{expected_requests:.0f} more requests at ${fit.mean_cost_usd * cost_scale:.6f}, "
            f"predicted quality {fit.mean_quality:.3f})"
        )
        return PacingChoice(best.alpha, best.projected_spend_usd, fit, why)
    floor = grid[0]
    point = replay(choices, floor)
    projected = spent_usd + expected_requests * point.mean_cost_usd * cost_scale
    why = (
        f"projected spend ${projected:.4f} exceeds target ${target_usd:.4f} even at α={floor:.3f} "
        f"(spent ${spent_usd:.4f}, ${max(remaining, 0):.4f} left): α lowered as far as allowed"
    )
    return PacingChoice(floor, projected, point, why)
