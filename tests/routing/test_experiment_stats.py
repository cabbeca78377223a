from __future__ import annotations

import io
import math
from typing import Any

import pytest
from django.core.management import call_command

from feedback.models import Outcome
from feedback.services.feedback import feedback_record
from feedback.services.outcomes import TokenCount, outcome_record
from routing.models import ApiKey
from routing.services.experiment_stats import experiment_stats_refresh
from routing.services.experiments import experiment_upsert
from routing.services.route import route_decide
from routing.stats import mean_interval, quantile_interval, t_interval, two_proportion_z, wilson_interval
from tests.conftest import USER_MESSAGE
from tests.factories import make_api_key, make_policy

pytestmark = pytest.mark.django_db


def test_wilson_interval_matches_the_textbook_value() -> None:
    lo, hi = wilson_interval(8, 10) or (0.0, 0.0)
    assert (round(lo, 4), round(hi, 4)) == (0.4902, 0.9433)
    assert wilson_interval(0, 0) is None


def test_quantile_interval_covers_the_quantile_and_widens_with_fewer_samples() -> None:
    wide = quantile_interval([float(i) for i in range(1, 41)], 0.5)
    narrow = quantile_interval([float(i % 40 + 1) for i in range(400)], 0.5)
    assert wide["ci95"][0] <= wide["value"] <= wide["ci95"][1]
    assert narrow["ci95"][1] - narrow["ci95"][0] < wide["ci95"][1] - wide["ci95"][0]
    assert quantile_interval([1.0, 2.0], 0.95)["ci95"] is None  # too few samples to say


def test_mean_interval_and_two_proportion_test() -> None:
    interval = mean_interval([1.0, 2.0, 3.0, 4.0])
    assert interval["mean"] == 2.5 and interval["ci95"][0] < 2.5 < interval["ci95"][1]
    test = two_proportion_z(10, 100, 30, 100)
    assert test is not None and test["p_value"] < 0.001 and math.isclose(test["difference"], 0.2)


def _traffic(key: ApiKey, users: int) -> dict[str, list[str]]:
    by_arm: dict[str, list[str]] = {}
    for i in range(users):
        result = route_decide(
            messages=USER_MESSAGE(f"Question {i} about databases"), api_key=key, user=f"u{i}"
        )
        by_arm.setdefault(result.row.arm, []).append(str(result.row.id))
    return by_arm


@pytest.fixture
def experiment(catalog: Any) -> Any:
    make_policy("cheap", strategy="pre_inference", alpha=0.05)
    return experiment_upsert(
        actor="test", name="alpha-test", policy="default", arms=[{"policy": "default"}, {"policy": "cheap"}]
    )


def test_stats_per_arm_have_intervals_and_a_significance_test(experiment: Any) -> None:
    key, _ = make_api_key("stats-app")
    by_arm = _traffic(key, 60)
    assert set(by_arm) == {"default", "cheap"}
    for arm, ids in by_arm.items():
        for n, decision_id in enumerate(ids):
            failed = arm == "cheap" and n % 4 == 0
            outcome_record(
                decision_id=decision_id,
                model=None,
                model_name="small",
                status=Outcome.Status.ERROR if failed else Outcome.Status.OK,
                tokens=TokenCount(10, 20, False),
                latency_ms=100.0 + n if arm == "default" else 300.0 + n,
            )
            feedback_record(decision_id=decision_id, api_key=key, score=0.9 if arm == "default" else 0.2)
    result = experiment_stats_refresh(experiment_id=experiment.pk)
    assert result.updated
    stats = result.stats
    assert stats["control"] == "default" and stats["total_requests"] == 60
    default, cheap = stats["arms"]["default"], stats["arms"]["cheap"]
    assert default["requests"] == len(by_arm["default"]) and cheap["requests"] == len(by_arm["cheap"])
    assert math.isclose(default["feedback_score"]["mean"], 0.9)
    assert cheap["error_rate"]["count"] == math.ceil(len(by_arm["cheap"]) / 4)
    lo, hi = cheap["error_rate"]["ci95"]
    assert lo < cheap["error_rate"]["rate"] < hi
    assert default["latency_p50_ms"]["value"] < cheap["latency_p50_ms"]["value"]
    assert default["latency_p95_ms"]["ci95"] is not None or default["latency_p95_ms"]["n"] < 30
    (comparison,) = stats["comparisons"]
    assert comparison["arm"] == "cheap" and comparison["against"] == "default"
    assert {"feedback_score", "latency_ms", "error_rate"} <= set(comparison["significant"])
    assert stats["split_check"]["p_value"] > 0.001  # the split matches the 50/50 weights
    # the mean latency with its interval, and the rank test's direction (cheap is slower)
    latency = cheap["latency_ms"]
    assert latency["ci95"][0] < latency["mean"] < latency["ci95"][1] and latency["sd"] > 0
    assert comparison["tests"]["latency_ms"]["prob_superiority"] > 0.5
    assert comparison["tests"]["latency_ms"]["difference"] > 0
    # every test carries the sample size per arm that would detect its observed difference
    assert comparison["tests"]["error_rate"]["needed_per_arm"] > 0
    # 0.9 vs 0.2 with (almost) no spread: a couple of ratings per arm would already show it
    assert (comparison["tests"]["feedback_score"]["needed_per_arm"] or 0) <= 2


