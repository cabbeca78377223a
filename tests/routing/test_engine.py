from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from routing.engine.conditions import ConditionError, evaluate, validate_condition
from routing.engine.decide import UnknownStrategy, decide, with_prior_for_unknown
from routing.engine.prior import PriorPredictor, expected_output_tokens, request_difficulty
from routing.engine.strategies import load_strategies
from routing.engine.types import (
    Candidate,
    ModelSpec,
    PolicySpec,
    Prediction,
    RouteOptions,
    Rule,
    to_decimals,
)
from routing.features import FEATURE_NAMES, RequestFeatures, extract_features

STRATEGIES = load_strategies(["longest-name=tests.routing.custom_strategy.LongestNameStrategy"])


def model(name: str, tier: int, price_in: float, price_out: float, **kw: Any) -> ModelSpec:
    return ModelSpec(
        name=name,
        provider="sim",
        provider_kind="simulated",
        input_usd_per_mtok=price_in,
        output_usd_per_mtok=price_out,
        context_window=kw.pop("context_window", 32000),
        tier=tier,
        **kw,
    )


CATALOG = (
    model("tiny", 1, 0.1, 0.1, tags={"region": "eu"}),
    model("mid", 3, 1.0, 2.0, capabilities=frozenset({"json"}), tags={"region": "us"}),
    model("frontier", 5, 10.0, 30.0, capabilities=frozenset({"json", "vision"}), tags={"region": "us"}),
)
FEATURES = extract_features(
    [{"role": "user", "content": "Explain step by step why the sum of two odd numbers is even."}]
)


def run(
    policy: PolicySpec, options: RouteOptions | None = None, catalog: tuple[ModelSpec, ...] = CATALOG
) -> Any:
    return decide(
        features=FEATURES,
        models=catalog,
        policy=policy,
        options=options or RouteOptions(),
        predictor=None,
        strategies=STRATEGIES,
    )


def run_with(features: Any, policy: PolicySpec) -> Any:
    return decide(
        features=features,
        models=CATALOG,
        policy=policy,
        options=RouteOptions(),
        predictor=None,
        strategies=STRATEGIES,
    )


def test_alpha_one_picks_best_predicted_quality_and_alpha_zero_the_cheapest() -> None:
    assert run(PolicySpec(slug="p", version=1, strategy="pre_inference", alpha=1.0)).model.name == "frontier"
    assert run(PolicySpec(slug="p", version=1, strategy="pre_inference", alpha=0.0)).model.name == "tiny"


def test_every_excluded_model_keeps_its_reason() -> None:
    policy = PolicySpec(slug="p", version=1, denied_models=("tiny",), required_capabilities=("vision",))
    decision = run(policy)
    reasons = {c.model.name: c.excluded_reason for c in decision.candidates}
    assert decision.model.name == "frontier"
    assert "denied" in reasons["tiny"]
    assert "missing capability: vision" in reasons["mid"]
    assert reasons["frontier"] == ""


def test_it_excludes_models_by_tags_context_window_and_request_subset() -> None:
    catalog = (*CATALOG, model("short", 2, 0.2, 0.2, context_window=10, tags={"region": "eu"}))
    decision = run(
        PolicySpec(slug="p", version=1, required_tags={"region": "eu"}),
        RouteOptions(models=("tiny", "short", "mid")),
        catalog,
    )
    reasons = {c.model.name: c.excluded_reason for c in decision.candidates}
    assert decision.model.name == "tiny"
    assert "context window 10" in reasons["short"]
    assert "tag region='us'" in reasons["mid"]
    assert reasons["frontier"] == "not in the request's models"


def test_hard_limits_on_predicted_cost_and_latency_exclude_with_reasons() -> None:
    decision = run(PolicySpec(slug="p", version=1, alpha=1.0, max_cost_usd=0.001))
    frontier = next(c for c in decision.candidates if c.model.name == "frontier")
    assert not frontier.eligible and frontier.excluded_reason.startswith("predicted cost")
    assert decision.model.name != "frontier"
    slow = run(PolicySpec(slug="p", version=1), RouteOptions(max_latency_ms=1.0))
    assert slow.model is None
    assert all(c.excluded_reason.startswith("predicted latency") for c in slow.candidates)


