from __future__ import annotations

import json
from io import StringIO
from pathlib import Path

import pytest
from django.conf import settings
from django.core.management import CommandError, call_command

from tests.feedback.outcome_files import write_models, write_outcomes

MODELS = ("small", "medium", "large")


def _test_file(source: Path, target: Path, *, poison: bool) -> list[str]:
    ids = []
    with open(target, "w") as fh:
        for line in source.read_text().splitlines():
            doc = json.loads(line)
            ids.append(doc["id"])
            test_line = {"id": doc["id"], "prompt": doc["prompt"], "models": list(MODELS)}
            if poison:  # outcomes a leaking predictor would read (or choke on)
                test_line["outcomes"] = {m: {"score": "leak"} for m in MODELS}
                test_line["task"] = "leak"
            fh.write(json.dumps(test_line) + "\n")
    return ids


def test_every_test_prompt_and_model_is_answered_and_no_test_outcome_is_read(tmp_path: Path) -> None:
    train, full = tmp_path / "train.jsonl", tmp_path / "full.jsonl"
    write_outcomes(train, 120, seed=3)
    write_outcomes(full, 40, seed=4, start=1000)
    write_models(tmp_path / "models.json")
    ids = _test_file(full, tmp_path / "test.jsonl", poison=False)
    _test_file(full, tmp_path / "poisoned.jsonl", poison=True)
    outputs = []
    for name in ("test.jsonl", "poisoned.jsonl"):
        out = tmp_path / f"pred-{name}"
        call_command(
            "predict_outcomes",
            "--train", str(train), "--test", str(tmp_path / name),
            "--models", str(tmp_path / "models.json"), "--out", str(out), "--seed", "0",
            stdout=StringIO(),
        )  # fmt: skip
        outputs.append(out.read_text())
    assert outputs[0] == outputs[1]  # what TEST says beyond id/prompt/models changes nothing
    lines = [json.loads(line) for line in outputs[0].splitlines()]
    assert [line["id"] for line in lines] == ids
    for line in lines:
        assert set(line["predictions"]) == set(MODELS)
        for pred in line["predictions"].values():
            assert 0.0 <= pred["quality"] <= 1.0
            assert pred["output_tokens"] is None or pred["output_tokens"] > 0


@pytest.mark.skipif(
    not (Path(settings.SCOPE_DATA_DIR) / "routellm-gsm8k" / "outcomes.jsonl").exists(),
    reason="needs ../shared/data/routellm-gsm8k (settings.SCOPE_DATA_DIR); CI has it",
)
def test_it_predicts_real_data_better_than_the_base_rate(tmp_path: Path) -> None:
    data = Path(settings.SCOPE_DATA_DIR) / "routellm-gsm8k"
    lines = (data / "outcomes.jsonl").read_text().splitlines()
    (tmp_path / "train.jsonl").write_text("\n".join(lines[:500]) + "\n")
    truth = {}
    with open(tmp_path / "test.jsonl", "w") as fh:
        for line in lines[500:700]:
            doc = json.loads(line)
            truth[doc["id"]] = {m: o["score"] for m, o in doc["outcomes"].items()}
            fh.write(
                json.dumps({"id": doc["id"], "prompt": doc["prompt"], "models": sorted(doc["outcomes"])})
                + "\n"
            )
    call_command(
        "predict_outcomes",
        "--train", str(tmp_path / "train.jsonl"), "--test", str(tmp_path / "test.jsonl"),
        "--models", str(data / "models.json"), "--out", str(tmp_path / "pred.jsonl"),
        stdout=StringIO(),
    )  # fmt: skip
    preds = [json.loads(line) for line in (tmp_path / "pred.jsonl").read_text().splitlines()]
    assert len(preds) == 200
    err_model, err_base = 0.0, 0.0
    for p in preds:
        for m, got in p["predictions"].items():
            err_model += (got["quality"] - truth[p["id"]][m]) ** 2
            err_base += (0.5 - truth[p["id"]][m]) ** 2
            assert got["output_tokens"] is not None  # gsm8k has (estimated) lengths
    assert err_model < err_base


def test_a_test_file_with_no_usable_line_is_an_error_not_an_empty_success(tmp_path: Path) -> None:
    train, wrong = tmp_path / "train.jsonl", tmp_path / "outcomes-format.jsonl"
    write_outcomes(train, 60, seed=3)
    write_outcomes(wrong, 5, seed=4, start=1000)  # outcomes format: no "models" list
    err = StringIO()
    with pytest.raises(CommandError, match=r"no TEST prompt could be predicted \(5 lines skipped\)"):
        call_command(
            "predict_outcomes",
            "--train", str(train), "--test", str(wrong), "--out", str(tmp_path / "pred.jsonl"),
            stdout=StringIO(), stderr=err,
        )  # fmt: skip
    assert "skipped: a TEST line needs 'models'" in err.getvalue()
