"""Celery tasks of the predictor registry (thin: they call one service)."""

from __future__ import annotations

from typing import Any

from celery import shared_task

from feedback.services.predictor_jobs import predictor_train_job


@shared_task(name="feedback.train_predictor", acks_late=True, soft_time_limit=3300, time_limit=3600)
def train_predictor_task(source: str = "", force_activate: bool = False, seed: int = 0) -> dict[str, Any]:
    """Train on imported outcomes and promote if better; safe to run twice (each run stores a new version)."""
    result = predictor_train_job(
        source=source, force_activate=force_activate, seed=seed, actor="system:train_predictor"
    )
    return {"version": result.version.name, "promoted": result.promoted, "reason": result.reason}