def test_rules_force_exclude_and_set_alpha_in_order() -> None:
    rules = (
        Rule(
            name="no-tiny-for-reasoning",
            when={"feature": "reasoning_signal", "op": ">", "value": 0},
            action="exclude",
            model="tiny",
        ),
        Rule(
            name="vip",
            when={"metadata": "plan", "op": "==", "value": "vip"},
            action="force",
            model="frontier",
        ),
        Rule(
            name="thrifty",
            when={"metadata": "plan", "op": "==", "value": "free"},
            action="set_alpha",
            alpha=0.0,
        ),
    )
    policy = PolicySpec(slug="p", version=1, strategy="hybrid", alpha=0.5, rules=rules)
    vip = run(policy, RouteOptions(metadata={"plan": "vip"}))
    assert vip.model.name == "frontier"
    assert vip.explanation["summary"] == "forced by rule 'vip'"
    free = run(policy, RouteOptions(metadata={"plan": "free"}))
    assert free.alpha == 0.0
    assert free.model.name == "mid"  # tiny excluded by the first rule, mid is the cheapest left
    assert "excluded by rule 'no-tiny-for-reasoning'" in {c.excluded_reason for c in free.candidates}
    # pre_inference ignores rules
    plain = run(
        PolicySpec(slug="p", version=1, strategy="pre_inference", alpha=0.0, rules=rules),
        RouteOptions(metadata={"plan": "vip"}),
    )
    assert plain.model.name == "tiny"


def test_a_forced_model_that_is_not_eligible_is_not_chosen() -> None:
    rules = (
        Rule(
            name="force-frontier",
            when={"metadata": "x", "op": "exists", "value": True},
            action="force",
            model="frontier",
        ),
    )
    decision = run(
        PolicySpec(slug="p", version=1, rules=rules, denied_models=("frontier",)),
        RouteOptions(metadata={"x": 1}),
    )
    assert decision.model.name != "frontier"
    assert any("not eligible" in note for note in decision.explanation["notes"])


def test_rule_and_feature_strategies_rank_without_the_predictor() -> None:
    rule = run(PolicySpec(slug="p", version=1, strategy="rule", options={"default_model": "mid"}))
    assert rule.model.name == "mid" and rule.predictor_version == "none"
    hard = extract_features(
        [{"role": "user", "content": "Prove the theorem step by step and explain why: " + "integral " * 40}]
    )
    easy = extract_features([{"role": "user", "content": "hi"}])
    policy = PolicySpec(slug="p", version=1, strategy="feature", alpha=0.5)
    pick: dict[str, Any] = {
        name: run_with(f, policy).model.tier for name, f in {"hard": hard, "easy": easy}.items()
    }
    assert pick["hard"] > pick["easy"]


def test_a_custom_strategy_loaded_from_a_dotted_path_is_used() -> None:
    decision = run(PolicySpec(slug="p", version=1, strategy="longest-name"))
    assert decision.strategy == "longest-name"
    assert decision.model.name == "frontier"


def test_unknown_strategy_and_bad_strategy_entries_fail_loudly() -> None:
    with pytest.raises(UnknownStrategy):
        run(PolicySpec(slug="p", version=1, strategy="nope"))
    with pytest.raises(ValueError):
        load_strategies(["missing-equals-sign"])


def test_the_prior_predictor_is_named_and_every_candidate_has_predictions() -> None:
    decision = run(PolicySpec(slug="p", version=1))
    assert decision.predictor_version == "prior"
    assert decision.fallbacks and decision.model.name not in decision.fallbacks
    for c in decision.candidates:
        assert c.prediction is not None and 0 <= c.prediction.quality <= 1
        assert c.cost_usd == pytest.approx(
            c.model.cost_usd(FEATURES.input_tokens, c.prediction.output_tokens)
        )


@pytest.mark.parametrize(
    ("cond", "expected"),
    [
        ({"feature": "n_messages", "op": "==", "value": 1}, True),
        ({"metadata": "team", "op": "in", "value": ["a", "b"]}, True),
        ({"not": {"metadata": "team", "op": "==", "value": "a"}}, False),
        (
            {
                "all": [
                    {"feature": "n_messages", "op": ">=", "value": 1},
                    {"metadata": "missing", "op": "==", "value": 1},
                ]
            },
            False,
        ),
        (
            {
                "any": [
                    {"metadata": "team", "op": "==", "value": "z"},
                    {"metadata": "team", "op": "contains", "value": "a"},
                ]
            },
            True,
        ),
        ({"metadata": "team", "op": ">", "value": 3}, False),  # str vs int never raises
    ],
)
def test_conditions_evaluate_safely(cond: dict[str, Any], expected: bool) -> None:
    validate_condition(cond)
    assert evaluate(cond, FEATURES.as_dict(), {"team": "a"}) is expected


@pytest.mark.parametrize(
    "cond",
    [
        {},
        {"feature": "nope", "value": 1},
        {"metadata": "x", "op": "~", "value": 1},
        {"all": []},
        {"metadata": "x", "op": "in", "value": 3},
        {"code": "__import__('os')"},
    ],
)
def test_malformed_conditions_are_rejected(cond: dict[str, Any]) -> None:
    with pytest.raises(ConditionError):
        validate_condition(cond)


