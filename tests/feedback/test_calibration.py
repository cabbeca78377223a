from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from decimal import Decimal
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from django.core.management import CommandError, call_command

from feedback.models import CalibrationStatus, EvalOutcome, ModelCalibration, Outcome
from feedback.services.calibration import calibration_graduate, exact_match, judge_score
from feedback.services.exploration import exploration_gate
from feedback.services.outcomes import TokenCount, outcome_record
from providers.services import model_upsert, provider_upsert
from routing.models import DecisionLog
from routing.selectors import model_specs
from routing.services.route import route_decide
from tests.conftest import USER_MESSAGE
from tests.upstreams import FakeUpstream, Reply

pytestmark = pytest.mark.django_db
KEY_ENV = "SCOPE_TEST_CALIBRATION_KEY"


@pytest.mark.parametrize(
    ("answer", "reference", "expected"),
    [
        ("The answer is B.", "B", True),
        ("(c)", "C", True),
        ("I think A", "B", False),
        ("So she makes 16 - 3 - 4 = 9 eggs, 9 * 2 = 18", "18", True),
        ("She makes 1,000 dollars", "1000", True),
        ("17", "18", False),
        ("  Paris. ", "paris", True),
    ],
)
def test_exact_match_understands_letters_numbers_and_text(
    answer: str, reference: str, expected: bool
) -> None:
    assert exact_match(answer, reference) is expected


def test_judge_scores_map_one_to_ten_onto_zero_to_one() -> None:
    assert judge_score("8") == pytest.approx(7 / 9)
    assert judge_score("Score: 10/10") == 1.0
    assert judge_score(" rating: [[3]].") == pytest.approx(2 / 9)
    assert judge_score("The answer is correct but terse. Rating: [[7]]") == pytest.approx(6 / 9)
    for not_a_rating in ("excellent", "Rate how well … from 1 (useless) to 10", "8 of the 12 steps"):
        with pytest.raises(ValueError, match="not a 1–10 rating"):
            judge_score(not_a_rating)


@pytest.fixture
def upstream(catalog: Any, monkeypatch: pytest.MonkeyPatch, settings: Any) -> Iterator[FakeUpstream]:
    monkeypatch.setenv(KEY_ENV, "sk-test")
    settings.SCOPE_RETRIES_PER_MODEL = 0
    with FakeUpstream(style="openai") as up:
        provider = provider_upsert(
            actor="test",
            name="fake",
            kind="openai_compatible",
            base_url=up.base_url,
            api_key_env=KEY_ENV,
            read_timeout_s=2.0,
        )
        for name, tier in (("newbie", 2), ("judge-model", 5)):
            model_upsert(actor="test",
                name=name, provider=provider.name, input_usd_per_mtok=Decimal("0.01"),
                output_usd_per_mtok=Decimal("0.02"), context_window=32768, tier=tier,
            )  # fmt: skip
        yield up


def test_calibrate_model_runs_anchors_through_the_provider_scores_them_and_opens_exploration(
    upstream: FakeUpstream, tmp_path: Path
) -> None:
    anchors = tmp_path / "anchors.jsonl"
    anchors.write_text(
        "\n".join(
            json.dumps(a)
            for a in [
                {"id": "mc", "prompt": "Which letter? A. x B. y", "reference": "B", "task": "mcq"},
                {"id": "math", "prompt": "What is 6 * 7?", "reference": "42", "task": "math"},
                {"id": "essay", "prompt": "Describe the sea.", "task": "writing"},
            ]
        )
    )
    upstream.script(
        Reply("The answer is B"), Reply("It is 41"), Reply("The sea is wide and blue."), Reply("8")
    )
    out = StringIO()
    call_command("calibrate_model", "newbie", "--anchors", "3", "--anchors-file", str(anchors),
                 "--judge", "judge-model", "--cap", "0.2", stdout=out)  # fmt: skip
    calibration = ModelCalibration.objects.get(model_name="newbie")
    assert calibration.status == CalibrationStatus.EXPLORING and calibration.exploration_cap == 0.2
    assert calibration.anchors == 3
    assert calibration.anchor_score == pytest.approx((1.0 + 0.0 + 7 / 9) / 3)
    assert "3 anchors" in out.getvalue() and "20%" in out.getvalue()
    scores = dict(EvalOutcome.objects.filter(model_name="newbie").values_list("prompt__external_id", "score"))
    assert scores == {"mc": 1.0, "math": 0.0, "essay": pytest.approx(7 / 9)}
    # the calls went through the execution service: logged decisions with recorded outcomes
    assert len(upstream.requests) == 4
    assert Outcome.objects.filter(model_name="newbie", status="ok").count() == 3
    assert DecisionLog.objects.filter(chosen_model="judge-model").count() == 1


