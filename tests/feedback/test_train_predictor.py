from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from django.core.management import CommandError, call_command
from django.db import IntegrityError, connection, transaction
from django.db.models.signals import pre_save
from django.utils import timezone

from feedback.models import PredictorVersion, TrainingRun, TrainingRunStatus
from feedback.services.alpha_calibration import policy_calibrate
from feedback.services.retraining import retraining_request
from feedback.tasks import train_predictor_task
from routing.models import PolicyVersion
from routing.predictor import registry
from tests.conftest import requires_postgres
from tests.feedback.outcome_files import write_models, write_outcomes


@pytest.fixture
def imported(tmp_path: Path, catalog: Any) -> Iterator[Path]:
    path = tmp_path / "outcomes.jsonl"
    write_outcomes(path, 100, seed=5)
    write_models(tmp_path / "models.json")
    call_command("import_outcomes", str(path), "--source", "gen", stdout=StringIO())
    registry.clear()
    yield tmp_path
    registry.clear()


@pytest.fixture
def trained(imported: Path, django_capture_on_commit_callbacks: Any) -> PredictorVersion:
    """The "gen" outcomes imported and a predictor trained on them, active."""
    with django_capture_on_commit_callbacks(execute=True):
        call_command("train_predictor", "--source", "gen", stdout=StringIO())
    return PredictorVersion.objects.get(is_active=True)


@pytest.mark.django_db
def test_it_trains_stores_and_activates_only_a_better_predictor(
    imported: Path, django_capture_on_commit_callbacks: Any
) -> None:
    out = StringIO()
    with django_capture_on_commit_callbacks(execute=True):
        call_command("train_predictor", "--source", "gen", stdout=out)
    assert "ACTIVATED: no active predictor to beat" in out.getvalue()
    first = PredictorVersion.objects.get(is_active=True)
    assert first.metrics["apgr"] is not None and first.metrics["brier"] < 0.25
    assert first.metadata["lineage"]["source"] == "gen" and first.feature_schema == 2
    assert "held-out metrics: examples " in out.getvalue() and " · brier 0." in out.getvalue()
    # the same data and seed cannot beat itself (compared where neither trained)
    out = StringIO()
    call_command("train_predictor", "--source", "gen", stdout=out)
    assert "not activated" in out.getvalue()
    assert "held-out prompts neither predictor trained on" in out.getvalue(), out.getvalue()
    assert PredictorVersion.objects.get(is_active=True) == first
    # another seed holds out other prompts, most of which the active one trained on: said so
    out = StringIO()
    call_command("train_predictor", "--source", "gen", "--seed", "1", stdout=out)
    assert "the active predictor may have trained on these prompts" in out.getvalue(), out.getvalue()
    # unless asked to, through the Celery task (run in-process) calling the same service
    result = train_predictor_task.apply(kwargs={"source": "gen", "force_activate": True}).get()
    assert result["promoted"] is True
    assert PredictorVersion.objects.get(is_active=True).name == result["version"]
    statuses = list(TrainingRun.objects.order_by("created_at").values_list("status", flat=True))
    assert statuses[:2] == [TrainingRunStatus.PROMOTED, TrainingRunStatus.REJECTED]
    assert statuses[-1] == TrainingRunStatus.PROMOTED


@pytest.mark.django_db
def test_a_predictor_without_a_held_out_evaluation_does_not_replace_the_active_one(
    trained: PredictorVersion, tmp_path: Path, django_capture_on_commit_callbacks: Any
) -> None:
    active = trained
    tiny = tmp_path / "tiny.jsonl"
    write_outcomes(tiny, 1, seed=9)  # one prompt: nothing can be held out
    call_command("import_outcomes", str(tiny), "--source", "tiny", stdout=StringIO())
    out = StringIO()
    with django_capture_on_commit_callbacks(execute=True):
        call_command("train_predictor", "--source", "tiny", stdout=out)
    assert "not activated" in out.getvalue() and "no held-out evaluation" in out.getvalue(), out.getvalue()
    assert PredictorVersion.objects.get(is_active=True) == active


@pytest.mark.django_db
def test_calibrate_policy_publishes_the_alpha_that_hits_a_target_share(trained: PredictorVersion) -> None:
    before = PolicyVersion.objects.filter(policy__slug="default").count()
    out = StringIO()
    call_command("calibrate_policy", "default", "--target-share", "large=0.3", "--source", "gen", stdout=out)
    assert "expected cost $" in out.getvalue() and "predicted quality" in out.getvalue()
    assert "true score" in out.getvalue()  # imported traffic has outcomes
    assert PolicyVersion.objects.filter(policy__slug="default").count() == before + 1
    result = policy_calibrate(
        actor="test", slug="default", target_share=("large", 0.3), source="gen", dry_run=True
    )
    assert result.chosen.shares[result.models.index("large")] == pytest.approx(0.3, abs=0.1)
    cheap = policy_calibrate(actor="test", slug="default", target_cost_usd=1e-9, source="gen", dry_run=True)
    assert cheap.chosen.alpha <= result.chosen.alpha