def test_what_the_request_needs_excludes_models_without_it_where_the_catalog_declares_it() -> None:
    policy = PolicySpec(slug="p", version=1, strategy="pre_inference", alpha=0.0)
    decision = run(policy, RouteOptions(required_capabilities=("json", "tools")))
    reasons = {c.model.name: c.excluded_reason for c in decision.candidates}
    # no catalog model declares `tools`: it is noted, not a constraint that would exclude them all
    assert decision.model.name == "mid"
    assert reasons == {"tiny": "missing capability: json", "mid": "", "frontier": ""}
    assert "the request needs: json" in decision.explanation["notes"]
    assert any("tools, which no catalog model declares" in n for n in decision.explanation["notes"])
    assert decision.explanation["request"] == {"required_capabilities": ["json", "tools"]}
    vision = run(policy, RouteOptions(required_capabilities=("vision",)))
    assert vision.model.name == "frontier" and vision.fallbacks == ()


def test_models_a_predictor_has_no_data_for_get_the_tier_prior() -> None:
    untrained = Prediction(quality=0.5, uncertainty=0.5, output_tokens=100.0, latency_ms=1000.0, known=False)
    trained = Prediction(quality=0.9, uncertainty=0.1, output_tokens=80.0, latency_ms=500.0)
    filled = with_prior_for_unknown(FEATURES, CATALOG[:2], [trained, untrained])
    assert filled[0] is trained  # what the predictor knows stays
    prior = PriorPredictor().predict(FEATURES, [CATALOG[1]])[0]
    assert filled[1] == prior and filled[1] != untrained  # the live path's and the shadow's prior


def _named_features(**named: float) -> RequestFeatures:
    """Features whose values are 0 but for the named ones (FEATURE_NAMES' names)."""
    values = [named.pop(name, 0.0) for name in FEATURE_NAMES]
    assert not named, f"not feature names: {sorted(named)}"
    return RequestFeatures(values=tuple(values), text="", input_tokens=1)


@pytest.mark.parametrize(
    ("named", "difficulty"),
    [
        ({}, 0.0),
        ({"log_tokens": 8.0}, 0.18),
        ({"code_signal": 4.0}, 0.22),
        ({"math_signal": 8.0}, 0.22),
        ({"reasoning_signal": 1.5}, 0.09),
        ({"n_user_turns": 4.0}, 0.08),
        ({"multilingual": 1.0}, 0.07),
        ({"multiple_choice": 1.0}, 0.05),
        ({"log_tokens": 8.0, "extraction_signal": 3.0}, 0.08),
        ({"creative_signal": 9.0, "max_tokens_log": 9.0, "temperature": 1.0}, 0.0),  # not read
    ],
)
def test_the_priors_difficulty_reads_each_named_value(named: dict[str, float], difficulty: float) -> None:
    assert request_difficulty(_named_features(**named)) == pytest.approx(difficulty)


def test_the_priors_output_length_reads_each_named_value() -> None:
    assert expected_output_tokens(_named_features()) == 220.0
    assert expected_output_tokens(_named_features(code_signal=2.0, creative_signal=2.0)) == 545.0
    assert expected_output_tokens(_named_features(reasoning_signal=3.0, math_signal=4.0)) == 420.0
    assert expected_output_tokens(_named_features(multiple_choice=1.0)) == 110.0
    assert expected_output_tokens(_named_features(max_tokens_log=math.log1p(100))) == pytest.approx(100.0)


@given(
    x=st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False),
    digits=st.sampled_from([1, 4, 6, 8]),
)
def test_to_decimals_is_round_but_for_a_near_half(x: float, digits: int) -> None:
    got = to_decimals(x, digits)
    assert got == round(got, digits)  # a number of that many decimals
    # at most one in the last decimal (give or take the doubles' own spacing near x)
    assert abs(got - round(x, digits)) <= 10.0**-digits + 4 * math.ulp(x)
    if abs(x * 10**digits - round(x * 10**digits)) < 0.49:  # not near a half: the same as round()
        assert got == round(x, digits)


def test_a_candidate_with_a_number_that_is_not_finite_is_logged_as_it_is() -> None:
    spec = CATALOG[0]
    finite = Candidate(
        model=spec, prediction=Prediction(0.72345678, 0.1, 321.06, 812.349), cost_usd=1.23456e-5
    )
    assert finite.as_dict()["predictions"] == {
        "quality": 0.7235,
        "uncertainty": 0.1,
        "output_tokens": 321.1,
        "latency_ms": 812.3,
        "cost_usd": 1.235e-05,
        "known": True,
    }
    odd = Candidate(model=spec, prediction=Prediction(math.nan, 0.1, math.inf, 812.349), utility=-math.inf)
    logged = odd.as_dict()
    assert math.isnan(logged["predictions"]["quality"]) and logged["predictions"]["output_tokens"] == math.inf
    assert logged["utility"] == -math.inf and logged["predictions"]["latency_ms"] == 812.3
