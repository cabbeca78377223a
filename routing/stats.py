"""Experiment statistics (pure): 95% intervals per arm and significance tests between arms.

Which interval fits which metric:
- a proportion (error rate): Wilson score interval, sound for small n and rates near 0 or 1;
- a mean (feedback score, cost per request): Student t interval;
- a quantile (latency p50/p95): the distribution-free order-statistic interval from the
  binomial distribution of the number of samples below the true quantile.
Between two arms: Welch's t-test for means (unequal variances), Mann–Whitney U as its rank-based
check, and a two-proportion z-test for rates. An experiment assigns users (else API keys), not
requests: when a unit sent several requests, means and rates are compared by the cluster-robust
Welch test and the rank test runs over one value per unit. While a difference is not significant, the sample
size per arm that would detect the observed difference (two-sided α = 0.05, power 0.8) says how
much longer to wait.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

Z95 = 1.959963984540054
Z_POWER80 = 0.8416212335729143


def _sps() -> Any:
    """scipy.stats, imported on first use: web workers import this module with the dashboard, and
    SciPy costs them tens of MB and a second of start-up that only the experiment pages need."""
    from scipy import stats

    return stats


def t_interval(
    mean: float | None, sd: float | None, n: int, bounds: tuple[float, float] | None = None
) -> tuple[float, float] | None:
    """95% Student t interval of a mean from its summary (None below two values), clipped to the
    values the metric can take when `bounds` are given (a feedback score in [0, 1])."""
    if mean is None or sd is None or n < 2:
        return None
    half = float(_sps().t.ppf(0.975, n - 1)) * sd / math.sqrt(n)
    low, high = mean - half, mean + half
    if bounds is not None:
        low, high = max(bounds[0], low), min(bounds[1], high)
    return low, high


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float] | None:
    if n <= 0:
        return None
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # at 0 or n successes the exact bound is 0 or 1, not the 1e-17 the arithmetic leaves
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == n else min(1.0, centre + half)
    return low, high


def mean_interval(values: Sequence[float], bounds: tuple[float, float] | None = None) -> dict[str, Any]:
    """Mean with a 95% Student t interval (no interval below two values), within `bounds` if given."""
    x = np.asarray(values, dtype=float)
    n = int(x.size)
    if n == 0:
        return {"n": 0, "mean": None, "ci95": None}
    mean = float(x.mean())
    if n < 2:
        return {"n": n, "mean": mean, "sd": None, "ci95": None}
    sd = float(x.std(ddof=1))
    interval = t_interval(mean, sd, n, bounds)
    return {"n": n, "mean": mean, "sd": sd, "ci95": list(interval) if interval else None}


def quantile_interval(values: Sequence[float], q: float) -> dict[str, Any]:
    """The q-quantile with its distribution-free 95% order-statistic interval."""
    x = np.sort(np.asarray(values, dtype=float))
    n = int(x.size)
    if n == 0:
        return {"n": 0, "value": None, "ci95": None}
    value = float(np.quantile(x, q))
    lo_rank = int(_sps().binom.ppf(0.025, n, q))  # 0-based index of the lower bound
    hi_rank = int(_sps().binom.ppf(0.975, n, q))
    if lo_rank < 1 or hi_rank >= n:
        return {"n": n, "value": value, "ci95": None}  # too few samples for a 95% interval
    return {"n": n, "value": value, "ci95": [float(x[lo_rank - 1]), float(x[hi_rank])]}


def proportion(successes: int, n: int) -> dict[str, Any]:
    interval = wilson_interval(successes, n)
    return {
        "n": n,
        "count": successes,
        "rate": successes / n if n else None,
        "ci95": list(interval) if interval else None,
    }


def welch_t_test(a: Sequence[float], b: Sequence[float]) -> dict[str, Any] | None:
    xa, xb = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if xa.size < 2 or xb.size < 2:
        return None
    if np.ptp(xa) == 0.0 and np.ptp(xb) == 0.0:  # both constant: no variance to test against
        equal = float(xa.mean()) == float(xb.mean())
        return {
            "test": "welch_t",
            "statistic": 0.0 if equal else None,
            "p_value": 1.0 if equal else 0.0,
            "difference": float(xb.mean() - xa.mean()),
        }
    result = _sps().ttest_ind(xb, xa, equal_var=False)
    return {
        "test": "welch_t",
        "statistic": float(result.statistic),
        "p_value": float(result.pvalue),
        "difference": float(xb.mean() - xa.mean()),
    }


def mann_whitney(a: Sequence[float], b: Sequence[float]) -> dict[str, Any] | None:
    xa, xb = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if xa.size < 1 or xb.size < 1 or (np.all(xa == xa[0]) and np.all(xb == xa[0])):
        return None
    result = _sps().mannwhitneyu(xb, xa, alternative="two-sided")
    return {
        "test": "mann_whitney_u",
        "statistic": float(result.statistic),
        "p_value": float(result.pvalue),
        # P(b > a) + P(b = a)/2: above 0.5 means b's values tend to be the larger ones
        "prob_superiority": float(result.statistic) / (xa.size * xb.size),
        "difference": float(np.median(xb) - np.median(xa)),
    }


def two_proportion_z(count_a: int, n_a: int, count_b: int, n_b: int) -> dict[str, Any] | None:
    if n_a == 0 or n_b == 0:
        return None
    pooled = (count_a + count_b) / (n_a + n_b)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n_a + 1 / n_b))
    diff = count_b / n_b - count_a / n_a
    if se == 0.0:
        return {"test": "two_proportion_z", "statistic": 0.0, "p_value": 1.0, "difference": diff}
    z = diff / se
    return {
        "test": "two_proportion_z",
        "statistic": z,
        "p_value": float(2 * _sps().norm.sf(abs(z))),
        "difference": diff,
    }


def needed_per_arm_means(a: Sequence[float], b: Sequence[float]) -> int | None:
    """Samples per arm for a two-sided t-test to detect the observed mean difference (α 0.05, power 0.8)."""
    xa, xb = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if xa.size < 2 or xb.size < 2:
        return None
    delta = float(xb.mean() - xa.mean())
    variance = (float(xa.var(ddof=1)) + float(xb.var(ddof=1))) / 2
    if delta == 0.0 or variance == 0.0:
        return None  # no observed difference (or no spread): no finite sample size detects it
    return math.ceil(2 * variance * (Z95 + Z_POWER80) ** 2 / delta**2)


def needed_per_arm_proportions(count_a: int, n_a: int, count_b: int, n_b: int) -> int | None:
    """Samples per arm for a two-proportion z-test to detect the observed rate difference (α 0.05, power 0.8)."""
    if n_a == 0 or n_b == 0:
        return None
    p_a, p_b = count_a / n_a, count_b / n_b
    if p_a == p_b:
        return None
    pooled = (p_a + p_b) / 2
    root = Z95 * math.sqrt(2 * pooled * (1 - pooled)) + Z_POWER80 * math.sqrt(
        p_a * (1 - p_a) + p_b * (1 - p_b)
    )
    return math.ceil(root**2 / (p_b - p_a) ** 2)


def _per_unit(values: Sequence[float], units: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """(sum, count) of the values of each unit."""
    _, index = np.unique(np.asarray(units, dtype=object).astype(str), return_inverse=True)
    return np.bincount(index, weights=np.asarray(values, dtype=float)), np.bincount(index).astype(float)


def _clustered_mean(values: Sequence[float], units: Sequence[str]) -> tuple[float, float, int]:
    """(mean over samples, the jackknife variance of that mean over units, units).

    Leaving out one unit at a time measures how much the mean leans on each unit: a user who sent
    most of an arm's requests moves it a lot, and the variance says so (the delta method's would
    not, with one dominant unit). With one sample per unit it is s²/n, as Welch's test uses."""
    sums, counts = _per_unit(values, units)
    total, n = float(sums.sum()), float(counts.sum())
    k = len(sums)
    if k < 2:
        return total / n, math.nan, k
    without = (total - sums) / (n - counts)  # the mean with each unit left out
    variance = (k - 1) / k * float(((without - without.mean()) ** 2).sum())
    return total / n, variance, k


