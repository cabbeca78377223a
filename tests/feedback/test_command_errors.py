"""Management commands answer a user's mistakes (bad files, bad arguments) with one clear line, not a traceback."""

from __future__ import annotations

import json
from io import StringIO
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command

from feedback.models import EvalPrompt
from tests.feedback.outcome_files import write_models, write_outcomes

NOT_UTF8 = b"\xff\xfe\x00garbage\n"


@pytest.mark.django_db
def test_import_outcomes_skips_lines_that_are_not_utf8_or_not_storable(tmp_path: Path) -> None:
    path = tmp_path / "outcomes.jsonl"
    write_outcomes(path, 3, seed=1)
    bad_prompt = json.dumps({"id": "s", "prompt": "x\ud800", "outcomes": {"a": {"score": 1.0}}})
    with path.open("ab") as fh:
        fh.write(NOT_UTF8 + bad_prompt.encode() + b"\n")
    out, err = StringIO(), StringIO()
    call_command("import_outcomes", str(path), "--source", "s", stdout=out, stderr=err)
    assert EvalPrompt.objects.count() == 3
    said = err.getvalue() + out.getvalue()
    assert ":4: skipped: not UTF-8 text" in said
    assert ":5: skipped: 'prompt' holds a NUL character or a lone surrogate" in said


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("command", "args", "message"),
    [
        ("import_outcomes", ["DIR"], "cannot use"),
        ("import_outcomes", ["OUT", "--models", "MISSING"], "No such file or directory"),
        ("import_outcomes", ["OUT", "--models", "BINARY"], "is not a JSON file"),
        ("load_catalog", ["BINARY"], "not UTF-8"),
        ("train_predictor", ["--seed", "-5"], "is negative"),
        ("train_predictor", ["--models", "MISSING"], "No such file or directory"),
        ("evaluate_router", ["--data", "TINY"], "a 50/50 split needs 10"),
        ("evaluate_router", ["--data", "DATA", "--png", "NODIR/x.png"], "does not exist"),
        (
            "predict_outcomes",
            ["--train", "BINARY", "--test", "OUT", "--out", "PRED"],
            "no valid training lines",
        ),
    ],
)
def test_bad_files_and_arguments_are_one_clear_error(
    tmp_path: Path, command: str, args: list[str], message: str
) -> None:
    (tmp_path / "dir").mkdir()
    (tmp_path / "binary").write_bytes(NOT_UTF8)
    write_outcomes(tmp_path / "out.jsonl", 30, seed=2)
    (tmp_path / "data").mkdir()
    write_outcomes(tmp_path / "data" / "outcomes.jsonl", 30, seed=3)
    write_models(tmp_path / "data" / "models.json")
    (tmp_path / "tiny").mkdir()
    write_outcomes(tmp_path / "tiny" / "outcomes.jsonl", 1, seed=4)
    places = {
        "DIR": tmp_path / "dir",
        "OUT": tmp_path / "out.jsonl",
        "MISSING": tmp_path / "missing.json",
        "BINARY": tmp_path / "binary",
        "TINY": tmp_path / "tiny",
        "DATA": tmp_path / "data",
        "NODIR/x.png": tmp_path / "nodir" / "x.png",
        "PRED": tmp_path / "pred.jsonl",
    }
    with pytest.raises(CommandError, match=message):
        call_command(command, *[str(places.get(a, a)) for a in args], stdout=StringIO(), stderr=StringIO())


@pytest.mark.django_db
def test_evaluate_router_writes_its_plot_under_var_not_the_working_folder(
    tmp_path: Path, settings: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = tmp_path / "tiny-set"
    data.mkdir()
    write_outcomes(data / "outcomes.jsonl", 40, seed=3)
    write_models(data / "models.json")
    settings.VAR_DIR = tmp_path / "var"  # type: ignore[attr-defined]
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    out = StringIO()
    call_command("evaluate_router", "--data", str(data), stdout=out)
    png = tmp_path / "var" / "evaluate_router" / "tiny-set-seed0.png"
    assert png.read_bytes()[:4] == b"\x89PNG" and f"cost–quality curves: {png}" in out.getvalue()
    assert not list(work.iterdir())