def test_refreshing_twice_does_the_work_once_until_new_data_arrives(experiment: Any) -> None:
    key, _ = make_api_key("stats-app")
    by_arm = _traffic(key, 6)
    first = experiment_stats_refresh(experiment_id=experiment.pk)
    experiment.refresh_from_db()
    stamp = experiment.stats_updated_at
    second = experiment_stats_refresh(experiment_id=experiment.pk)
    experiment.refresh_from_db()
    assert first.updated and not second.updated and experiment.stats_updated_at == stamp
    decision_id = next(iter(by_arm.values()))[0]
    feedback_record(decision_id=decision_id, api_key=key, thumbs="up")
    third = experiment_stats_refresh(experiment_id=experiment.pk)
    assert third.updated
    assert sum(arm["feedback_score"]["n"] for arm in third.stats["arms"].values()) == 1


def test_the_dashboard_and_the_command_give_the_same_interval_for_a_mean() -> None:
    """The experiments page computes from SQL aggregates (mean, sample sd, n), experiment_stats from
    the values: the same Student t interval (not a normal one that is too narrow at small n)."""
    values = [0.2, 0.9, 0.5, 0.7, 1.0, 0.4, 0.6, 0.8, 0.75]
    from_values = mean_interval(values)
    from_summary = t_interval(from_values["mean"], from_values["sd"], len(values))
    assert from_summary is not None and list(from_summary) == pytest.approx(from_values["ci95"])
    assert t_interval(0.5, 0.1, 1) is None and t_interval(None, 0.1, 5) is None


def test_intervals_stay_within_the_values_a_metric_can_take() -> None:
    scores = [1.0, 1.0, 0.2, 1.0, 0.1]  # feedback scores in [0, 1], few and spread
    assert mean_interval(scores)["ci95"][1] > 1.0  # unclipped, the t interval leaves the range
    low, high = mean_interval(scores, bounds=(0.0, 1.0))["ci95"]
    assert low >= 0.0 and high == 1.0
    none, every = wilson_interval(0, 7), wilson_interval(7, 7)
    assert none is not None and none[0] == 0.0 and none[1] == pytest.approx(0.354, abs=0.01)
    assert every is not None and every[1] == 1.0


def test_the_split_check_counts_users_not_requests(experiment: Any) -> None:
    """Assignment is per user: a busy user's requests all land in one arm and say nothing about the split."""
    key, _ = make_api_key("busy-app")
    by_arm = _traffic(key, 40)
    for i in range(200):  # one heavy user (a batch job) sends most of the traffic
        route_decide(messages=USER_MESSAGE(f"Batch item {i}"), api_key=key, user="batch-job")
    stats = experiment_stats_refresh(experiment_id=experiment.pk).stats
    arms = stats["arms"]
    assert arms["default"]["units"] + arms["cheap"]["units"] == 41
    heavy = max(arms.values(), key=lambda a: a["requests"])
    assert heavy["requests"] >= 200  # 240 requests split about 220 / 20: not what the weights say…
    check = stats["split_check"]
    assert check["over"] == "units" and check["units"] == 41
    assert check["p_value"] > 0.01  # …yet 41 users split as the weights say: no false alarm
    assert {len(by_arm["default"]), len(by_arm["cheap"])} != {0}


