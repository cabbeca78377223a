from __future__ import annotations

from io import StringIO
from typing import Any

import pytest
from django.core.management import CommandError, call_command
from django.template.loader import render_to_string

from feedback.models import PredictorVersion, TrainingRun, TrainingRunStatus
from feedback.services.feedback import feedback_record
from feedback.services.live_data import training_data
from feedback.services.retraining import retraining_execute, retraining_request
from feedback.services.shadow import shadow_reset, shadow_summary, shadow_summary_refresh
from routing.dashboard.selectors import predictor_page
from routing.features import extract_prompt_features
from routing.models import ApiKey
from routing.predictor.artifact import unpack
from routing.selectors import model_specs
from routing.services.route import route_decide
from tests.conftest import USER_MESSAGE
from tests.factories import make_api_key
from tests.feedback.learning import CODE, FAST_FIT, make_eval_data

pytestmark = pytest.mark.django_db


def _run(**params: Any) -> TrainingRun:
    run = retraining_request(actor="test", trigger="test", params={"fit": FAST_FIT, **params})
    done = retraining_execute(run_id=run.pk)
    assert done is not None
    return done


def _gap(version: PredictorVersion) -> float:
    """Predicted quality of `small` minus `large` on an unseen code prompt."""
    predictor = unpack(bytes(version.artifact), version=version.name)
    specs = {s.name: s for s in model_specs()}
    small, large = predictor.predict(
        extract_prompt_features(CODE.format(i=999)), [specs["small"], specs["large"]]
    )
    return small.quality - large.quality


def _route_with_feedback(key: ApiKey, model: str, score: float, n: int) -> None:
    for i in range(n):
        result = route_decide(messages=USER_MESSAGE(CODE.format(i=1000 + i)), api_key=key, models=[model])
        assert result.row.chosen_model == model
        feedback_record(decision_id=result.row.id, api_key=key, score=score)


def test_the_first_run_promotes_and_records_counts_metrics_and_duration(catalog: Any) -> None:
    make_eval_data()
    run = _run()
    assert run.status == TrainingRunStatus.PROMOTED, run.error
    assert run.challenger is not None and run.challenger.is_active and run.champion is None
    assert run.data_counts["imported_examples"] == 240 and run.data_counts["live_examples"] == 0
    assert run.data_counts["holdout_imported"] > 0
    assert 0.0 <= run.metrics["challenger"]["brier"] <= 1.0 and run.metrics["champion"] == {}
    assert run.challenger.metrics == run.metrics["challenger"]  # the version page shows them
    assert run.metrics["duration_s"] > 0
    assert run.progress == 1.0 and run.started_at and run.finished_at


def test_feedback_posted_for_decisions_changes_the_next_retrained_predictor(catalog: Any) -> None:
    make_eval_data()
    first = _run()
    assert first.challenger is not None
    key, _ = make_api_key("app")
    # live users find `small` perfect on code and `large` useless: the opposite of the imported data
    _route_with_feedback(key, "small", 1.0, 30)
    _route_with_feedback(key, "large", 0.0, 30)
    data = training_data()
    assert data.counts["live_examples"] == 60
    assert {e.example.model for e in data.live} == {"small", "large"}
    second = _run(weights={"feedback": 5.0}, margin=-1.0)
    assert second.status == TrainingRunStatus.PROMOTED, second.error
    assert second.data_counts["train_live"] + second.data_counts["holdout_live"] == 60
    assert second.challenger is not None and second.champion == first.challenger
    assert _gap(second.challenger) > _gap(first.challenger) + 0.2


def test_the_same_run_executed_twice_does_the_work_once(catalog: Any) -> None:
    make_eval_data(10)
    run = retraining_request(actor="test", trigger="test", params={"fit": FAST_FIT})
    assert retraining_request(actor="test", trigger="test").pk == run.pk  # one open run at a time
    retraining_execute(run_id=run.pk)
    again = retraining_execute(run_id=run.pk)
    assert again is not None and again.status == TrainingRunStatus.PROMOTED
    assert retraining_execute(run_id=run.pk + 1000) is None  # a stale message for a missing run
    assert PredictorVersion.objects.count() == 1 and TrainingRun.objects.count() == 1


