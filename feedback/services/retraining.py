"""Retraining with champion/challenger: train on live feedback + imported data, compare, promote.

`retraining_request` records a queued TrainingRun and enqueues the Celery task on commit (at most
one run is queued or running at a time). `retraining_execute` claims the run with a conditional
UPDATE, so the same task delivered twice does the work once. Champion and challenger are scored
on the same held-out data: the most recent live examples plus a fixed share of the imported
prompts. The challenger is promoted only when its Brier score beats the champion's by
SCOPE_RETRAIN_MIN_IMPROVEMENT (or when there is no champion); otherwise it can shadow live
traffic (`params.shadow`, on by default).
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from feedback.models import EvalPrompt, PredictorVersion, TrainingRun, TrainingRunStatus
from feedback.services.live_data import TrainingData, training_data
from feedback.services.registry import predictor_version_activate, predictor_version_save
from feedback.services.shadow import shadow_start
from feedback.services.training import TrainingExample, predictor_evaluate, predictor_train, split_examples
from routing.models import ControlAction
from routing.predictor.artifact import ArtifactError, unpack
from routing.predictor.fit import FitParams
from routing.predictor.model import ScopePredictor
from routing.services.control_events import control_event_record
from scope_site.renderers import api_time

log = logging.getLogger(__name__)
OPEN = (TrainingRunStatus.QUEUED, TrainingRunStatus.RUNNING)
SYSTEM_ACTOR = "system:retraining"  # the worker's own changes (promotion, shadow), whoever queued the run
PARAM_KEYS = {
    "requested_by",
    "eval_source",
    "weights",
    "include_imported",
    "seed",
    "fit",
    "shadow",
    "margin",
    "live_days",
}


def retraining_request(
    *, trigger: str = "manual", params: Mapping[str, Any] | None = None, actor: str
) -> TrainingRun:
    """Queue a run (or return the one already queued/running) and enqueue its task on commit."""
    params = {**(params or {}), "requested_by": actor}
    _check_params(params)
    try:
        with transaction.atomic():
            # lock open runs: two schedulers firing together must not queue two runs
            existing = TrainingRun.objects.select_for_update().filter(status__in=OPEN).first()
            if existing is not None and not training_run_abandon_if_stale(existing):
                return existing
            run = TrainingRun.objects.create(trigger=trigger, params=params, progress_message="queued")
            control_event_record(
                actor=actor,
                action=ControlAction.RETRAIN_REQUEST,
                target=f"training_run:{run.pk}",
                detail={
                    "trigger": trigger,
                    "params": {k: v for k, v in params.items() if k != "requested_by"},
                },
            )
            transaction.on_commit(lambda: _enqueue(run.pk))
    except IntegrityError:
        # with no open run there was nothing to lock: a request at the same moment inserted its run
        # first and the one_open_training_run index refused this one. Theirs is the run asked for.
        winner = TrainingRun.objects.filter(status__in=OPEN).first()
        if winner is None:
            raise
        return winner
    run.refresh_from_db()  # embedded (eager Celery): the run finished when the commit enqueued it
    return run


def _stale_before() -> datetime:
    return timezone.now() - timedelta(seconds=int(settings.SCOPE_RETRAIN_STALE_AFTER_S))


def training_run_is_lost(run: TrainingRun) -> bool:
    """A running run whose process has written no progress for SCOPE_RETRAIN_STALE_AFTER_S."""
    return run.status == TrainingRunStatus.RUNNING and (
        (run.heartbeat_at or run.started_at or run.created_at) < _stale_before()
    )


def training_run_abandon_if_stale(run: TrainingRun) -> bool:
    """True when the locked open `run` no longer stands in the way of a new one.

    A running run whose process stopped writing progress (worker killed, host restarted, a
    command interrupted) would otherwise stay "running" for ever and every later request would
    return it: it is marked failed. A run still queued after the same time (its message was lost,
    e.g. the broker was down) is enqueued again and kept: a duplicate message is claimed once.
    """
    if run.status == TrainingRunStatus.QUEUED:
        if run.created_at < _stale_before():
            transaction.on_commit(lambda: _enqueue(run.pk))
        return False
    if not training_run_is_lost(run):
        return False
    seconds = int(settings.SCOPE_RETRAIN_STALE_AFTER_S)
    TrainingRun.objects.filter(pk=run.pk).update(
        status=TrainingRunStatus.FAILED,
        error=f"abandoned: no progress for over {seconds} s (the process running it was lost)",
        progress_message="failed: the process running it was lost",
        finished_at=timezone.now(),
    )
    last_sign = run.heartbeat_at or run.started_at or run.created_at
    control_event_record(
        actor=SYSTEM_ACTOR,
        action=ControlAction.RETRAIN_ABANDON,
        target=f"training_run:{run.pk}",
        detail={"trigger": run.trigger, "last_progress_at": api_time(last_sign), "stale_after_s": seconds},
    )
    return True


def _check_params(params: Mapping[str, Any]) -> None:
    """Refuse what would fail the run later (NaN in the JSON column was an IntegrityError) or turn
    it upside down (a negative weight unlearns its examples)."""
    from scope_site.errors import InvalidRequest

    unknown = set(params) - PARAM_KEYS
    if unknown:
        raise InvalidRequest(f"unknown retraining parameter(s): {', '.join(sorted(unknown))}")
    margin = params.get("margin", 0.0)  # negative is allowed: promote unless worse by more than that
    if not (_number(margin) and math.isfinite(margin)):
        raise InvalidRequest(f"margin must be a finite number (a Brier improvement), got {margin!r}")
    weights = params.get("weights")
    if weights is not None and not (
        isinstance(weights, Mapping) and all(_non_negative(v) for v in weights.values())
    ):
        raise InvalidRequest(f"weights must map sources to numbers >= 0, got {weights!r}")
    source = params.get("eval_source")
    if source and not EvalPrompt.objects.filter(source=source).exists():
        raise InvalidRequest(f"no imported outcomes for source {source!r} (import_outcomes --source)")


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _non_negative(value: Any) -> bool:
    return _number(value) and math.isfinite(value) and value >= 0


def _enqueue(run_id: int) -> None:
    from feedback.learning_tasks import retraining_execute_task

    retraining_execute_task.delay(run_id)


def _claim(run_id: int) -> bool:
    now = timezone.now()
    return (
        TrainingRun.objects.filter(pk=run_id, status=TrainingRunStatus.QUEUED).update(
            status=TrainingRunStatus.RUNNING,
            started_at=now,
            heartbeat_at=now,
            progress=0.01,
            progress_message="starting",
        )
        == 1
    )


class _Progress:
    """Writes progress to the run row at most twice a second (the UI polls it)."""

    def __init__(self, run_id: int, start: float, end: float):
        self.run_id, self.start, self.end, self.last = run_id, start, end, 0.0

    def __call__(self, fraction: float, message: str) -> None:
        now = time.monotonic()
        if now - self.last < 0.5 and fraction < 1.0:
            return
        self.last = now
        value = self.start + (self.end - self.start) * max(0.0, min(1.0, fraction))
        TrainingRun.objects.filter(pk=self.run_id).update(
            progress=round(value, 4), progress_message=message[:200], heartbeat_at=timezone.now()
        )


def _held_out(key: str, share: float) -> bool:
    digest = hashlib.sha256(f"holdout\x00{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64 < share


def champion_seed_split(
    lineage: Mapping[str, Any], imported: Sequence[TrainingExample]
) -> tuple[set[str], str] | None:
    """The prompt keys a predictor trained by predictor_train held out (its seed and share over the
    sources it saw), and the rule's description; None when its lineage does not say."""
    seed, share = lineage.get("seed"), lineage.get("holdout_share")
    if not isinstance(seed, int) or not isinstance(share, int | float) or share <= 0:
        return None
    seen_sources = set(lineage.get("sources") or {})
    subset = [e for e in imported if e.source.removeprefix("eval:") in seen_sources]
    _, held = split_examples(subset, seed=seed, holdout_share=float(share))
    return {
        e.prompt_key for e in held
    }, f"champion split (seed {seed}, share {share}) over {sorted(seen_sources)}"