def test_calibrate_model_refuses_anchors_without_references_when_no_judge_is_set(
    upstream: FakeUpstream, tmp_path: Path
) -> None:
    anchors = tmp_path / "anchors.jsonl"
    anchors.write_text(json.dumps({"id": "essay", "prompt": "Describe the sea."}))
    with pytest.raises(CommandError, match="judge"):
        call_command("calibrate_model", "newbie", "--anchors-file", str(anchors))
    with pytest.raises(CommandError, match="unknown model"):
        call_command("calibrate_model", "nope", "--anchors-file", str(anchors))


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (["--min-outcomes", "-3"], "must be at least 1"),
        (["--min-outcomes", "0"], "must be at least 1"),
        (["--cap", "nan"], "cap must be in"),
        (["--cap", "1.5"], "cap must be in"),
    ],
)
def test_calibrate_model_refuses_bad_exploration_limits_before_calling_the_model(
    upstream: FakeUpstream, tmp_path: Path, option: list[str], message: str
) -> None:
    anchors = tmp_path / "anchors.jsonl"
    anchors.write_text(json.dumps({"id": "math", "prompt": "What is 6 * 7?", "reference": "42"}))
    with pytest.raises(CommandError, match=message):
        call_command("calibrate_model", "newbie", "--anchors-file", str(anchors), *option)
    assert upstream.requests == [] and not ModelCalibration.objects.exists()


def test_calibrate_model_can_import_the_models_outcomes_from_a_file(catalog: Any, tmp_path: Path) -> None:
    path = tmp_path / "outcomes.jsonl"
    path.write_text(
        "\n".join(
            json.dumps({"id": f"p{i}", "prompt": f"Question {i}", "task": "t",
                        "outcomes": {"small": {"score": i % 2, "output_tokens": 10}, "other": {"score": 1}}})
            for i in range(10)
        )
    )  # fmt: skip
    call_command("calibrate_model", "small", "--from-file", str(path), "--anchors", "6", stdout=StringIO())
    calibration = ModelCalibration.objects.get(model_name="small")
    assert (calibration.anchors, calibration.anchor_score) == (6, 0.5)
    assert calibration.scoring == "imported:outcomes.jsonl"


