"""Predictor registry writes: store a trained version, activate one (the only writers)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from django.db import transaction
from django.utils import timezone

from feedback.models import PredictorVersion
from feedback.services.training import TrainedPredictor
from routing.features import FEATURE_SCHEMA_VERSION
from routing.models import ControlAction
from routing.predictor.artifact import ArtifactError, unpack
from routing.predictor.registry import announce_active, predictor_precompile
from routing.services.control_events import control_event_record
from scope_site.errors import InvalidRequest, NotFound


def _next_name() -> str:
    return "p" + timezone.now().strftime("%Y%m%d-%H%M%S-%f")


def predictor_version_save(
    *, trained: TrainedPredictor, name: str = "", metrics: Mapping[str, Any] | None = None
) -> PredictorVersion:
    """Store the artifact and its metadata; the version is not active until activated.

    `metrics` replaces the training's own held-out metrics where the held-out prompts were chosen
    outside it (retraining scores challenger and champion on the same ones).
    """
    with transaction.atomic(durable=True):
        return PredictorVersion.objects.create(
            name=name or _next_name(),
            artifact=trained.artifact,
            feature_schema=FEATURE_SCHEMA_VERSION,
            metadata={
                "feature_names": list(trained.predictor.names),
                "roles": list(trained.predictor.roles),
                "models": list(trained.predictor.anchors.models),
                "counts": trained.counts,
                "lineage": trained.lineage,
            },
            metrics=dict(metrics) if metrics is not None else trained.metrics,
            training_seconds=trained.training_seconds,
        )


def predictor_version_activate(*, version_id: int, actor: str, reason: str = "") -> PredictorVersion:
    """Make one version the active predictor; every process switches to it within seconds.

    The artifact is loaded first: a version this code cannot serve is refused, and the active
    one stays active. Its trees are compiled here (a few seconds), not on a request.
    """
    version = PredictorVersion.objects.filter(pk=version_id).first()
    if version is None:
        raise NotFound(f"predictor version {version_id} does not exist")
    try:
        predictor = unpack(bytes(version.artifact), version=version.name)
    except ArtifactError as exc:
        raise InvalidRequest(f"predictor version {version.name} cannot be served: {exc}") from None
    # compiled trees into the shared cache before any process switches: they only open the library
    predictor_precompile(predictor)
    with transaction.atomic(durable=True):
        # lock the active row so two activations cannot both leave a version active
        previous = list(
            PredictorVersion.objects.select_for_update()
            .filter(is_active=True)
            .exclude(pk=version.pk)
            .values_list("name", flat=True)
        )
        PredictorVersion.objects.filter(is_active=True).exclude(pk=version.pk).update(is_active=False)
        PredictorVersion.objects.filter(pk=version.pk).update(is_active=True, activated_at=timezone.now())
        control_event_record(
            actor=actor,
            action=ControlAction.PREDICTOR_ACTIVATE,
            target=f"predictor:{version.name}",
            detail={"previous": previous[0] if previous else None, "reason": reason},
        )
        transaction.on_commit(lambda: announce_active(version.pk))
    version.refresh_from_db()
    if "shadow" in (version.metadata or {}):
        # the shadow promoted to champion stops shadowing: it would only score every request twice
        from feedback.services.shadow import shadow_stop

        shadow_stop(actor=actor)
        version.refresh_from_db()
    return version


def predictor_version_deactivate() -> None:
    """No trained predictor: routing falls back to the tier prior (and says so)."""
    with transaction.atomic(durable=True):
        PredictorVersion.objects.filter(is_active=True).update(is_active=False)
        transaction.on_commit(lambda: announce_active(None))
