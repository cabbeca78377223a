from __future__ import annotations

import io
import math
from datetime import datetime, timedelta
from typing import Any
from unittest import mock

import pytest
from django.db import connection
from django.utils import timezone

from routing.audit import HASHED_FIELDS, decision_row_hash
from routing.models import AuditCheckpoint, DecisionLog
from routing.services.audit import GENESIS_HASH, audit_seal, audit_verify, audit_verify_step


def later() -> datetime:
    """A minute from now: past the seal lag for rows written in the test. (A module constant was
    measured at collection, so a test run more than a minute later found its new rows too young.)"""
    return timezone.now() + timedelta(minutes=1)


def _sql(statement: str, params: list[Any]) -> None:
    with connection.cursor() as cursor:
        cursor.execute(statement, params)


def _db_id(row: DecisionLog) -> Any:
    return DecisionLog._meta.pk.get_db_prep_value(row.id, connection)  # type: ignore[union-attr]


def test_seal_chains_batches_and_verify_passes(decisions: list[DecisionLog]) -> None:
    sealed = audit_seal(now=later(), batch_rows=4)
    assert [c.row_count for c in sealed] == [4, 4, 2]
    assert sealed[0].previous_hash == GENESIS_HASH
    assert sealed[1].previous_hash == sealed[0].checkpoint_hash
    assert not DecisionLog.objects.filter(checkpoint__isnull=True).exists()
    assert audit_seal(now=later()) == []  # nothing left: running the task twice seals nothing twice
    report = audit_verify()
    assert report.ok, report.failure
    assert (report.rows_checked, report.checkpoints_checked) == (10, 3)


def test_seal_leaves_rows_younger_than_the_lag_for_the_next_run(decisions: list[DecisionLog]) -> None:
    assert audit_seal(now=timezone.now()) == []  # every row is younger than 5 s
    assert DecisionLog.objects.filter(checkpoint__isnull=True).count() == 10


def test_a_row_changed_by_raw_sql_is_named(decisions: list[DecisionLog]) -> None:
    audit_seal(now=later(), batch_rows=4)
    victim = DecisionLog.objects.order_by("created_at", "id")[5]
    _sql("UPDATE routing_decisionlog SET chosen_model = %s WHERE id = %s", ["large", _db_id(victim)])
    report = audit_verify()
    assert report.failure is not None
    assert (report.failure.kind, report.failure.ref) == ("row", str(victim.id))
    assert report.rows_checked == 5  # the rows before it in the chain were fine


@pytest.mark.parametrize(
    ("column", "value", "said"),
    [
        (
            "prompt",
            "Prove that the square root of 3 is irrational",
            "its prompt does not match the prompt_sha256",
        ),
        (
            "predicted_cost_usd",
            99.0,
            "its predicted_cost_usd (99.0) differs from the chosen candidate's cost_usd",
        ),
        ("predicted_quality", 0.01, "its predicted_quality (0.01) differs"),
    ],
)
def test_columns_the_hash_covers_indirectly_are_checked_too(
    decisions: list[DecisionLog], column: str, value: Any, said: str
) -> None:
    audit_seal(now=later(), batch_rows=4)
    assert audit_verify().ok  # every untouched row agrees (prompts, costs and qualities as logged)
    victim = DecisionLog.objects.order_by("created_at", "id")[7]
    _sql(f"UPDATE routing_decisionlog SET {column} = %s WHERE id = %s", [value, _db_id(victim)])
    report = audit_verify()
    assert report.failure is not None and report.failure.ref == str(victim.id)
    assert said in report.failure.message


def test_a_row_rewritten_with_a_matching_hash_breaks_its_checkpoint(decisions: list[DecisionLog]) -> None:
    audit_seal(now=later(), batch_rows=4)
    victim = DecisionLog.objects.order_by("created_at", "id")[1]
    values = DecisionLog.objects.filter(id=victim.id).values(*HASHED_FIELDS).get()
    values["user"] = "mallory"
    forged = decision_row_hash(values, victim.hash_format)
    _sql(
        'UPDATE routing_decisionlog SET "user" = %s, row_hash = %s WHERE id = %s',
        ["mallory", forged, _db_id(victim)],
    )
    report = audit_verify()
    assert report.failure is not None
    assert (report.failure.kind, report.failure.ref) == ("checkpoint", "1")