def clustered(units: Sequence[str]) -> bool:
    """Some unit contributed more than one sample."""
    return len(set(units)) < len(units)


def clustered_welch_t(
    a: Sequence[float], units_a: Sequence[str], b: Sequence[float], units_b: Sequence[str]
) -> dict[str, Any] | None:
    """Welch's t-test for per-sample means whose samples come in clusters: an experiment assigns
    each user (else API key) to one arm, so a busy user's requests are not independent draws and
    the plain test is over-confident. Each arm's mean is sum/count over its samples, its variance the
    jackknife over units (cluster-robust), the degrees of freedom Welch–Satterthwaite's over units.
    With one sample per unit this is Welch's t-test exactly."""
    if not clustered(units_a) and not clustered(units_b):
        return welch_t_test(a, b)
    if len(set(units_a)) < 2 or len(set(units_b)) < 2:
        return None
    mean_a, var_a, k_a = _clustered_mean(a, units_a)
    mean_b, var_b, k_b = _clustered_mean(b, units_b)
    out: dict[str, Any] = {
        "test": "welch_t_clustered",
        "units": [k_a, k_b],
        "difference": mean_b - mean_a,
        # variance of the difference over what independent samples would give: how many times more
        # samples the clustering costs
        "design_effect": _design_effect(a, b, var_a + var_b),
    }
    if var_a + var_b == 0.0:
        out.update(statistic=0.0 if mean_a == mean_b else None, p_value=1.0 if mean_a == mean_b else 0.0)
        return out
    t = (mean_b - mean_a) / math.sqrt(var_a + var_b)
    dof = (var_a + var_b) ** 2 / (var_a**2 / (k_a - 1) + var_b**2 / (k_b - 1))
    out.update(statistic=float(t), p_value=float(2 * _sps().t.sf(abs(t), dof)))
    return out


def _design_effect(a: Sequence[float], b: Sequence[float], clustered_variance: float) -> float | None:
    xa, xb = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    naive = float(xa.var(ddof=1)) / xa.size + float(xb.var(ddof=1)) / xb.size
    return clustered_variance / naive if naive > 0 else None


def unit_values(values: Sequence[float], units: Sequence[str], how: str = "mean") -> list[float]:
    """One value per unit (its mean or median): the independent samples a rank test needs."""
    by_unit: dict[str, list[float]] = {}
    for value, unit in zip(values, units, strict=True):
        by_unit.setdefault(unit, []).append(float(value))
    pick = np.median if how == "median" else np.mean
    return [float(pick(v)) for v in by_unit.values()]


def significant(test: dict[str, Any] | None, alpha: float = 0.05) -> bool:
    return test is not None and test["p_value"] < alpha


def json_safe(value: Any) -> Any:
    """NaN and ±inf (which JSON cannot hold) become None, recursively."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value