def test_a_challenger_that_is_not_better_by_the_margin_is_kept_as_shadow_and_compared(catalog: Any) -> None:
    make_eval_data(15)
    champion = _run().challenger
    rejected = _run(margin=1.0, seed=1)
    assert rejected.status == TrainingRunStatus.REJECTED and "not promoted" in rejected.metrics["decision"]
    assert rejected.champion == champion and rejected.challenger is not None
    assert rejected.metrics["champion"]["examples"] == rejected.metrics["challenger"]["examples"] > 0
    assert PredictorVersion.objects.get(is_active=True) == champion
    shadow_reset()
    key, _ = make_api_key("app")
    result = route_decide(messages=USER_MESSAGE(CODE.format(i=5)), api_key=key)
    shadow = result.row.explanation["shadow"]
    assert shadow["version"] == rejected.challenger.name and shadow["would_choose"] in {
        "small",
        "medium",
        "large",
    }
    assert set(shadow["quality"]) == {"small", "medium", "large"}
    feedback_record(decision_id=result.row.id, api_key=key, thumbs="up")
    summary = shadow_summary(version_id=rejected.challenger.pk)
    assert summary["decisions_scored"] == 1 and summary["with_feedback"] == 1
    assert summary["champion_brier"] is not None and summary["shadow_brier"] is not None
    # the periodic task stores it where the predictor page shows it
    shadow_summary_refresh()
    page = predictor_page()
    assert page.shadow is not None and page.shadow.name == rejected.challenger.name
    assert page.shadow_summary["with_feedback"] == 1
    html = render_to_string("dashboard/predictor.html", {"data": page})
    assert f"Shadow: {rejected.challenger.name}" in html and "with feedback" in html


def test_a_run_without_any_data_fails_with_the_reason(catalog: Any) -> None:
    run = _run()
    assert run.status == TrainingRunStatus.FAILED
    assert "no training data" in run.error and run.finished_at is not None


