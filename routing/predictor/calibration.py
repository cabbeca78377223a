"""α calibration (pure): which α makes the engine send a target share to a model, or spend a target cost.

The engine ranks eligible candidates by α·(quality − risk_aversion·uncertainty) −
(1 − α)·cost / max_cost (routing/engine/strategies.utility_rank). Given predictions for a
sample of real requests, `sweep` replays that choice for a grid of α values — the quantile
calibration of RouteLLM generalised to many models — and `choose_*` picks the α.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

ALPHAS = np.round(np.linspace(0.0, 1.0, 201), 4)


@dataclass(frozen=True)
class AlphaPoint:
    alpha: float
    shares: np.ndarray  # [M] share of requests per model
    mean_cost: float
    mean_quality: float  # predicted quality of the chosen models
    mean_true: float | None  # true score of the chosen models, where outcomes are known
    true_n: int = 0  # requests whose chosen model has a known outcome (mean_true is over these)


def choices(
    alpha: float, quality: np.ndarray, uncertainty: np.ndarray, costs: np.ndarray, risk_aversion: float
) -> np.ndarray:
    """The engine's pick per request [N] (ties: cheaper first, then the lower column = name order)."""
    max_cost = costs.max(axis=1, keepdims=True)
    max_cost = np.where(max_cost > 0, max_cost, 1.0)
    utility = alpha * (quality - risk_aversion * uncertainty) - (1.0 - alpha) * costs / max_cost
    best = utility.max(axis=1, keepdims=True)
    tied = utility >= best - 1e-12
    return np.argmin(np.where(tied, costs, np.inf), axis=1)


def sweep(
    quality: np.ndarray,
    uncertainty: np.ndarray,
    costs: np.ndarray,
    *,
    risk_aversion: float = 0.5,
    truth: np.ndarray | None = None,
) -> list[AlphaPoint]:
    n, m = quality.shape
    rows = np.arange(n)
    out = []
    for alpha in ALPHAS:
        pick = choices(float(alpha), quality, uncertainty, costs, risk_aversion)
        true, true_n = None, 0
        if truth is not None:
            got = truth[rows, pick]
            true_n = int(np.isfinite(got).sum())
            true = float(np.nanmean(got)) if true_n else None
        out.append(
            AlphaPoint(
                alpha=float(alpha),
                shares=np.bincount(pick, minlength=m) / max(n, 1),
                mean_cost=float(costs[rows, pick].mean()),
                mean_quality=float(quality[rows, pick].mean()),
                mean_true=true,
                true_n=true_n,
            )
        )
    return out


def choose_for_share(points: list[AlphaPoint], model: int, share: float) -> AlphaPoint:
    """The α whose share of `model` is closest to `share` (the smallest such α on ties)."""
    return min(points, key=lambda p: (abs(p.shares[model] - share), p.alpha))


def choose_for_cost(points: list[AlphaPoint], max_mean_cost: float) -> AlphaPoint:
    """The highest-quality α whose mean cost stays within the target (else the cheapest point)."""
    within = [p for p in points if p.mean_cost <= max_mean_cost * (1 + 1e-9)]
    if not within:
        return min(points, key=lambda p: (p.mean_cost, -p.alpha))
    return max(within, key=lambda p: (p.mean_quality, -p.mean_cost, p.alpha))