def test_a_deleted_row_breaks_its_checkpoint(decisions: list[DecisionLog]) -> None:
    audit_seal(now=later(), batch_rows=4)
    victim = DecisionLog.objects.order_by("created_at", "id")[9]
    _sql("DELETE FROM routing_decisionlog WHERE id = %s", [_db_id(victim)])
    report = audit_verify()
    assert report.failure is not None
    assert (report.failure.kind, report.failure.ref) == ("checkpoint", "3")


def test_a_rewritten_checkpoint_breaks_the_chain(decisions: list[DecisionLog]) -> None:
    audit_seal(now=later(), batch_rows=4)
    _sql("UPDATE routing_auditcheckpoint SET previous_hash = %s WHERE sequence = 2", ["f" * 64])
    report = audit_verify()
    assert report.failure is not None
    assert (report.failure.kind, report.failure.ref) == ("checkpoint", "2")


def test_a_deleted_checkpoint_is_reported_missing(decisions: list[DecisionLog]) -> None:
    audit_seal(now=later(), batch_rows=4)
    DecisionLog.objects.filter(checkpoint__sequence=2).update(checkpoint=None)
    AuditCheckpoint.objects.filter(sequence=2).delete()
    report = audit_verify()
    assert report.failure is not None
    assert report.failure.ref == "3" and "missing" in report.failure.message


def test_an_unsealed_row_is_verified_too(decisions: list[DecisionLog]) -> None:
    victim = decisions[3]
    _sql("UPDATE routing_decisionlog SET api_key_name = %s WHERE id = %s", ["someone", _db_id(victim)])
    report = audit_verify()
    assert report.failure is not None and report.failure.ref == str(victim.id)


def test_stepwise_verification_resumes_where_it_stopped(decisions: list[DecisionLog]) -> None:
    audit_seal(now=later(), batch_rows=3)
    step = audit_verify_step(after_sequence=0, max_rows=3)
    assert step.next_sequence == 1 and step.rows_checked == 3
    step = audit_verify_step(after_sequence=1, max_rows=6)
    assert step.next_sequence == 3
    last = audit_verify_step(after_sequence=3, max_rows=100)
    assert last.next_sequence is None and last.ok and last.rows_checked == 1


def test_seal_task_seals_everything_past_the_lag(decisions: list[DecisionLog], settings: Any) -> None:
    from routing.dashboard.tasks import audit_seal_task

    # apply(): the task runs here through Celery's own machinery; CELERY_TASK_ALWAYS_EAGER set from
    # a test does not reach an app whose configuration an earlier test has already read
    with mock.patch("routing.services.audit.timezone.now", return_value=later()):  # the clock only
        assert audit_seal_task.apply().get() == len(decisions)
    assert AuditCheckpoint.objects.count() == 1
    assert audit_verify().ok


def test_auditor_page_names_the_tampered_row(persona: Any, decisions: list[DecisionLog]) -> None:
    audit_seal(now=later(), batch_rows=4)
    victim = decisions[2]
    _sql("UPDATE routing_decisionlog SET chosen_model = %s WHERE id = %s", ["small", _db_id(victim)])
    client = persona("auditor")
    body = client.get("/audit/verify", HTTP_HX_REQUEST="true").content.decode()
    assert "Tampering detected" in body and str(victim.id) in body


def test_auditor_page_reports_an_intact_chain(persona: Any, decisions: list[DecisionLog]) -> None:
    audit_seal(now=later(), batch_rows=4)
    body = persona("auditor").get("/audit/verify", HTTP_HX_REQUEST="true").content.decode()
    assert "Chain intact" in body and "10 rows verified" in body


def test_audit_verify_command_fails_naming_the_row(decisions: list[DecisionLog]) -> None:
    from django.core.management import CommandError, call_command

    out = io.StringIO()
    call_command("audit_verify", stdout=out)
    assert "chain intact: 10 rows" in out.getvalue()
    _sql('UPDATE routing_decisionlog SET "user" = %s WHERE id = %s', ["mallory", _db_id(decisions[4])])
    with pytest.raises(CommandError, match=str(decisions[4].id)) as raised:
        call_command("audit_verify")
    assert str(raised.value).count(str(decisions[4].id)) == 1  # named once