def champion_unseen(
    champion: PredictorVersion, imported: Sequence[TrainingExample]
) -> Callable[[TrainingExample], bool] | None:
    """A test for "the champion did not train on this imported example", or None when its lineage
    does not say how it split its data."""
    lineage = (champion.metadata or {}).get("lineage", {})
    seen = set(lineage.get("sources") or {})
    if lineage.get("holdout_rule") == "sha256":
        share = lineage.get("comparison_holdout_share")
        if not isinstance(share, int | float):
            return None
        return lambda e: e.source.removeprefix("eval:") not in seen or _held_out(e.prompt_key, float(share))
    split = champion_seed_split(lineage, imported)
    if split is None:
        return None
    keys = split[0]
    return lambda e: e.source.removeprefix("eval:") not in seen or e.prompt_key in keys


def split_for_comparison(
    data: TrainingData, share: float, champion: PredictorVersion | None
) -> tuple[list[TrainingExample], list[TrainingExample], dict[str, Any]]:
    """Train / held-out so that neither predictor has seen the held-out examples.

    Live: the newest `share` of the examples logged after the champion was trained. Imported:
    the champion's own held-out prompts when its lineage says how it split them (this module's
    hash rule, or predictor_train's seed + share over the same sources); prompts of sources the
    champion never saw, and everything when there is no champion, by the hash rule.
    """
    lineage = (champion.metadata or {}).get("lineage", {}) if champion else {}
    rule = "sha256"
    champion_keys: set[str] | None = None
    if champion is not None and lineage.get("holdout_rule") != "sha256":
        split = champion_seed_split(lineage, data.imported)
        if split is not None:
            champion_keys, rule = split
        else:
            rule = "sha256 (the champion's split is unknown: its scores may be optimistic)"
    rule_share = (
        float(lineage.get("comparison_holdout_share", share))
        if lineage.get("holdout_rule") == "sha256"
        else share
    )
    seen = set(lineage.get("sources") or {}) if champion_keys is not None else set()

    def held(e: TrainingExample) -> bool:
        if champion_keys is not None and e.source.removeprefix("eval:") in seen:
            return e.prompt_key in champion_keys
        return _held_out(e.prompt_key, rule_share)

    imported_train = [e for e in data.imported if not held(e)]
    imported_holdout = [e for e in data.imported if held(e)]
    cutoff = champion.created_at if champion is not None else None
    fresh = [x.example for x in data.live if cutoff is None or x.created_at > cutoff]  # oldest first
    n_live = math.ceil(len(fresh) * share) if len(fresh) >= 5 else 0
    held_live = {id(e) for e in fresh[len(fresh) - n_live :]}
    live_train = [x.example for x in data.live if id(x.example) not in held_live]
    live_holdout = [e for e in fresh if id(e) in held_live]
    counts: dict[str, Any] = {
        "train_live": len(live_train),
        "train_imported": len(imported_train),
        "holdout_live": len(live_holdout),
        "holdout_imported": len(imported_holdout),
        "holdout_rule": rule,
    }
    return live_train + imported_train, live_holdout + imported_holdout, counts


