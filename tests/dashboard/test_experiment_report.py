"""The stored analysis put into words (pure: plain dicts in, dataclasses out) and the sample sizes behind it."""

from __future__ import annotations

import math
from typing import Any

from routing.dashboard.experiment_report import METRICS, about, experiment_report, p_text, verdict
from routing.stats import needed_per_arm_means, needed_per_arm_proportions

QUALITY, QUALITY_RANKS, COST, LATENCY, ERRORS = METRICS


def test_needed_per_arm_for_means_matches_the_textbook_formula() -> None:
    unit = [v * math.sqrt(99 / 100) for v in [-1.0, 1.0] * 50]  # sample variance exactly 1
    assert needed_per_arm_means(unit, [v + 0.5 for v in unit]) == 63  # 2·(1.96+0.84)²/0.5² = 62.8
    assert needed_per_arm_means(unit, unit) is None  # no difference: nothing to detect
    assert needed_per_arm_means([1.0], [2.0, 3.0]) is None


def test_needed_per_arm_for_proportions_matches_the_textbook_value() -> None:
    assert needed_per_arm_proportions(10, 100, 20, 100) == 199  # 10% vs 20%, α 0.05, power 0.8
    assert needed_per_arm_proportions(5, 50, 5, 50) is None


def test_p_values_and_sample_sizes_read_plainly() -> None:
    assert (p_text(0.0123), p_text(0.0004), p_text(None)) == ("p=0.012", "p<0.001", "–")
    assert (about(43), about(1234), about(98_765)) == ("43", "1,200", "99,000")


def test_the_better_arm_depends_on_which_direction_is_good() -> None:
    higher = {"test": "welch_t", "p_value": 0.01, "difference": 0.2}
    assert verdict(QUALITY, higher, arm="B", against="A", have=50)[:2] == (
        "B better on quality, p=0.01",
        True,
    )
    assert verdict(COST, higher, arm="B", against="A", have=50)[0] == "A better on cost, p=0.01"
    cheaper = {**higher, "difference": -0.001}
    assert verdict(COST, cheaper, arm="B", against="A", have=50)[2] == "B"
    more_errors = {"test": "two_proportion_z", "p_value": 0.002, "difference": 0.05}
    assert verdict(ERRORS, more_errors, arm="B", against="A", have=50)[0] == "A better on error rate, p=0.002"


def test_a_rank_test_with_equal_medians_takes_its_direction_from_the_ranks() -> None:
    test = {"test": "mann_whitney_u", "p_value": 0.03, "difference": 0.0, "prob_superiority": 0.3}
    assert verdict(LATENCY, test, arm="B", against="A", have=40)[0] == "B better on latency, p=0.03"


def test_not_significant_says_how_many_more_samples_per_arm() -> None:
    test = {"test": "welch_t", "p_value": 0.31, "difference": 0.02, "needed_per_arm": 1234}
    text, significant, winner = verdict(QUALITY, test, arm="B", against="A", have=34)
    assert text == "not significant yet (p=0.31), need ~1,200 more ratings per arm"
    assert not significant and winner is None
    enough = verdict(QUALITY, test, arm="B", against="A", have=1300)[0]
    assert enough == "not significant (p=0.31): no clear difference at this sample size"
    hopeless = verdict(QUALITY, {**test, "needed_per_arm": 5_000_000}, arm="B", against="A", have=34)[0]
    assert "too small to detect" in hopeless
    assert verdict(QUALITY, None, arm="B", against="A", have=1)[0].startswith("not enough data yet")