def test_an_exploring_model_is_a_candidate_only_in_its_capped_share_of_requests(catalog: Any) -> None:
    # `large` would win every request at alpha 1; capped at 10% it may be chosen in at most ~10%
    ModelCalibration.objects.create(model_name="large", exploration_cap=0.1, min_live_outcomes=3)
    specs = model_specs()
    gated = {s.name: s.unavailable_reason for s in exploration_gate(specs, draw=0.5)}
    assert gated["large"].startswith("exploring") and not gated["small"]
    assert not {s.name: s.unavailable_reason for s in exploration_gate(specs, draw=0.05)}["large"]
    assert not {s.name: s.unavailable_reason for s in exploration_gate(specs, requested=["large"], draw=0.9)}[
        "large"
    ]
    chosen = Counter(
        route_decide(messages=USER_MESSAGE(f"Prove theorem {i}"), api_key=None, alpha=1.0).row.chosen_model
        for i in range(300)
    )
    assert 0.03 <= chosen["large"] / 300 <= 0.17, chosen  # cap 0.1; 3 sd of a binomial(300, 0.1) ≈ 0.052
    # enough live outcomes lift the cap
    decision = DecisionLog.objects.filter(chosen_model="large").first()
    assert decision is not None
    for _ in range(3):
        outcome_record(decision_id=decision.pk, model=None, model_name="large", status="ok",
                       tokens=TokenCount(5, 5, False), latency_ms=10.0)  # fmt: skip
    assert calibration_graduate(
        actor="test",
    ) == ["large"]
    assert (
        calibration_graduate(
            actor="test",
        )
        == []
    )  # running it again changes nothing
    assert not {s.name: s.unavailable_reason for s in exploration_gate(model_specs(), draw=0.99)}["large"]


def test_the_anchor_calls_of_a_calibration_do_not_count_as_live_outcomes(
    upstream: FakeUpstream, tmp_path: Path
) -> None:
    anchors = tmp_path / "anchors.jsonl"
    anchors.write_text(
        "\n".join(json.dumps({"id": f"a{i}", "prompt": f"What is {i} + {i}?", "reference": str(2 * i)})
                  for i in range(3))
    )  # fmt: skip
    upstream.script(Reply("0"), Reply("2"), Reply("5"))
    call_command("calibrate_model", "newbie", "--anchors-file", str(anchors), "--min-outcomes", "3",
                 stdout=StringIO())  # fmt: skip
    assert Outcome.objects.filter(model_name="newbie", status="ok").count() == 3  # the anchor calls
    # they are no live traffic: the model keeps exploring until real requests reach it
    assert (
        calibration_graduate(
            actor="test",
        )
        == []
    )
    calibration = ModelCalibration.objects.get(model_name="newbie")
    assert calibration.status == CalibrationStatus.EXPLORING and calibration.live_outcomes == 0

    decision = route_decide(messages=USER_MESSAGE("Hello"), api_key=None, models=["newbie"]).row
    for _ in range(3):
        outcome_record(decision_id=decision.pk, model=None, model_name="newbie", status="ok",
                       tokens=TokenCount(5, 5, False), latency_ms=10.0)  # fmt: skip
    assert calibration_graduate(
        actor="test",
    ) == ["newbie"]


def test_a_recalibrated_model_counts_live_outcomes_from_its_new_start(catalog: Any, tmp_path: Path) -> None:
    path = tmp_path / "outcomes.jsonl"
    path.write_text(json.dumps({"id": "p", "prompt": "Q", "outcomes": {"large": {"score": 1}}}))
    decision = route_decide(messages=USER_MESSAGE("Hello"), api_key=None, models=["large"]).row
    for _ in range(3):  # served long before: a changed deployment is calibrated again now
        outcome_record(decision_id=decision.pk, model=None, model_name="large", status="ok",
                       tokens=TokenCount(5, 5, False), latency_ms=10.0)  # fmt: skip
    call_command(
        "calibrate_model", "large", "--from-file", str(path), "--min-outcomes", "3", stdout=StringIO()
    )
    assert (
        calibration_graduate(
            actor="test",
        )
        == []
    )
    assert ModelCalibration.objects.get(model_name="large").status == CalibrationStatus.EXPLORING


def test_calibrate_model_refuses_an_unknown_judge_before_calling_the_model(
    upstream: FakeUpstream, tmp_path: Path
) -> None:
    anchors = tmp_path / "anchors.jsonl"
    anchors.write_text(json.dumps({"id": "essay", "prompt": "Describe the sea."}))
    with pytest.raises(CommandError, match="unknown judge model 'nope'"):
        call_command("calibrate_model", "newbie", "--anchors-file", str(anchors), "--judge", "nope")
    assert upstream.requests == []