def _champion() -> tuple[PredictorVersion | None, ScopePredictor | None]:
    version = PredictorVersion.objects.filter(is_active=True).first()
    if version is None:
        return None, None
    try:
        return version, unpack(bytes(version.artifact), version=version.name)
    except ArtifactError as exc:  # a champion this code cannot load loses to any challenger
        log.warning("champion %s cannot be loaded: %s", version.name, exc)
        return version, None


def _evaluate(
    predictor: ScopePredictor | None, examples: Sequence[TrainingExample], data: TrainingData
) -> dict[str, Any]:
    if predictor is None or not examples:
        return {}
    return predictor_evaluate(predictor=predictor, examples=examples, models=data.models)


def retraining_execute(*, run_id: int) -> TrainingRun | None:
    """Do one queued run; a run that is not queued (already claimed or finished) is left alone.

    None when the run does not exist (a stale message for a deleted row).
    """
    if not _claim(run_id):
        return TrainingRun.objects.filter(pk=run_id).first()
    run = TrainingRun.objects.get(pk=run_id)
    started = time.monotonic()
    try:
        _execute(run)
    except Exception as exc:  # noqa: BLE001 - the run row records any failure for the operator
        log.exception("training run %s failed", run.pk)
        TrainingRun.objects.filter(pk=run.pk).update(
            status=TrainingRunStatus.FAILED,
            error=f"{type(exc).__name__}: {exc}"[:5000],
            finished_at=timezone.now(),
            progress_message="failed",
        )
    run.refresh_from_db()
    if run.status != TrainingRunStatus.FAILED:
        TrainingRun.objects.filter(pk=run.pk).update(
            metrics={**run.metrics, "duration_s": round(time.monotonic() - started, 3)}
        )
        run.refresh_from_db()
    return run


