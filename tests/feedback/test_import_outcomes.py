from __future__ import annotations

import json
from io import StringIO
from pathlib import Path

import pytest
from django.core.management import call_command

from feedback.models import EvalOutcome, EvalPrompt
from tests.feedback.outcome_files import write_models, write_outcomes


@pytest.mark.django_db
def test_it_imports_reports_bad_lines_and_updates_instead_of_duplicating(tmp_path: Path) -> None:
    path = tmp_path / "outcomes.jsonl"
    write_outcomes(path, 6, seed=1)
    with open(path, "a") as fh:
        fh.write("{not json\n")
        fh.write(json.dumps({"id": "bad-score", "prompt": "x", "outcomes": {"small": {"score": 7}}}) + "\n")
    write_models(tmp_path / "models.json")
    out, err = StringIO(), StringIO()
    call_command(
        "import_outcomes",
        str(path),
        "--source",
        "gen",
        "--models",
        str(tmp_path / "models.json"),
        stdout=out,
        stderr=err,
    )
    assert "6 prompts created, 0 updated, 18 outcomes" in out.getvalue()
    assert "2 lines skipped" in out.getvalue()
    assert f"{path}:7: skipped: not valid JSON" in err.getvalue()
    assert f"{path}:8: skipped: small.score must be in [0.0, 1.0]" in err.getvalue()
    assert EvalPrompt.objects.filter(source="gen").count() == 6
    # the same ids again with other scores: updated, not duplicated
    lines = [json.loads(line) for line in path.read_text().splitlines()[:6]]
    for doc in lines:
        doc["outcomes"]["small"]["score"] = 0.25
    path.write_text("\n".join(json.dumps(d) for d in lines) + "\n")
    out = StringIO()
    call_command("import_outcomes", str(path), "--source", "gen", stdout=out, stderr=StringIO())
    assert "0 prompts created, 6 updated, 18 outcomes" in out.getvalue()
    assert EvalPrompt.objects.count() == 6 and EvalOutcome.objects.count() == 18
    assert set(EvalOutcome.objects.filter(model_name="small").values_list("score", flat=True)) == {0.25}


@pytest.mark.django_db
def test_the_same_ids_from_another_source_are_other_prompts(tmp_path: Path) -> None:
    path = tmp_path / "outcomes.jsonl"
    write_outcomes(path, 3, seed=2)
    call_command("import_outcomes", str(path), "--source", "a", stdout=StringIO())
    call_command("import_outcomes", str(path), "--source", "b", stdout=StringIO())
    assert EvalPrompt.objects.count() == 6


@pytest.mark.django_db
def test_a_model_with_a_null_score_is_left_out_but_the_prompt_is_kept(tmp_path: Path) -> None:
    path = tmp_path / "outcomes.jsonl"
    line = {
        "id": "p1",
        "prompt": "hi",
        "outcomes": {"a": {"score": 1.0}, "b": {"score": None, "output_tokens": 3}},
    }
    path.write_text(json.dumps(line) + "\n")
    out = StringIO()
    call_command("import_outcomes", str(path), "--source", "nulls", stdout=out, stderr=StringIO())
    assert "1 prompts created" in out.getvalue() and "0 lines skipped" in out.getvalue()
    assert list(EvalOutcome.objects.values_list("model_name", flat=True)) == ["a"]