def test_a_row_committed_late_with_an_older_time_is_sealed_by_the_next_run(
    decisions: list[DecisionLog],
) -> None:
    from routing.services.route import route_decide

    audit_seal(now=later(), batch_rows=4)
    oldest = DecisionLog.objects.order_by("created_at").first()
    assert oldest is not None
    with mock.patch(
        "routing.services.decision_log.timezone.now", return_value=oldest.created_at - timedelta(seconds=1)
    ):
        late = route_decide(messages=[{"role": "user", "content": "late"}], api_key=None).row
    sealed = audit_seal(now=later())
    assert [c.row_count for c in sealed] == [1]
    late.refresh_from_db()
    assert late.checkpoint_id == sealed[0].pk
    assert audit_verify().ok


def test_every_kind_of_decision_verifies(api: Any, settings: Any) -> None:
    """Route, chat through a policy, a named model (passthrough), a cache hit, no eligible model,
    a budget refusal and a job: each row's indirect columns agree with what its hash covers."""
    from decimal import Decimal

    from routing.services.jobs import job_run
    from tests.factories import make_api_key, make_policy

    settings.SCOPE_SIMULATED_SPEEDUP = 1000.0
    make_policy("cached", strategy="hybrid", alpha=0.5, options={"cache": {"ttl_s": 300}})
    ask = [{"role": "user", "content": "What is the capital of France?"}]
    assert api("/api/v1/route", {"messages": ask}).status_code == 200
    assert api("/api/v1/route", {"messages": ask, "max_cost_usd": 1e-12}).status_code == 422
    for model in ("scope/auto", "small", "scope/cached", "scope/cached"):
        assert api("/v1/chat/completions", {"model": model, "messages": ask}).status_code == 200
    _, broke = make_api_key("broke", daily_budget_usd=Decimal(0))
    assert api("/v1/chat/completions", {"model": "scope/auto", "messages": ask}, key=broke).status_code == 429
    job = api("/api/v1/jobs", {"model": "scope/auto", "messages": ask}).json()
    job_run(job_id=job["id"], worker="w")
    assert DecisionLog.objects.filter(cache_hit=True).exists()
    assert set(DecisionLog.objects.values_list("kind", flat=True)) == {"route", "chat", "job"}
    audit_seal(now=later())
    report = audit_verify()
    assert report.ok, report.failure
    assert report.rows_checked == DecisionLog.objects.count() >= 8


def test_numbers_a_database_changes_do_not_break_verification(api: Any) -> None:
    """jsonb has no -0.0 and reads 1e16 back as an integer; SQLite keeps what it is given. On either
    database a row whose caller sent such numbers (and a temperature of -0.0, which reaches the
    features) is stored as it was hashed and verifies."""
    ask = [{"role": "user", "content": "numbers"}]
    for metadata in ({"temperature": -0.0, "big": 1e16, "small": 1e-05}, {"big": 1e16, "n": 2**70}):
        response = api("/api/v1/route", {"messages": ask, "metadata": metadata})
        assert response.status_code == 200, response.content
        row = DecisionLog.objects.get(id=response.json()["decision_id"])
        assert row.metadata["big"] == 10**16 and isinstance(row.metadata["big"], int)
    # SCOPE's own -0.0 (not through the API's parser): found in the encoded row, stored as 0.0
    from routing.services.route import route_decide

    row = route_decide(messages=ask, api_key=None, metadata={"zero": -0.0, "temperature": -0.0}).row
    assert math.copysign(1.0, row.metadata["zero"]) == 1.0
    assert math.copysign(1.0, DecisionLog.objects.get(id=row.id).features["temperature"]) == 1.0
    assert sorted(DecisionLog.objects.values_list("hash_format", flat=True)) == [1, 2, 2]
    report = audit_verify()
    assert report.ok and report.rows_checked == 3, report.failure
