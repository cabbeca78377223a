"""The experiments page renders the stored significance analysis for operators (Django test client)."""

from __future__ import annotations

import html
import json
import re
from collections.abc import Callable
from typing import Any

import pytest
from django.test import Client

from feedback.models import Outcome
from feedback.services.feedback import feedback_record
from feedback.services.outcomes import TokenCount, outcome_record
from routing.dashboard.selectors import experiment_stats as dashboard_experiment_stats
from routing.models import ApiKey, Experiment
from routing.services.experiment_stats import experiment_stats_refresh
from routing.services.experiments import experiment_upsert
from routing.services.route import route_decide
from tests.conftest import USER_MESSAGE
from tests.factories import make_api_key, make_policy

# the same small spread in every arm, so the difference between arms is what the tests set
NOISE = (-0.1, 0.0, 0.1, -0.05, 0.05)


@pytest.fixture
def experiment(catalog: Any) -> Experiment:
    make_policy("cheap", strategy="pre_inference", alpha=0.05)
    return experiment_upsert(
        actor="test", name="alpha-test", policy="default", arms=[{"policy": "default"}, {"policy": "cheap"}]
    )


def run_traffic(
    key: ApiKey, users: int, *, score: Callable[[str, int], float], latency: Callable[[str, int], float]
) -> dict[str, int]:
    """Real decisions through the route service, each with an outcome and a rating; counts per arm."""
    counts: dict[str, int] = {}
    for i in range(users):
        row = route_decide(
            messages=USER_MESSAGE(f"Question {i} about caching"), api_key=key, user=f"u{i}"
        ).row
        n = counts[row.arm] = counts.get(row.arm, 0) + 1
        outcome_record(
            decision_id=row.id,
            model=None,
            model_name="small",
            status=Outcome.Status.OK,
            tokens=TokenCount(10, 20, False),
            latency_ms=latency(row.arm, n),
        )
        feedback_record(decision_id=row.id, api_key=key, score=score(row.arm, n))
    return counts


def page_text(client: Client, **headers: Any) -> str:
    response = client.get("/experiments/", **headers)
    assert response.status_code == 200
    return html.unescape(response.content.decode())


def json_script(body: str, element_id: str) -> Any:
    match = re.search(rf'<script id="{element_id}" type="application/json">(.*?)</script>', body, re.S)
    assert match, f"no json_script #{element_id}"
    return json.loads(match.group(1))


def test_a_clear_difference_gets_a_plain_verdict_intervals_and_charts(
    persona: Callable[[str], Client], experiment: Experiment
) -> None:
    key, _ = make_api_key("stats-app")
    counts = run_traffic(
        key,
        60,
        score=lambda arm, n: (0.8 if arm == "default" else 0.3) + NOISE[n % 5],
        latency=lambda arm, n: (100.0 if arm == "default" else 300.0) + n,
    )
    assert set(counts) == {"default", "cheap"}
    experiment_stats_refresh(experiment_id=experiment.pk)
    body = page_text(persona("operator"))
    analysis = body[body.index(f'id="experiment-{experiment.pk}-analysis"') :]
    # per arm: sample size, mean with its interval
    assert f'<td class="num">{counts["cheap"]}</td>' in analysis
    assert re.search(
        rf"0\.8\d\d \[0\.7\d\d, 0\.8\d\d\] <small class=\"muted\">n={counts['default']}", analysis
    )
    assert "Welch t-test" in analysis and "Mann–Whitney U" in analysis
    # plain verdicts: the control rates higher and answers faster, both far beyond chance
    assert "default better on quality, p<0.001" in analysis
    assert "default better on latency, p<0.001" in analysis
    # the charts read their data from json_script tags next to their canvases
    quality = json_script(analysis, f"experiment-{experiment.pk}-quality")
    assert quality["labels"] == ["cheap", "default"] and quality["unit"] == "score"
    assert quality["low"][1] < quality["mean"][1] < quality["high"][1]
    assert quality["mean"][1] == pytest.approx(0.8, abs=0.01) and quality["n"] == [
        counts["cheap"],
        counts["default"],
    ]
    assert f'data-chart="arm_interval" data-source="experiment-{experiment.pk}-latency"' in analysis
    # auditors still get the stored JSON, verbatim
    details = analysis[analysis.index("<details>") : analysis.index("</details>")]
    assert "Raw analysis JSON" in details
    stored = json.loads(details[details.index('<pre class="code">') + 18 : details.index("</pre>")])
    assert stored == Experiment.objects.get(pk=experiment.pk).stats


