"""Router metrics of BENCHMARK.md (pure numpy): cost–quality curve, APGR, CPT, Savings@95, AUC/Brier.

Inputs are [prompts, models] matrices over the priced models: true `scores`, `costs` in USD and
the router's predicted `quality`. For each λ ≥ 0 every prompt goes to argmax(quality − λ·cost);
the points' upper envelope is the curve.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Curve:
    costs: np.ndarray  # mean cost per point, ascending
    qualities: np.ndarray  # best mean true score reached at mean cost <= costs[i] (monotone)

    def quality_at(self, c: float | np.ndarray) -> np.ndarray:
        """q(c): best score at mean cost ≤ c (NaN below the cheapest point)."""
        c_arr = np.atleast_1d(np.asarray(c, dtype=np.float64))
        idx = np.searchsorted(self.costs, c_arr * (1 + 1e-12), side="right") - 1
        out = np.where(idx >= 0, self.qualities[np.maximum(idx, 0)], np.nan)
        return out

    def cost_for(self, q: float) -> float | None:
        """Least mean cost reaching mean score ≥ q, or None."""
        hit = np.nonzero(self.qualities >= q - 1e-12)[0]
        return float(self.costs[hit[0]]) if len(hit) else None

    @property
    def peak(self) -> float:
        return float(self.qualities.max()) if len(self.qualities) else float("nan")


def route_points(
    quality: np.ndarray, scores: np.ndarray, costs: np.ndarray, n_lambdas: int = 600
) -> np.ndarray:
    """(mean cost, mean true score) for a sweep of λ; [points, 2]."""
    n, m = quality.shape
    rows = np.arange(n)
    if m == 1:
        return np.array([[costs.mean(), scores.mean()]])
    # λ where a prompt's choice can switch: ratios of quality gaps to cost gaps between models
    dq = quality[:, :, None] - quality[:, None, :]
    dc = costs[:, :, None] - costs[:, None, :]
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = dq / dc
    ratio = ratio[(dc > 0) & (dq > 0)]
    lambdas = [0.0, float("inf")]
    if len(ratio):
        lambdas += list(np.quantile(ratio, np.linspace(0, 1, n_lambdas)))
    points = []
    for lam in lambdas:
        # λ = ∞: the cheapest model, ties broken towards the better prediction
        choice = _cheapest(costs, quality) if np.isinf(lam) else np.argmax(quality - lam * costs, axis=1)
        points.append((costs[rows, choice].mean(), scores[rows, choice].mean()))
    return np.asarray(points)


def _cheapest(costs: np.ndarray, quality: np.ndarray) -> np.ndarray:
    best = costs.min(axis=1, keepdims=True)
    masked = np.where(costs <= best * (1 + 1e-12), quality, -np.inf)
    return np.argmax(masked, axis=1)


def envelope(points: np.ndarray) -> Curve:
    order = np.argsort(points[:, 0], kind="stable")
    costs = points[order, 0]
    qualities = np.maximum.accumulate(points[order, 1])
    return Curve(costs=costs, qualities=qualities)


@dataclass(frozen=True)
class Reference:
    q_cheap: float
    c_cheap: float
    q_best: float
    c_best: float
    cheap_model: int
    best_model: int
    oracle: float


def reference(scores: np.ndarray, costs: np.ndarray) -> Reference:
    mean_cost = costs.mean(axis=0)
    mean_score = scores.mean(axis=0)
    cheap = int(np.lexsort((-mean_score, mean_cost))[0])
    best = int(np.lexsort((mean_cost, -mean_score))[0])
    return Reference(
        q_cheap=float(mean_score[cheap]),
        c_cheap=float(mean_cost[cheap]),
        q_best=float(mean_score[best]),
        c_best=float(mean_cost[best]),
        cheap_model=cheap,
        best_model=best,
        oracle=float(scores.max(axis=1).mean()),
    )


def apgr(curve: Curve, ref: Reference, grid: int = 1000) -> float | None:
    """Mean over c in [c_cheap, c_best] of (q(c) − q_cheap)/(q_best − q_cheap); None if cheap is best."""
    gap = ref.q_best - ref.q_cheap
    if gap <= 1e-12 or ref.c_best <= ref.c_cheap:
        return None
    cs = np.linspace(ref.c_cheap, ref.c_best, grid)
    q = curve.quality_at(cs)
    q = np.where(np.isnan(q), ref.q_cheap, q)
    return float(np.mean((q - ref.q_cheap) / gap))


def cpt(curve: Curve, ref: Reference, share: float) -> float | None:
    """Share of the best model's cost needed to recover `share` of the gap."""
    gap = ref.q_best - ref.q_cheap
    if gap <= 1e-12 or ref.c_best <= 0:
        return None
    c = curve.cost_for(ref.q_cheap + share * gap)
    return None if c is None else c / ref.c_best


def savings_at(curve: Curve, ref: Reference, share: float = 0.95) -> float | None:
    if ref.c_best <= 0:
        return None
    c = curve.cost_for(share * ref.q_best)
    return None if c is None else 1.0 - c / ref.c_best


def auc(pred: np.ndarray, truth: np.ndarray) -> float | None:
    """ROC AUC of predictions against binary truth (ties counted half); None if one class only."""
    p, t = np.ravel(pred), np.ravel(truth) > 0.5
    pos, neg = int(t.sum()), int((~t).sum())
    if pos == 0 or neg == 0:
        return None
    order = np.argsort(p, kind="mergesort")
    ranks = np.empty(len(p))
    sorted_p = p[order]
    # average ranks over ties
    uniq, start, counts = np.unique(sorted_p, return_index=True, return_counts=True)
    avg = start + (counts + 1) / 2.0
    ranks[order] = np.repeat(avg, counts)
    return float((ranks[t].sum() - pos * (pos + 1) / 2.0) / (pos * neg))


def brier(pred: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean((np.ravel(pred) - np.ravel(truth)) ** 2))


def is_binary(scores: np.ndarray) -> bool:
    return bool(np.all((scores == 0.0) | (scores == 1.0)))


def summarize(quality: np.ndarray, scores: np.ndarray, costs: np.ndarray) -> dict[str, float | None]:
    """Every curve metric of one router on one split."""
    return summarize_points(route_points(quality, scores, costs), scores, costs)


def summarize_points(points: np.ndarray, scores: np.ndarray, costs: np.ndarray) -> dict[str, float | None]:
    """Every curve metric of a router given its (mean cost, mean score) points."""
    ref = reference(scores, costs)
    curve = envelope(points)
    return {
        "apgr": apgr(curve, ref),
        "cpt50": cpt(curve, ref, 0.5),
        "cpt80": cpt(curve, ref, 0.8),
        "savings95": savings_at(curve, ref, 0.95),
        "peak": curve.peak,
        "q_best": ref.q_best,
        "oracle": ref.oracle,
    }