@pytest.mark.django_db
def test_calibrate_policy_refuses_bad_targets_and_publishes_nothing_it_cannot_reach(
    trained: PredictorVersion,
) -> None:
    before = PolicyVersion.objects.filter(policy__slug="default").count()
    for bad in ("-1", "0", "nan", "inf"):
        with pytest.raises(CommandError, match="positive number"):
            call_command("calibrate_policy", "default", "--target-cost-usd", bad, "--source", "gen")
    with pytest.raises(CommandError, match="at least 1"):
        call_command("calibrate_policy", "default", "--target-cost-usd", "1", "--limit", "-5")
    # far below the cheapest model's cost: refused, nothing published
    with pytest.raises(CommandError, match=r"no alpha keeps the mean cost within .*nothing published"):
        call_command("calibrate_policy", "default", "--target-cost-usd", "1e-12", "--source", "gen")
    out = StringIO()
    call_command(
        "calibrate_policy",
        "default",
        "--target-cost-usd",
        "1e-12",
        "--source",
        "gen",
        "--dry-run",
        stdout=out,
    )
    assert "target not reached: no alpha keeps the mean cost" in out.getvalue()
    # a share no alpha gives (the top model never wins every prompt of this traffic): refused too
    with pytest.raises(CommandError, match=r"no alpha gives large a 100% share .* the closest is \d"):
        call_command("calibrate_policy", "default", "--target-share", "large=1", "--source", "gen")
    out = StringIO()
    call_command(
        "calibrate_policy", "default", "--target-share", "large=1", "--source", "gen", "--dry-run", stdout=out
    )
    assert "target not reached: no alpha gives large a 100% share" in out.getvalue()
    assert PolicyVersion.objects.filter(policy__slug="default").count() == before


@pytest.mark.django_db
@pytest.mark.parametrize("status", [TrainingRunStatus.QUEUED, TrainingRunStatus.RUNNING])
def test_it_refuses_to_train_while_a_retraining_run_is_open(imported: Path, status: str) -> None:
    now = timezone.now()
    open_run = TrainingRun.objects.create(status=status, trigger="schedule", started_at=now, heartbeat_at=now)
    with pytest.raises(CommandError, match=rf"training run {open_run.pk} \(schedule\) is {status}"):
        call_command("train_predictor", "--source", "gen", stdout=StringIO())
    assert list(TrainingRun.objects.values_list("pk", flat=True)) == [open_run.pk]  # no second run
    assert not PredictorVersion.objects.exists()


@pytest.mark.django_db
def test_a_lost_retraining_run_is_marked_failed_and_no_longer_blocks_training(
    imported: Path, settings: Any, django_capture_on_commit_callbacks: Any
) -> None:
    silent = timezone.now() - timedelta(seconds=settings.SCOPE_RETRAIN_STALE_AFTER_S + 1)
    lost = TrainingRun.objects.create(
        status=TrainingRunStatus.RUNNING, started_at=silent, heartbeat_at=silent
    )
    out = StringIO()
    with django_capture_on_commit_callbacks(execute=True):
        call_command("train_predictor", "--source", "gen", stdout=out)
    assert "ACTIVATED" in out.getvalue()
    lost.refresh_from_db()
    assert lost.status == TrainingRunStatus.FAILED and "abandoned" in lost.error


@contextmanager
def a_run_opened_elsewhere_just_before_the_insert() -> Iterator[list[TrainingRun]]:
    """The race select_for_update cannot close: the lock found no open run to lock, and another
    process (a thread with its own connection here) commits an open run before this one inserts."""
    opened: list[TrainingRun] = []
    fired = threading.Event()

    def rival_insert() -> None:
        try:
            opened.append(TrainingRun.objects.create(status=TrainingRunStatus.QUEUED, trigger="schedule"))
        finally:
            connection.close()

    def before_insert(sender: Any, instance: TrainingRun, **kwargs: Any) -> None:
        if instance.pk is None and not fired.is_set():
            fired.set()
            rival = threading.Thread(target=rival_insert)
            rival.start()
            rival.join(timeout=30)

    pre_save.connect(before_insert, sender=TrainingRun)
    try:
        yield opened
    finally:
        pre_save.disconnect(before_insert, sender=TrainingRun)


@requires_postgres
@pytest.mark.django_db(transaction=True)
def test_two_starts_at_the_same_moment_leave_one_open_run(imported: Path) -> None:
    with a_run_opened_elsewhere_just_before_the_insert() as opened:
        run = retraining_request(trigger="manual", actor="user:ops")
    assert [run.pk] == [r.pk for r in opened]  # the caller is given the run that won
    assert TrainingRun.objects.count() == 1
    TrainingRun.objects.all().delete()
    with a_run_opened_elsewhere_just_before_the_insert() as opened, pytest.raises(CommandError) as refused:
        call_command("train_predictor", "--source", "gen", stdout=StringIO())
    assert f"training run {opened[0].pk} (schedule) is queued: one training runs at a time" in str(
        refused.value
    )
    assert list(TrainingRun.objects.values_list("pk", flat=True)) == [opened[0].pk]
    assert not PredictorVersion.objects.exists()


@pytest.mark.django_db
def test_the_database_refuses_a_second_open_run() -> None:
    TrainingRun.objects.create(status=TrainingRunStatus.RUNNING)
    TrainingRun.objects.create(status=TrainingRunStatus.FAILED)  # closed runs are not counted
    with pytest.raises(IntegrityError), transaction.atomic():
        TrainingRun.objects.create(status=TrainingRunStatus.QUEUED)


@pytest.mark.django_db(transaction=True)
def test_the_migration_closes_all_but_the_newest_open_run() -> None:
    from django.db.migrations.executor import MigrationExecutor

    before = [("feedback", "0005_trainingrun_heartbeat")]
    executor = MigrationExecutor(connection)
    executor.migrate(before)
    old = executor.loader.project_state(before).apps.get_model("feedback", "TrainingRun")
    ids = [old.objects.create(status=status).pk for status in ("running", "queued", "promoted", "queued")]
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(executor.loader.graph.leaf_nodes())
    statuses = dict(TrainingRun.objects.values_list("pk", "status"))
    assert [statuses[pk] for pk in ids] == ["failed", "failed", "promoted", "queued"]
    assert f"run {ids[3]} was open" in TrainingRun.objects.get(pk=ids[0]).error