def test_a_small_difference_says_how_many_more_samples_it_needs(
    persona: Callable[[str], Client], experiment: Experiment
) -> None:
    key, _ = make_api_key("stats-app")
    run_traffic(
        key,
        30,
        score=lambda arm, n: (0.6 if arm == "default" else 0.63) + NOISE[n % 5],
        latency=lambda arm, n: 200.0 + 10 * NOISE[n % 5],
    )
    experiment_stats_refresh(experiment_id=experiment.pk)
    stats = Experiment.objects.get(pk=experiment.pk).stats
    quality_test = stats["comparisons"][0]["tests"]["feedback_score"]
    have = min(stats["arms"][a]["feedback_score"]["n"] for a in ("default", "cheap"))
    assert quality_test["p_value"] > 0.05 and quality_test["needed_per_arm"] > have
    body = page_text(persona("viewer"))
    verdict = re.search(r"not significant yet \(p=([0-9.]+)\), need ~([0-9,]+) more ratings per arm", body)
    assert verdict is not None
    assert float(verdict.group(1)) == pytest.approx(quality_test["p_value"], rel=0.05)
    more = int(verdict.group(2).replace(",", ""))
    assert more == pytest.approx(quality_test["needed_per_arm"] - have, rel=0.05)
    assert "Users (or API keys) are split as the weights say (χ² test over 30 users/keys" in body


def test_before_the_first_analysis_the_page_says_so(
    persona: Callable[[str], Client], experiment: Experiment
) -> None:
    body = page_text(persona("operator"))
    assert "No scheduled significance analysis yet" in body
    assert "Raw analysis JSON" not in body and "arm_interval" not in body


def test_the_polled_partial_and_the_stop_response_carry_the_analysis(
    persona: Callable[[str], Client], experiment: Experiment
) -> None:
    key, _ = make_api_key("stats-app")
    run_traffic(
        key,
        20,
        score=lambda arm, n: (0.9 if arm == "cheap" else 0.4) + NOISE[n % 5],
        latency=lambda arm, n: 150.0 + n,
    )
    experiment_stats_refresh(experiment_id=experiment.pk)
    operator = persona("operator")
    partial = page_text(operator, HTTP_HX_REQUEST="true")
    assert "<html" not in partial and "cheap better on quality" in partial
    stopped = operator.post(f"/experiments/{experiment.pk}/stop", HTTP_HX_REQUEST="true")
    assert stopped.status_code == 200
    fragment = html.unescape(stopped.content.decode())
    assert "cheap better on quality" in fragment and f'id="experiment-{experiment.pk}-quality"' in fragment


def test_the_live_arm_table_counts_only_the_latest_rating_of_each_decision(
    persona: Callable[[str], Client], experiment: Experiment
) -> None:
    key, _ = make_api_key("re-rating-app")
    rows = [
        route_decide(messages=USER_MESSAGE(f"Question {i}"), api_key=key, user=f"u{i}").row for i in range(12)
    ]
    for row in rows:
        feedback_record(decision_id=row.id, api_key=key, score=0.0)
        feedback_record(decision_id=row.id, api_key=key, score=1.0)  # the client changed its mind
    experiment_stats_refresh(experiment_id=experiment.pk)

    live = {a.name: a for a in dashboard_experiment_stats(experiment)}
    stored = Experiment.objects.get(pk=experiment.pk).stats["arms"]
    for arm in ("default", "cheap"):
        rated = sum(1 for r in rows if r.arm == arm)
        assert live[arm].feedback_n == rated == stored[arm]["feedback_score"]["n"]
        if rated:
            assert live[arm].feedback == 1.0 == stored[arm]["feedback_score"]["mean"]
