"""Printing and plotting router evaluations (evaluate_router, bench/quality.py)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from routing.predictor import metrics
from routing.predictor.evaluation import ROUTERS, SplitResult

COLUMNS = ("apgr", "cpt50", "cpt80", "savings95", "peak", "auc", "brier", "tokens_mae_log")


def _fmt(v: float | None) -> str:
    return "—" if v is None or (isinstance(v, float) and np.isnan(v)) else f"{v:.3f}"


def split_table(result: SplitResult) -> str:
    lines = [f"{'router':<16}" + "".join(f"{c:>15}" for c in COLUMNS)]
    for name in ROUTERS:
        row = result.results.get(name, {})
        lines.append(f"{name:<16}" + "".join(f"{_fmt(row.get(c)):>15}" for c in COLUMNS))
    ref = result.results["scope"]
    lines.append(f"q_best={_fmt(ref.get('q_best'))} oracle={_fmt(ref.get('oracle'))}")
    return "\n".join(lines)


def plot_curves(result: SplitResult, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5))
    for name in ROUTERS:
        pts = result.curves.get(name)
        if pts is None:
            continue
        curve = metrics.envelope(pts)
        if len(curve.costs) == 1:
            ax.scatter(curve.costs, curve.qualities, label=name, zorder=3)
        else:
            ax.step(curve.costs, curve.qualities, where="post", label=name)
    ax.set_xlabel("mean cost per prompt (USD)")
    ax.set_ylabel("mean score")
    ax.set_title(title)
    ax.legend(loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def aggregate(results: Sequence[SplitResult], router: str, column: str) -> tuple[float, float] | None:
    values = [r.results.get(router, {}).get(column) for r in results]
    nums = [float(v) for v in values if v is not None]
    if not nums:
        return None
    return float(np.mean(nums)), float(np.max(nums) - np.min(nums)) / 2.0
