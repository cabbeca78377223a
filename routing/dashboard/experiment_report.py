"""An experiment's stored significance analysis (`Experiment.stats`), put into words for operators.

Pure: it reads the dict `routing.services.experiment_stats` stores and returns what the page
shows — per arm the sample sizes and means with their 95% intervals, per comparison the test, its
p-value and a plain verdict ("cheap better on quality, p=0.01", "not significant yet, need ~300
more ratings per arm"), the chart data, and the raw JSON for auditors. Older analyses that lack a
field (latency mean, needed sample size) still render, with less said.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

ALPHA = 0.05
SRM_ALPHA = 0.01  # a sample-ratio check this unlikely means the assignment is broken, not chance
TEST_NAMES = {
    "welch_t": "Welch t-test",
    "welch_t_clustered": "Welch t-test over users (cluster-robust)",
    "mann_whitney_u": "Mann–Whitney U",
    "two_proportion_z": "two-proportion z-test",
}


@dataclass(frozen=True, slots=True)
class Metric:
    test_key: str  # key in comparisons[].tests
    summary_key: str  # key in arms[] holding the arm's estimate
    label: str  # column / row label
    noun: str  # in a verdict: "better on <noun>"
    higher_is_better: bool
    unit: str  # score | usd | ms | rate
    samples: str  # what one sample is, for "need ~N more <samples> per arm"


METRICS = (
    Metric(
        "feedback_score", "feedback_score", "Quality (mean feedback)", "quality", True, "score", "ratings"
    ),
    Metric("feedback_score_ranks", "feedback_score", "Quality (ranks)", "quality", True, "score", "ratings"),
    Metric(
        "cost_per_request_usd", "cost_per_request_usd", "Cost per request", "cost", False, "usd", "requests"
    ),
    Metric("latency_ms", "latency_ms", "Latency", "latency", False, "ms", "answers"),
    Metric("error_rate", "error_rate", "Error rate", "error rate", False, "rate", "answers"),
)


@dataclass(frozen=True, slots=True)
class Estimate:
    """A mean (or rate, or quantile) with its 95% interval and the number of samples behind it."""

    value: float | None
    low: float | None
    high: float | None
    n: int
    text: str  # "0.812 [0.774, 0.850]", "–" when there is no sample


@dataclass(frozen=True, slots=True)
class ArmRow:
    name: str
    policy: str
    weight: int
    requests: int
    is_control: bool
    quality: Estimate
    cost: Estimate
    latency: Estimate
    latency_is_median: bool  # an analysis from before the latency mean was stored shows p50
    error_rate: Estimate


@dataclass(frozen=True, slots=True)
class TestRow:
    arm: str
    against: str
    metric: str
    test: str
    p_value: float | None
    p_text: str
    difference: str  # arm − control, in the metric's unit
    verdict: str
    significant: bool
    winner: str | None


@dataclass(frozen=True, slots=True)
class Chart:
    id: str  # the json_script element id
    title: str
    data: dict[str, Any]


@dataclass(frozen=True, slots=True)
class SplitCheck:
    ok: bool
    text: str


@dataclass(frozen=True, slots=True)
class ExperimentReport:
    computed_at: str
    confidence: float
    total_requests: int
    control: str | None
    arms: list[ArmRow]
    tests: list[TestRow]
    charts: list[Chart]
    split: SplitCheck | None
    raw_json: str


def significant_digits(value: float, digits: int = 3) -> str:
    if value == 0 or not math.isfinite(value):
        return "0" if value == 0 else str(value)
    decimals = max(0, digits - 1 - math.floor(math.log10(abs(value))))
    return f"{value:.{decimals}f}"


def formatted(value: float | None, unit: str) -> str:
    if value is None:
        return "–"
    if unit == "usd":
        return ("-$" if value < 0 else "$") + significant_digits(abs(value))
    if unit == "ms":
        return f"{significant_digits(value)} ms"
    if unit == "rate":
        return f"{100 * value:.1f}%"
    if unit == "score":
        return f"{value:.3f}"
    return significant_digits(value)


def p_text(p: float | None) -> str:
    if p is None:
        return "–"
    return "p<0.001" if p < 0.001 else f"p={p:.2g}"


def about(n: int) -> str:
    """A sample-size estimate rounded to two significant figures: 1234 → "1,200"."""
    if n < 100:
        return str(n)
    scale = 10 ** (int(math.log10(n)) - 1)
    return f"{round(n / scale) * scale:,}"


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _estimate(raw: Any, unit: str) -> Estimate:
    raw = raw if isinstance(raw, Mapping) else {}
    value = _number(raw.get("mean", raw.get("rate", raw.get("value"))))
    ci = raw.get("ci95")
    low, high = (
        (_number(ci[0]), _number(ci[1])) if isinstance(ci, list | tuple) and len(ci) == 2 else (None, None)
    )
    n = int(raw.get("n") or 0)
    text = formatted(value, unit)
    if value is not None and low is not None and high is not None:
        text += f" [{formatted(low, unit)}, {formatted(high, unit)}]"
    return Estimate(value=value, low=low, high=high, n=n, text=text)


def _arm(name: str, raw: Mapping[str, Any], control: str | None) -> ArmRow:
    has_mean = isinstance(raw.get("latency_ms"), Mapping)
    return ArmRow(
        name=name,
        policy=str(raw.get("policy", "")),
        weight=int(raw.get("weight") or 0),
        requests=int(raw.get("requests") or 0),
        is_control=name == control,
        quality=_estimate(raw.get("feedback_score"), "score"),
        cost=_estimate(raw.get("cost_per_request_usd"), "usd"),
        latency=_estimate(raw.get("latency_ms") if has_mean else raw.get("latency_p50_ms"), "ms"),
        latency_is_median=not has_mean,
        error_rate=_estimate(raw.get("error_rate"), "rate"),
    )


def _direction(test: Mapping[str, Any]) -> float:
    """> 0 when the arm's values are larger than the control's, < 0 when smaller, 0 when unknown."""
    difference = _number(test.get("difference")) or 0.0
    if difference == 0.0 and _number(test.get("prob_superiority")) is not None:
        return float(test["prob_superiority"]) - 0.5
    return difference


def verdict(
    metric: Metric, test: Mapping[str, Any] | None, *, arm: str, against: str, have: int
) -> tuple[str, bool, str | None]:
    """(plain verdict, significant?, winning arm) for one metric of one comparison."""
    if test is None or _number(test.get("p_value")) is None:
        return f"not enough data yet (each arm needs at least 2 {metric.samples})", False, None
    p = float(test["p_value"])
    if p < ALPHA:
        direction = _direction(test)
        if direction == 0:
            return f"arms differ on {metric.noun}, {p_text(p)}", True, None
        winner = arm if (direction > 0) == metric.higher_is_better else against
        return f"{winner} better on {metric.noun}, {p_text(p)}", True, winner
    if "needed_per_arm" not in test:  # an analysis from before sample sizes were stored
        return f"not significant ({p_text(p)})", False, None
    needed = test["needed_per_arm"]
    if not isinstance(needed, int):
        return f"no difference seen ({p_text(p)})", False, None
    more = needed - have
    if more <= 0:
        return f"not significant ({p_text(p)}): no clear difference at this sample size", False, None
    if needed > 1_000_000:
        return (
            f"not significant ({p_text(p)}): the difference is too small to detect in practice",
            False,
            None,
        )
    return (
        f"not significant yet ({p_text(p)}), need ~{about(more)} more {metric.samples} per arm",
        False,
        None,
    )


def _difference(metric: Metric, test: Mapping[str, Any] | None) -> str:
    if test is None or _number(test.get("difference")) is None:
        return "–"
    value = float(test["difference"])
    sign = "+" if value > 0 else ""
    prefix = "median " if test.get("test") == "mann_whitney_u" else ""
    return prefix + sign + formatted(value, metric.unit)


def _tests(stats: Mapping[str, Any], arms: Mapping[str, ArmRow]) -> list[TestRow]:
    rows = []
    for comparison in stats.get("comparisons") or []:
        if not isinstance(comparison, Mapping):
            continue
        arm, against = str(comparison.get("arm")), str(comparison.get("against"))
        tests = comparison.get("tests") or {}
        for metric in METRICS:
            test = tests.get(metric.test_key)
            test = test if isinstance(test, Mapping) else None
            have = min(_samples(arms.get(arm), metric), _samples(arms.get(against), metric))
            text, is_significant, winner = verdict(metric, test, arm=arm, against=against, have=have)
            rows.append(
                TestRow(
                    arm=arm,
                    against=against,
                    metric=metric.label,
                    test=TEST_NAMES.get(str((test or {}).get("test")), "–"),
                    p_value=_number((test or {}).get("p_value")),
                    p_text=p_text(_number((test or {}).get("p_value"))),
                    difference=_difference(metric, test),
                    verdict=text,
                    significant=is_significant,
                    winner=winner,
                )
            )
    return rows


def _samples(row: ArmRow | None, metric: Metric) -> int:
    if row is None:
        return 0
    estimate = {"score": row.quality, "usd": row.cost, "ms": row.latency, "rate": row.error_rate}[metric.unit]
    return estimate.n


def _charts(prefix: str, arms: list[ArmRow]) -> list[Chart]:
    charts = []
    for key, title, unit in (
        ("quality", "Quality: mean feedback with 95% CI", "score"),
        ("cost", "Cost per request (USD) with 95% CI", "usd"),
        ("latency", "Latency (ms) with 95% CI", "ms"),
    ):
        estimates = [getattr(a, key) for a in arms]
        if all(e.value is None for e in estimates):
            continue
        if key == "latency" and any(a.latency_is_median for a in arms):
            title = "Latency p50 (ms) with 95% CI"
        charts.append(
            Chart(
                id=f"{prefix}-{key}",
                title=title,
                data={
                    "labels": [a.name for a in arms],
                    "mean": [e.value for e in estimates],
                    "low": [e.low for e in estimates],
                    "high": [e.high for e in estimates],
                    "n": [e.n for e in estimates],
                    "unit": unit,
                },
            )
        )
    return charts


def _split(raw: Any) -> SplitCheck | None:
    if not isinstance(raw, Mapping) or _number(raw.get("p_value")) is None:
        return None
    p = float(raw["p_value"])
    # older analyses tested requests; newer ones the assignment units (users, else API keys)
    units = _number(raw.get("units")) if raw.get("over") == "units" else None
    what = "requests" if units is None else "users (or API keys)"
    over = "" if units is None else f" over {int(units):,} users/keys"
    if p < SRM_ALPHA:
        return SplitCheck(
            ok=False,
            text=f"Sample-ratio mismatch (χ²{over + ',' if over else ''} {p_text(p)}): {what} are not split as the weights "
            "say. Check the assignment before trusting these results.",
        )
    return SplitCheck(
        ok=True,
        text=f"{what[0].upper()}{what[1:]} are split as the weights say (χ² test{over}, {p_text(p)}).",
    )


def experiment_report(stats: Mapping[str, Any] | None, *, chart_prefix: str) -> ExperimentReport | None:
    """The operator's view of one stored analysis; None when no analysis has run yet."""
    if not stats or not isinstance(stats.get("arms"), Mapping):
        return None
    control = stats.get("control")
    arms = [_arm(str(name), raw, control) for name, raw in stats["arms"].items() if isinstance(raw, Mapping)]
    return ExperimentReport(
        computed_at=str(stats.get("computed_at") or ""),
        confidence=float(stats.get("confidence") or 0.95),
        total_requests=int(stats.get("total_requests") or 0),
        control=str(control) if control else None,
        arms=arms,
        tests=_tests(stats, {a.name: a for a in arms}),
        charts=_charts(chart_prefix, arms),
        split=_split(stats.get("split_check")),
        raw_json=json.dumps(stats, indent=2, sort_keys=True),
    )