def test_the_split_check_still_catches_a_broken_assignment(experiment: Any) -> None:
    key, _ = make_api_key("skewed-app")
    _traffic(key, 60)
    # a bug sends every newcomer to the control arm
    from routing.models import DecisionLog

    DecisionLog.objects.filter(experiment="alpha-test").update(arm="default")
    stats = experiment_stats_refresh(experiment_id=experiment.pk).stats
    assert stats["split_check"]["units"] == 60 and stats["split_check"]["p_value"] < 0.001


def test_the_clustered_test_is_welchs_when_every_unit_sent_one_sample() -> None:
    from routing.stats import _clustered_mean, clustered_welch_t, welch_t_test

    a, b = [0.1, 0.4, 0.35, 0.8, 0.5], [0.6, 0.9, 0.7, 0.65, 0.95, 0.8]
    mean, variance, k = _clustered_mean(a, [f"u{i}" for i in range(5)])
    assert k == 5 and math.isclose(mean, sum(a) / 5)
    assert math.isclose(variance, float(__import__("numpy").var(a, ddof=1)) / 5)  # s²/n
    distinct = clustered_welch_t(a, [f"a{i}" for i in range(5)], b, [f"b{i}" for i in range(6)])
    assert distinct == welch_t_test(a, b)


def test_one_busy_user_does_not_make_a_difference_significant() -> None:
    """Arm b's users score like arm a's, but one of them sent 200 requests, all rated high."""
    from routing.stats import clustered_welch_t, welch_t_test

    rng = __import__("numpy").random.default_rng(0)
    a = list(rng.uniform(0.3, 0.8, 40))
    units_a = [f"a{i}" for i in range(40)]
    b = list(rng.uniform(0.3, 0.8, 39)) + [0.9] * 200
    units_b = [f"b{i}" for i in range(39)] + ["busy"] * 200
    plain = welch_t_test(a, b)
    robust = clustered_welch_t(a, units_a, b, units_b)
    assert plain is not None and plain["p_value"] < 1e-6  # 240 "independent" samples: looks certain
    assert robust is not None and robust["test"] == "welch_t_clustered" and robust["units"] == [40, 40]
    assert robust["p_value"] > 0.01 and robust["design_effect"] > 5


def test_experiment_tests_count_users_not_requests(experiment: Any) -> None:
    key, _ = make_api_key("busy-app")
    ids: dict[str, list[str]] = {}
    for i in range(40):  # each user sends 5 requests: all land in the user's arm
        for j in range(5):
            row = route_decide(messages=USER_MESSAGE(f"Q{i}.{j} on indexes"), api_key=key, user=f"u{i}").row
            ids.setdefault(row.arm, []).append(str(row.id))
    for decision_ids in ids.values():
        for n, decision_id in enumerate(decision_ids):
            feedback_record(decision_id=decision_id, api_key=key, score=[0.2, 0.5, 0.9][n % 3])
    stats = experiment_stats_refresh(experiment_id=experiment.pk).stats
    tests = stats["comparisons"][0]["tests"]
    assert tests["feedback_score"]["test"] == "welch_t_clustered"
    assert sum(tests["feedback_score"]["units"]) == 40
    assert tests["feedback_score_ranks"]["over"] == "units"


def test_the_command_prints_an_experiment_without_traffic_yet(experiment: Any) -> None:
    out = io.StringIO()
    call_command("experiment_stats", "alpha-test", stdout=out)
    assert "alpha-test: 0 requests (control default)" in out.getvalue()
    assert "share – [–]" in out.getvalue()
