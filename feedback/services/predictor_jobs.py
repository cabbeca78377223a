"""train_predictor and its Celery task: imported outcomes → challenger → held-out comparison → registry.

The challenger is promoted when it beats the active predictor on the same held-out prompts
(higher routing APGR where the data allows it, else lower Brier score), or when forced.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from feedback.models import PredictorVersion, TrainingRun, TrainingRunStatus
from feedback.services.registry import predictor_version_activate, predictor_version_save
from feedback.services.retraining import OPEN, champion_unseen, training_run_abandon_if_stale
from feedback.services.training import examples_from_eval_outcomes, predictor_evaluate, predictor_train
from routing.predictor.artifact import ArtifactError, unpack
from routing.predictor.dataset import load_models
from routing.predictor.model import ModelInfo
from scope_site.errors import Conflict, InvalidRequest


@dataclass(frozen=True)
class JobResult:
    version: PredictorVersion
    promoted: bool
    reason: str
    challenger: Mapping[str, Any]
    champion: Mapping[str, Any] | None


MIN_COMPARISON_PROMPTS = 10  # fewer held-out prompts unseen by both: compare on all, and say so


def challenger_wins(challenger: Mapping[str, Any], champion: Mapping[str, Any]) -> tuple[bool, str]:
    """Whether a new predictor beats the active one on the new one's held-out prompts (both scored there)."""
    if not challenger or not champion:  # nothing held out: too few prompts to evaluate on
        return False, "no held-out evaluation to compare with the active predictor (too few prompts)"
    a, b = challenger.get("apgr"), champion.get("apgr")
    if a is not None and b is not None:
        return a > b, f"held-out APGR {a:.4f} vs active {b:.4f}"
    a, b = challenger.get("brier"), champion.get("brier")
    if a is not None and b is not None:
        return a < b, f"held-out Brier {a:.4f} vs active {b:.4f}"
    return False, "no comparable held-out metric"


def _open_run_conflict(run: TrainingRun) -> Conflict:
    return Conflict(
        f"training run {run.pk} ({run.trigger}) is {run.status}: one training runs at a time; train "
        f"again once it has finished (a run silent for {settings.SCOPE_RETRAIN_STALE_AFTER_S} s is "
        "marked lost and no longer blocks)",
        code="training_run_open",
    )


def predictor_train_job(
    *,
    source: str = "",
    models_file: Path | None = None,
    force_activate: bool = False,
    seed: int = 0,
    progress: Callable[[float, str], None] | None = None,
    actor: str,
) -> JobResult:
    extra_models = load_models(models_file)  # a --models file that cannot be read fails before any run
    try:
        with transaction.atomic():
            # the lock retraining_request takes: one training at a time, or two could promote over
            # each other; an open run that lost its process is marked failed and no longer blocks
            existing = TrainingRun.objects.select_for_update().filter(status__in=OPEN).first()
            if existing is not None and not training_run_abandon_if_stale(existing):
                raise _open_run_conflict(existing)
            run = TrainingRun.objects.create(
                status=TrainingRunStatus.RUNNING,
                trigger="command",
                params={"source": source, "seed": seed, "force_activate": force_activate},
                started_at=timezone.now(),
                heartbeat_at=timezone.now(),
            )
    except IntegrityError:
        # a start at the same moment inserted its open run first (one_open_training_run refused ours)
        winner = TrainingRun.objects.filter(status__in=OPEN).first()
        if winner is None:
            raise
        raise _open_run_conflict(winner) from None
    try:
        examples, catalog = examples_from_eval_outcomes(source=source or None)
        if not examples:
            raise InvalidRequest(f"no imported outcomes{' for source ' + repr(source) if source else ''}")
        infos: dict[str, ModelInfo] = {m.name: m for m in catalog}
        for name, info in extra_models.items():
            infos.setdefault(name, info)  # the catalog's prices win over a models.json

        def report(fraction: float, message: str) -> None:
            TrainingRun.objects.filter(pk=run.pk).update(
                progress=fraction * 0.9, progress_message=message[:200], heartbeat_at=timezone.now()
            )
            if progress:
                progress(fraction, message)

        trained = predictor_train(
            examples=examples,
            models=list(infos.values()),
            seed=seed,
            progress=report,
            lineage={
                "command": "train_predictor",
                "source": source or "all imported",
                "training_run": run.pk,
            },
        )
        champion_row = PredictorVersion.objects.filter(is_active=True).first()
        champion_metrics = None
        challenger_metrics = trained.metrics  # on the prompts of the comparison, when they differ
        if champion_row is None:
            wins, reason = True, "no active predictor to beat"
        else:
            try:
                champion = unpack(bytes(champion_row.artifact), version=champion_row.name)
            except ArtifactError:  # a champion this code cannot load loses
                wins, reason = True, f"the active predictor {champion_row.name} cannot be loaded"
            else:
                # compare on held-out prompts the active predictor did not train on either
                unseen = champion_unseen(champion_row, examples)
                fair = [e for e in trained.holdout if unseen(e)] if unseen is not None else []
                caveat = ""
                if unseen is None or len({e.prompt_key for e in fair}) < MIN_COMPARISON_PROMPTS:
                    fair = trained.holdout
                    caveat = (
                        "; the active predictor may have trained on these prompts (its split is unknown "
                        "or too few prompts are unseen by both), so its scores may be optimistic"
                    )
                models = list(infos.values())
                champion_metrics = predictor_evaluate(predictor=champion, examples=fair, models=models)
                challenger_metrics = (
                    trained.metrics
                    if fair is trained.holdout
                    else predictor_evaluate(predictor=trained.predictor, examples=fair, models=models)
                )
                wins, reason = challenger_wins(challenger_metrics, champion_metrics)
                prompts = len({e.prompt_key for e in fair})
                reason += caveat or f" on the {prompts} held-out prompts neither predictor trained on"
        version = predictor_version_save(trained=trained)
        promote = wins or force_activate
        if promote:
            predictor_version_activate(version_id=version.pk, actor=actor, reason=reason)
            if not wins:
                reason += " (activated by request)"
        TrainingRun.objects.filter(pk=run.pk).update(
            status=TrainingRunStatus.PROMOTED if promote else TrainingRunStatus.REJECTED,
            progress=1.0,
            progress_message=reason[:200],
            data_counts=trained.counts,
            metrics={
                "challenger": trained.metrics,
                "champion": champion_metrics,
                "challenger_compared": challenger_metrics,
            },
            challenger=version,
            champion=champion_row,
            finished_at=timezone.now(),
        )
        version.refresh_from_db()
        return JobResult(version, promote, reason, trained.metrics, champion_metrics)
    except Exception as exc:
        TrainingRun.objects.filter(pk=run.pk).update(
            status=TrainingRunStatus.FAILED, error=str(exc)[:2000], finished_at=timezone.now()
        )
        raise