def stats(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "confidence": 0.95,
        "control": "A",
        "total_requests": 200,
        "computed_at": "2026-11-29T10:00:00+00:00",
        "arms": {
            "A": {
                "policy": "default",
                "weight": 50,
                "requests": 100,
                "feedback_score": {"n": 80, "mean": 0.7, "ci95": [0.65, 0.75]},
                "cost_per_request_usd": {"n": 100, "mean": 0.00123, "ci95": [0.0011, 0.00136]},
                "latency_p50_ms": {"n": 100, "value": 420.0, "ci95": [400.0, 450.0]},
                "error_rate": {"n": 100, "count": 2, "rate": 0.02, "ci95": [0.0055, 0.07]},
            },
            "B": {
                "policy": "cheap",
                "weight": 50,
                "requests": 100,
                "feedback_score": {"n": 75, "mean": 0.6, "ci95": [0.55, 0.65]},
                "cost_per_request_usd": {"n": 100, "mean": 0.0004, "ci95": [0.00035, 0.00045]},
                "latency_p50_ms": {"n": 100, "value": 300.0, "ci95": [280.0, 320.0]},
                "error_rate": {"n": 100, "count": 3, "rate": 0.03, "ci95": [0.01, 0.085]},
            },
        },
        "comparisons": [
            {
                "arm": "B",
                "against": "A",
                "tests": {
                    "feedback_score": {"test": "welch_t", "p_value": 0.004, "difference": -0.1},
                    "cost_per_request_usd": {"test": "welch_t", "p_value": 1e-9, "difference": -0.00083},
                    "latency_ms": {"test": "mann_whitney_u", "p_value": 0.2, "statistic": 4000.0},
                    "error_rate": None,
                },
            }
        ],
        "split_check": {"test": "chi_square_srm", "statistic": 0.0, "p_value": 1.0},
    }
    return {**base, **overrides}


def test_an_analysis_from_before_latency_means_still_renders_with_the_median() -> None:
    report = experiment_report(stats(), chart_prefix="experiment-7")
    assert report is not None and report.control == "A"
    a, b = report.arms
    assert a.is_control and a.latency_is_median and a.latency.text == "420 ms [400 ms, 450 ms]"
    assert b.cost.text == "$0.000400 [$0.000350, $0.000450]" and b.error_rate.text == "3.0% [1.0%, 8.5%]"
    verdicts = {t.metric: t.verdict for t in report.tests}
    assert verdicts["Quality (mean feedback)"] == "A better on quality, p=0.004"
    assert verdicts["Cost per request"] == "B better on cost, p<0.001"
    assert verdicts["Latency"] == "not significant (p=0.2)"  # stored before sample sizes were
    assert verdicts["Error rate"].startswith("not enough data yet")
    assert [c.id for c in report.charts] == [
        "experiment-7-quality",
        "experiment-7-cost",
        "experiment-7-latency",
    ]
    assert report.charts[2].title.startswith("Latency p50") and report.charts[0].data["mean"] == [0.7, 0.6]
    assert report.split is not None and report.split.ok
    assert '"control": "A"' in report.raw_json


def test_a_sample_ratio_mismatch_is_flagged() -> None:
    report = experiment_report(
        stats(split_check={"test": "chi_square_srm", "statistic": 30.0, "p_value": 4e-8}), chart_prefix="x"
    )
    assert report is not None and report.split is not None and not report.split.ok
    assert report.split.text.startswith("Sample-ratio mismatch (χ² p<0.001)")


def test_no_analysis_yet_is_none() -> None:
    assert experiment_report({}, chart_prefix="x") is None
    assert experiment_report(None, chart_prefix="x") is None


def test_the_split_check_says_it_counted_users() -> None:
    check = {"test": "chi_square_srm", "over": "units", "units": 1234, "statistic": 0.2, "p_value": 0.65}
    report = experiment_report(stats(split_check=check), chart_prefix="x")
    assert report is not None and report.split is not None and report.split.ok
    assert (
        report.split.text
        == "Users (or API keys) are split as the weights say (χ² test over 1,234 users/keys, p=0.65)."
    )
    bad = experiment_report(stats(split_check={**check, "p_value": 1e-5}), chart_prefix="x")
    assert bad is not None and bad.split is not None and not bad.split.ok
    assert bad.split.text.startswith(
        "Sample-ratio mismatch (χ² over 1,234 users/keys, p<0.001): users (or API keys)"
    )