def test_requesting_a_run_enqueues_it_on_commit(
    catalog: Any, django_capture_on_commit_callbacks: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from scope_site.celery import app

    monkeypatch.setitem(app.conf, "task_always_eager", True)  # the real broker path: test_retraining_worker
    make_eval_data(10)
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        run = retraining_request(actor="test", trigger="test", params={"fit": FAST_FIT})
    assert callbacks  # eager Celery here: the task ran when the transaction committed
    run.refresh_from_db()
    assert run.status == TrainingRunStatus.PROMOTED


@pytest.mark.django_db(transaction=True)
def test_with_eager_celery_the_requested_run_comes_back_finished(
    catalog: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`make run`: the task runs at commit, inside the request; the card must not say 'queued'."""
    from scope_site.celery import app

    monkeypatch.setitem(app.conf, "task_always_eager", True)
    make_eval_data(10)
    run = retraining_request(actor="test", trigger="test", params={"fit": FAST_FIT})
    assert run.status == TrainingRunStatus.PROMOTED and run.progress == 1.0


def test_the_held_out_set_is_the_champions_own_held_out_when_its_split_is_known(catalog: Any) -> None:
    from feedback.services.retraining import split_for_comparison
    from feedback.services.training import split_examples

    make_eval_data(20)
    data = training_data()
    champion = PredictorVersion(
        name="external", metadata={"lineage": {"seed": 3, "holdout_share": 0.25, "sources": {"unit": 120}}}
    )
    _, holdout, counts = split_for_comparison(data, 0.2, champion)
    raw = [e for e in data.imported if e.source == "eval:unit"]
    _, champion_holdout = split_examples(raw, seed=3, holdout_share=0.25)
    assert {e.prompt_key for e in holdout} == {e.prompt_key for e in champion_holdout}
    assert counts["holdout_rule"].startswith("champion split")


def test_a_champion_is_not_replaced_on_a_handful_of_held_out_examples(catalog: Any, settings: Any) -> None:
    make_eval_data()
    first = _run()
    assert first.status == TrainingRunStatus.PROMOTED
    held_out = first.metrics["challenger"]["examples"]
    assert f"{held_out} held-out examples" in first.progress_message
    assert "the best constant guess scores" in first.progress_message  # how good "promoted" was
    settings.SCOPE_RETRAIN_MIN_HELDOUT = held_out + 1
    second = _run(margin=-1.0)  # it would win on any score: the sample size alone refuses it
    assert second.status == TrainingRunStatus.REJECTED
    assert f"fewer than the {held_out + 1} a verdict needs" in second.progress_message


def test_a_running_run_whose_worker_was_lost_stops_blocking_retraining(catalog: Any, settings: Any) -> None:
    from datetime import timedelta

    from django.utils import timezone

    settings.SCOPE_RETRAIN_STALE_AFTER_S = 900
    make_eval_data(10)
    lost = retraining_request(actor="test", trigger="test", params={"fit": FAST_FIT})
    # the worker claimed it, wrote some progress, then was killed (SIGKILL, host restart)
    TrainingRun.objects.filter(pk=lost.pk).update(
        status=TrainingRunStatus.RUNNING,
        started_at=timezone.now() - timedelta(seconds=1000),
        heartbeat_at=timezone.now() - timedelta(seconds=899),
        progress=0.25,
    )
    assert (
        retraining_request(actor="test", trigger="test").pk == lost.pk
    )  # still within the stale time: it may be alive

    TrainingRun.objects.filter(pk=lost.pk).update(heartbeat_at=timezone.now() - timedelta(seconds=901))
    fresh = retraining_request(actor="test", trigger="test", params={"fit": FAST_FIT})
    assert fresh.pk != lost.pk and fresh.status == TrainingRunStatus.QUEUED
    lost.refresh_from_db()
    assert lost.status == TrainingRunStatus.FAILED and lost.finished_at is not None
    assert "no progress for over 900 s" in lost.error

    redelivered = retraining_execute(run_id=lost.pk)  # its message delivered again: a no-op
    assert redelivered is not None and redelivered.status == TrainingRunStatus.FAILED
    done = retraining_execute(run_id=fresh.pk)
    assert done is not None and done.status == TrainingRunStatus.PROMOTED


def test_progress_writes_are_the_runs_heartbeat(catalog: Any) -> None:
    make_eval_data(10)
    run = _run()
    assert run.heartbeat_at is not None and run.started_at is not None
    assert run.heartbeat_at >= run.started_at


def test_a_run_still_queued_after_the_stale_time_is_enqueued_again(
    catalog: Any, settings: Any, django_capture_on_commit_callbacks: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from datetime import timedelta

    from django.utils import timezone

    from scope_site.celery import app

    settings.SCOPE_RETRAIN_STALE_AFTER_S = 900
    make_eval_data(10)
    queued = retraining_request(
        actor="test", trigger="test", params={"fit": FAST_FIT}
    )  # its message never arrived
    TrainingRun.objects.filter(pk=queued.pk).update(created_at=timezone.now() - timedelta(seconds=901))
    monkeypatch.setitem(app.conf, "task_always_eager", True)
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        again = retraining_request(actor="test", trigger="test")
    assert again.pk == queued.pk and callbacks
    again.refresh_from_db()
    assert again.status == TrainingRunStatus.PROMOTED and TrainingRun.objects.count() == 1


def test_the_retrain_command_follows_a_run_a_worker_already_has_to_its_end(
    catalog: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from io import StringIO

    from django.core.management import call_command
    from django.utils import timezone

    from feedback.management.commands import retrain

    busy = TrainingRun.objects.create(
        status=TrainingRunStatus.RUNNING, trigger="schedule", started_at=timezone.now(),
        heartbeat_at=timezone.now(), progress=0.5, progress_message="quality model 1/3",
    )  # fmt: skip

    def worker_finishes(seconds: float) -> None:  # the clock: the worker ends the run meanwhile
        TrainingRun.objects.filter(pk=busy.pk).update(
            status=TrainingRunStatus.REJECTED, progress=1.0, metrics={"decision": "not promoted: …"}
        )

    monkeypatch.setattr(retrain, "sleep", worker_finishes)
    out, err = StringIO(), StringIO()
    call_command("retrain", "--margin", "0.5", stdout=out, stderr=err)
    assert f"training run {busy.pk} (schedule) was already running" in err.getvalue()
    assert "the options given here were not used" in err.getvalue()
    assert f"training run {busy.pk}: rejected" in out.getvalue() and "not promoted" in out.getvalue()
    assert TrainingRun.objects.count() == 1


def test_the_retrain_command_stops_waiting_for_a_run_whose_worker_was_lost(
    catalog: Any, monkeypatch: pytest.MonkeyPatch, settings: Any
) -> None:
    from datetime import timedelta

    from django.core.management import CommandError, call_command
    from django.utils import timezone

    from feedback.management.commands import retrain

    settings.SCOPE_RETRAIN_STALE_AFTER_S = 900
    busy = TrainingRun.objects.create(
        status=TrainingRunStatus.RUNNING,
        trigger="manual",
        started_at=timezone.now(),
        heartbeat_at=timezone.now(),
    )

    def time_passes(seconds: float) -> None:
        TrainingRun.objects.filter(pk=busy.pk).update(heartbeat_at=timezone.now() - timedelta(seconds=901))

    monkeypatch.setattr(retrain, "sleep", time_passes)
    with pytest.raises(CommandError, match="stopped making progress"):
        call_command("retrain")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--margin", "nan"], "margin must be a finite number"),
        (["--margin", "inf"], "margin must be a finite number"),
        (["--weights", '{"feedback": -1}'], "weights must map sources to numbers >= 0"),
        (["--eval-source", "nope"], "no imported outcomes for source 'nope'"),
    ],
)
def test_retrain_refuses_parameters_that_would_fail_or_invert_the_run(
    options: list[str], message: str
) -> None:
    with pytest.raises(CommandError, match=message):
        call_command("retrain", *options, stdout=StringIO())
    assert not TrainingRun.objects.exists()
