from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.utils import timezone

from feedback.models import Outcome
from routing.dashboard.overview import overview_data
from routing.dashboard.synthetic import generate
from routing.models import DecisionLog
from routing.services.audit import audit_seal, audit_verify
from routing.services.rollup import rollup_catch_up


def test_synthetic_history_is_real_decisions_that_verify_and_roll_up(catalog: Any) -> None:
    made = generate(decisions=300, days=2, pool_size=20, batch=120, outcome_share=0.5)
    assert made.decisions == 300 and DecisionLog.objects.count() == 300
    assert Outcome.objects.count() == made.outcomes > 100
    later = timezone.now() + timedelta(minutes=1)
    audit_seal(now=later, batch_rows=100)
    report = audit_verify()
    assert report.ok and report.rows_checked == 300
    rollup_catch_up(now=later)
    data = overview_data(start=later - timedelta(days=3), end=later, now=later)
    assert data.totals.requests == 300 and data.totals.outcomes == made.outcomes
