"""Operators promote the shadow predictor, or roll back to an older version, from the predictor page."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from django.test import Client

from feedback.models import PredictorVersion, TrainingRunStatus
from feedback.services.retraining import retraining_execute, retraining_request
from routing.predictor.registry import active_predictor
from tests.feedback.learning import FAST_FIT, make_eval_data


def _run(**params: Any) -> Any:
    run = retraining_request(actor="test", trigger="test", params={"fit": FAST_FIT, **params})
    return retraining_execute(run_id=run.pk)


@pytest.fixture
def champion_and_shadow(catalog: Any) -> tuple[PredictorVersion, PredictorVersion]:
    make_eval_data(30)
    first = _run()
    assert first.status == TrainingRunStatus.PROMOTED
    second = _run(margin=1.0)  # no challenger beats the champion by a whole Brier point: it shadows
    assert second.status == TrainingRunStatus.REJECTED
    shadow = PredictorVersion.objects.get(pk=second.challenger_id)
    assert "shadow" in shadow.metadata
    return PredictorVersion.objects.get(pk=first.challenger_id), shadow


def test_an_operator_promotes_the_shadow_from_the_predictor_page(
    persona: Callable[[str], Client],
    champion_and_shadow: tuple[PredictorVersion, PredictorVersion],
    django_capture_on_commit_callbacks: Any,
) -> None:
    champion, shadow = champion_and_shadow
    operator = persona("operator")
    page = operator.get("/predictor/").content.decode()
    assert f'action="/predictor/versions/{shadow.pk}/activate"' in page  # on the shadow card

    with django_capture_on_commit_callbacks(execute=True):  # the broadcast to every process
        response = operator.post(f"/predictor/versions/{shadow.pk}/activate")
    assert response.status_code == 302 and response["Location"] == f"/predictor/?version={shadow.name}"
    shadow.refresh_from_db()
    champion.refresh_from_db()
    assert shadow.is_active and not champion.is_active
    assert "shadow" not in shadow.metadata  # the champion no longer scores every request twice
    assert not PredictorVersion.objects.filter(metadata__shadow__isnull=False).exists()
    serving = active_predictor()
    assert serving is not None and serving.version == shadow.name

    # and back: roll back to the previous champion, with HTMX
    response = operator.post(f"/predictor/versions/{champion.pk}/activate", HTTP_HX_REQUEST="true")
    assert response.status_code == 200 and response["HX-Redirect"] == f"/predictor/?version={champion.name}"
    assert PredictorVersion.objects.get(is_active=True).pk == champion.pk


def test_the_activate_button_is_for_operators_only(
    persona: Callable[[str], Client], champion_and_shadow: tuple[PredictorVersion, PredictorVersion]
) -> None:
    _, shadow = champion_and_shadow
    for name in ("auditor", "viewer"):
        client = persona(name)
        assert "/activate" not in client.get("/predictor/").content.decode()
        assert client.post(f"/predictor/versions/{shadow.pk}/activate").status_code == 403
    assert not PredictorVersion.objects.get(pk=shadow.pk).is_active


def test_an_unknown_version_is_a_404(persona: Callable[[str], Client], catalog: Any) -> None:
    response = persona("operator").post("/predictor/versions/424242/activate")
    assert response.status_code == 404


def test_the_live_calibration_plot_uses_each_decisions_latest_rating(
    champion_and_shadow: tuple[PredictorVersion, PredictorVersion], django_capture_on_commit_callbacks: Any
) -> None:
    from feedback.services.feedback import feedback_record
    from routing.dashboard.selectors import live_calibration
    from routing.predictor.registry import announce_active
    from routing.services.route import route_decide
    from tests.conftest import USER_MESSAGE
    from tests.factories import make_api_key

    champion, _ = champion_and_shadow
    announce_active(champion.pk)
    key, _ = make_api_key("rating-app")
    for i in range(10):
        row = route_decide(messages=USER_MESSAGE(f"Question {i}"), api_key=key).row
        assert row.predictor_version == champion.name
        feedback_record(decision_id=row.id, api_key=key, score=0.0)
        feedback_record(decision_id=row.id, api_key=key, score=1.0)  # re-rated: this one counts
    bins = live_calibration(champion.name)
    assert sum(b["count"] for b in bins) == 10
    assert all(b["observed"] == 1.0 for b in bins)


def test_the_metrics_table_shows_counts_as_whole_numbers(
    persona: Callable[[str], Client], champion_and_shadow: tuple[PredictorVersion, PredictorVersion]
) -> None:
    champion, _ = champion_and_shadow
    examples = int(champion.metrics["examples"])
    page = persona("viewer").get(f"/predictor/?version={champion.name}").content.decode()
    assert f'<td>examples</td><td class="num">{examples}</td>' in page  # not 526.0000
    brier = f"{champion.metrics['brier']:.4f}"
    assert f'<td>brier</td><td class="num">{brier}</td>' in page
