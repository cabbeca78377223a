from __future__ import annotations

import csv
import io
import json
import re
from datetime import timedelta
from html import unescape
from typing import Any
from urllib.parse import parse_qs

from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from feedback.models import Feedback, Outcome
from routing.dashboard.decisions import DecisionFilters, decisions_page, encode_cursor
from routing.dashboard.overview import overview_data
from routing.models import DecisionLog, DecisionRollup
from routing.services.rollup import baseline_cost, hist_percentile, latency_bucket, rollup_catch_up


def test_keyset_pages_walk_every_row_once_newest_first(decisions: list[DecisionLog]) -> None:
    seen: list[DecisionLog] = []
    after = ""
    while True:
        rows, after = decisions_page(filters=DecisionFilters(), after=after, limit=3)
        seen.extend(rows)
        if not after:
            break
    assert len(seen) == 10 and len({r.id for r in seen}) == 10
    keys = [(r.created_at, r.id.hex) for r in seen]
    assert keys == sorted(keys, reverse=True)


def test_explorer_never_counts_or_offsets(persona: Any, decisions: list[DecisionLog]) -> None:
    client = persona("auditor")
    first = client.get("/decisions/")
    assert first.status_code == 200
    with CaptureQueriesContext(connection) as queries:
        client.get("/decisions/", {"model": decisions[0].chosen_model})
    sql = " ".join(q["sql"].upper() for q in queries.captured_queries)
    assert "COUNT(" not in sql and "OFFSET" not in sql


def test_explorer_filters_by_model_policy_key_and_outcome(persona: Any, decisions: list[DecisionLog]) -> None:
    chosen = decisions[0]
    Outcome.objects.create(
        decision=chosen, model_name=chosen.chosen_model, status="error", error_class="timeout"
    )
    rows, _ = decisions_page(filters=DecisionFilters(outcome="error"))
    assert [r.id for r in rows] == [chosen.id]
    rows, _ = decisions_page(filters=DecisionFilters(outcome="none"))
    assert len(rows) == 9
    rows, _ = decisions_page(filters=DecisionFilters(model=chosen.chosen_model, policy="default"))
    assert rows and all(r.chosen_model == chosen.chosen_model for r in rows)
    rows, _ = decisions_page(filters=DecisionFilters(key="nobody"))
    assert rows == []
    body = persona("auditor").get("/decisions/", {"outcome": "error"}).content.decode()
    assert str(chosen.id)[:8] in body


def test_explorer_rejects_a_forged_cursor_with_400(persona: Any, decisions: list[DecisionLog]) -> None:
    response = persona("operator").get("/decisions/", {"after": "not-a-cursor"})
    assert response.status_code == 400


def test_decision_page_shows_candidates_reasons_outcome_and_feedback(
    persona: Any, decisions: list[DecisionLog]
) -> None:
    row = decisions[0]
    Outcome.objects.create(
        decision=row, model_name=row.chosen_model, status="ok", output_tokens=42, latency_ms=812
    )
    Feedback.objects.create(decision=row, score=0.8, label="good")
    body = persona("auditor").get(f"/decisions/{row.id}/").content.decode()
    for candidate in row.candidates:
        assert candidate["model"] in body
        if candidate["excluded_reason"]:
            assert candidate["excluded_reason"].replace("'", "&#x27;") in body
    assert "42 out" in body and "0.80" in body and row.explanation["summary"][:30] in body
    assert f"row_hash {row.row_hash}" in body and f"format {row.hash_format}</span>" in body


def test_unknown_decision_is_404(persona: Any, decisions: list[DecisionLog]) -> None:
    assert persona("auditor").get("/decisions/00000000-0000-0000-0000-000000000000/").status_code == 404
    assert persona("auditor").get("/decisions/nope/").status_code == 404


