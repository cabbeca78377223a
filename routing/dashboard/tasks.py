"""Periodic dashboard work: seal the decision log into audit checkpoints, refresh the rollups."""

from __future__ import annotations

from celery import shared_task

from routing.services.audit import audit_seal
from routing.services.rollup import rollup_catch_up


@shared_task(name="routing.audit_seal", ignore_result=True, time_limit=900, soft_time_limit=890)
def audit_seal_task() -> int:
    """Safe to run twice at once: sealers serialise on a lock and only take unsealed rows."""
    return sum(c.row_count for c in audit_seal())


@shared_task(name="routing.rollup_catch_up", ignore_result=True, time_limit=900, soft_time_limit=890)
def rollup_task() -> int:
    """Safe to run twice at once: each source's watermark row is locked (the second run skips)."""
    return rollup_catch_up()