def _execute(run: TrainingRun) -> None:
    params = run.params or {}
    margin = float(params.get("margin", settings.SCOPE_RETRAIN_MIN_IMPROVEMENT))
    share = float(settings.SCOPE_RETRAIN_HOLDOUT_FRACTION)
    since = timezone.now() - timedelta(days=int(params.get("live_days", settings.SCOPE_RETRAIN_LIVE_DAYS)))
    _Progress(run.pk, 0.02, 0.1)(0.0, "collecting training data")
    data = training_data(
        since=since,
        eval_source=params.get("eval_source"),
        weights=params.get("weights"),
        include_imported=bool(params.get("include_imported", True)),
    )
    champion_version, champion = _champion()  # the one compared against, fixed for this run
    train, holdout, split_counts = split_for_comparison(data, share, champion_version)
    counts = {**data.counts, **split_counts}
    TrainingRun.objects.filter(pk=run.pk).update(data_counts=counts)
    if not train:
        raise ValueError("no training data: import outcomes (import_outcomes) or collect feedback first")
    trained = predictor_train(
        examples=train,
        models=data.models,
        seed=int(params.get("seed", 0)),
        holdout_share=0.0,  # held-out data is chosen above, shared with the champion
        params=FitParams(**(params.get("fit") or {})),
        progress=_Progress(run.pk, 0.1, 0.85),
        lineage={
            "training_run": run.pk,
            "trigger": run.trigger,
            "counts": counts,
            "holdout_rule": "sha256",
            "comparison_holdout_share": share,
        },
    )
    _Progress(run.pk, 0.85, 0.95)(0.0, "evaluating champion and challenger")
    live_holdout = holdout[: split_counts["holdout_live"]]
    metrics: dict[str, Any] = {
        "challenger": _evaluate(trained.predictor, holdout, data),
        "champion": _evaluate(champion, holdout, data),
        "challenger_live": _evaluate(trained.predictor, live_holdout, data),
        "champion_live": _evaluate(champion, live_holdout, data),
        "margin": margin,
        "training_seconds": round(trained.training_seconds, 3),
    }
    promote, reason = _verdict(metrics, champion_version, champion)
    metrics["decision"] = reason
    version = predictor_version_save(trained=trained, metrics=metrics["challenger"])
    if promote:
        predictor_version_activate(
            version_id=version.pk, actor=SYSTEM_ACTOR, reason=f"training run {run.pk}: {reason}"
        )
    elif params.get("shadow", True):
        shadow_start(version_id=version.pk, actor=SYSTEM_ACTOR)
    TrainingRun.objects.filter(pk=run.pk).update(
        status=TrainingRunStatus.PROMOTED if promote else TrainingRunStatus.REJECTED,
        challenger=version,
        champion=champion_version,
        metrics=metrics,
        progress=1.0,
        progress_message=reason[:200],
        finished_at=timezone.now(),
    )


def _verdict(
    metrics: dict[str, Any], champion_version: PredictorVersion | None, champion: ScopePredictor | None
) -> tuple[bool, str]:
    held_out = int(metrics["challenger"].get("examples") or 0)
    challenger_brier = metrics["challenger"].get("brier")
    if champion_version is None:
        constant = metrics["challenger"].get("brier_constant")
        versus = (
            f" (held-out Brier {challenger_brier:.4f}; the best constant guess scores {constant:.4f})"
            if challenger_brier is not None and constant is not None
            else ""
        )
        return True, f"promoted: no champion was active{versus}, {held_out} held-out examples"
    if champion is None:
        return True, f"promoted: champion {champion_version.name} cannot be loaded"
    minimum = int(settings.SCOPE_RETRAIN_MIN_HELDOUT)
    if held_out < minimum:  # replacing a serving predictor needs more evidence than a handful of prompts
        return False, f"not promoted: {held_out} held-out examples, fewer than the {minimum} a verdict needs"
    champion_brier = metrics["champion"].get("brier")
    if challenger_brier is None or champion_brier is None:
        return False, "not promoted: no held-out data to compare champion and challenger on"
    gain = champion_brier - challenger_brier
    if gain >= metrics["margin"]:
        return (
            True,
            f"promoted: held-out Brier {challenger_brier:.4f} vs champion {champion_brier:.4f} (gain {gain:.4f} ≥ {metrics['margin']})",
        )
    return (
        False,
        f"not promoted: held-out Brier {challenger_brier:.4f} vs champion {champion_brier:.4f} (gain {gain:.4f} < {metrics['margin']})",
    )