def test_export_streams_every_filtered_row_as_csv_and_jsonl(
    persona: Any, decisions: list[DecisionLog]
) -> None:
    client = persona("auditor")
    model = decisions[0].chosen_model
    expected = DecisionLog.objects.filter(chosen_model=model).count()
    response = client.get("/decisions/export.csv", {"model": model})
    assert response.streaming and response["Content-Type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(b"".join(response.streaming_content).decode())))
    assert len(rows) == expected and {r["chosen_model"] for r in rows} == {model}
    assert all(len(r["row_hash"]) == 64 for r in rows)
    response = client.get("/decisions/export.jsonl")
    lines = b"".join(response.streaming_content).decode().splitlines()
    assert len(lines) == 10
    first = json.loads(lines[0])
    assert first["candidates"] and first["features"]["approx_tokens"] > 0


def test_export_links_carry_the_filters_not_the_page_and_export_refuses_a_cursor(
    persona: Any, decisions: list[DecisionLog]
) -> None:
    client = persona("auditor")
    model = decisions[0].chosen_model
    cursor = encode_cursor(decisions[-1].created_at, decisions[-1].id)
    page_two = client.get("/decisions/", {"model": model, "after": cursor})
    assert page_two.status_code == 200
    links = re.findall(r'href="/decisions/export\.csv\?([^"]*)"', page_two.content.decode())
    assert links and all(parse_qs(unescape(q)) == {"model": [model]} for q in links)
    response = client.get("/decisions/export.csv", {"model": model, "after": "bogus"})
    assert response.status_code == 400 and b"page cursor" in response.content
    typo = client.get("/decisions/export.csv", {"modle": model})  # would export every decision
    assert typo.status_code == 400 and b"unknown field 'modle' (did you mean 'model'?)" in typo.content
    assert client.get("/decisions/", {"modle": model}).status_code == 400


def test_export_neutralises_spreadsheet_formulas_and_knows_only_its_formats(
    persona: Any, decisions: list[DecisionLog]
) -> None:
    DecisionLog.objects.filter(pk=decisions[0].pk).update(user="=1+2", api_key_name="@SUM(A1)")
    client = persona("auditor")
    response = client.get("/decisions/export.csv")
    rows = list(csv.DictReader(io.StringIO(b"".join(response.streaming_content).decode())))
    row = next(r for r in rows if r["id"] == str(decisions[0].pk))
    assert row["user"] == "'=1+2" and row["api_key_name"] == "'@SUM(A1)"
    assert all(not r["alpha"].startswith("'") for r in rows)  # numbers stay numbers
    jsonl = b"".join(client.get("/decisions/export.jsonl").streaming_content).decode()
    assert '"user": "=1+2"' in jsonl  # JSON is not a spreadsheet: the value is kept as is
    assert client.get("/decisions/export.xml").status_code == 404


def test_every_jsonl_export_line_re_hashes_to_its_row_hash(
    persona: Any, decisions: list[DecisionLog]
) -> None:
    from routing.audit import HASHED_FIELDS, decision_row_hash

    lines = (
        b"".join(persona("auditor").get("/decisions/export.jsonl").streaming_content).decode().splitlines()
    )
    assert len(lines) == len(decisions)
    for text in lines:
        row = json.loads(text)
        assert (
            decision_row_hash({name: row[name] for name in HASHED_FIELDS}, row["hash_format"])
            == row["row_hash"]
        )


def test_overview_matches_the_raw_log_before_and_after_the_rollup(decisions: list[DecisionLog]) -> None:
    raw_spend = sum(r.predicted_cost_usd or 0 for r in DecisionLog.objects.all())
    now = timezone.now()
    live = overview_data(start=now - timedelta(hours=24), end=now + timedelta(seconds=1), now=now)
    assert live.totals.requests == 10
    assert abs(live.totals.spend_usd - raw_spend) < 1e-12
    later = now + timedelta(minutes=1)
    assert rollup_catch_up(now=later) >= 10
    assert DecisionRollup.objects.exists()
    rolled = overview_data(start=now - timedelta(hours=24), end=later, now=later)
    assert rolled.totals.requests == 10
    assert abs(rolled.totals.spend_usd - raw_spend) < 1e-12
    assert rolled.totals.savings_usd >= 0 and rolled.totals.p50_ms is not None
    assert sum(n for _, n in rolled.mix) == 10
    assert rollup_catch_up(now=later) == 0  # idempotent: nothing counted twice


def test_overview_counts_outcomes_and_feedback(decisions: list[DecisionLog]) -> None:
    Outcome.objects.create(
        decision=decisions[0], model_name="small", status="ok", latency_ms=500, cost_usd="0.001"
    )
    Outcome.objects.create(decision=decisions[1], model_name="small", status="error", latency_ms=900)
    Feedback.objects.create(decision=decisions[0], score=1.0)
    Feedback.objects.create(decision=decisions[1], score=0.0)
    later = timezone.now() + timedelta(minutes=1)
    rollup_catch_up(now=later)
    data = overview_data(start=later - timedelta(days=7), end=later, now=later)
    assert data.totals.outcomes == 2 and data.totals.error_rate == 0.5
    assert data.totals.feedback == 0.5 and data.totals.latency_source == "measured"
    assert 400 < (data.totals.p50_ms or 0) < 1000


def test_overview_page_renders_with_no_data(persona: Any, db: Any) -> None:
    body = persona("viewer").get("/").content.decode()
    assert "No decisions in this range yet" in body


def test_baseline_is_the_best_predicted_model_cheapest_on_ties() -> None:
    candidates: list[dict[str, Any]] = [
        {"model": "a", "predictions": {"quality": 0.9, "cost_usd": 0.03}},
        {"model": "b", "predictions": {"quality": 0.9, "cost_usd": 0.02}},
        {"model": "c", "predictions": {"quality": 0.5, "cost_usd": 0.001}},
        {"model": "d", "predictions": None},
    ]
    assert baseline_cost(candidates) == 0.02
    assert baseline_cost([]) is None


def test_latency_histogram_percentiles_are_within_a_bucket() -> None:
    hist = [0] * 49
    for ms in [100.0] * 50 + [1000.0] * 45 + [5000.0] * 5:
        hist[latency_bucket(ms)] += 1
    assert 88 < (hist_percentile(hist, 0.5) or 0) < 113
    assert 880 < (hist_percentile(hist, 0.95) or 0) < 1130
    assert hist_percentile([0] * 49, 0.5) is None
