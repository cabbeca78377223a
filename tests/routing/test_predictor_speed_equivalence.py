"""The fast one-request path (serving.py + the folded-NaN forest) gives the batched path's and XGBoost's outputs."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import xgboost as xgb

from routing.engine.types import ModelSpec
from routing.features import extract_prompt_features
from routing.predictor.fit import fit_predictor
from routing.predictor.model import ScopePredictor
from routing.predictor.trees import ForestEvaluator, ensemble_from_json
from tests.routing.predictor_data import FAST, PRICES, SKILLS, examples, infos, prompts, served_predictor

TOL = 1e-5


def _spec(name: str, tier: int = 2) -> ModelSpec:
    price = PRICES.get(name, (1.5, 3.0))
    return ModelSpec(
        name=name,
        provider="sim",
        provider_kind="simulated",
        input_usd_per_mtok=price[0],
        output_usd_per_mtok=price[1],
        context_window=8192,
        tier=tier,
    )


@pytest.fixture(scope="module")
def predictor() -> ScopePredictor:
    p = served_predictor()
    assert p.roles == [
        "quality",
        "quality",
        "prompt_mean",
        "prompt_mean",
        "relative",
        "relative",
        "tokens",
        "latency",
    ]
    assert "anchor-only" in p.anchors.index
    return p


def _requests() -> list:
    texts = [text for _, text in prompts(12, seed=99)]
    texts += ["", "zzzz qqqq unseen words entirely", "Explain the court appeal of a contract " * 20]
    return [extract_prompt_features(t) for t in texts]


def _candidates() -> list[ModelSpec]:
    return [_spec(m, tier=1 + i % 4) for i, m in enumerate(SKILLS)] + [
        _spec("anchor-only"),
        _spec("brand-new"),
    ]


def test_predict_equals_the_batched_path(predictor: ScopePredictor) -> None:
    specs = _candidates()
    for features in _requests():
        batch = predictor.predict_batch([features], [predictor._info(s) for s in specs])
        fast = predictor.predict(features, specs)
        assert [p.known for p in fast] == batch.known.tolist() == [True] * 5 + [False]
        for j, p in enumerate(fast[:-1]):
            assert p.quality == pytest.approx(batch.quality[0, j], abs=TOL)
            assert p.uncertainty == pytest.approx(batch.uncertainty[0, j], abs=TOL)
            assert p.output_tokens == pytest.approx(batch.output_tokens[0, j], abs=TOL)
            assert p.latency_ms == pytest.approx(batch.latency_ms[0, j], abs=TOL)
        assert (fast[-1].quality, fast[-1].uncertainty, fast[-1].output_tokens) == (0.5, 0.5, 256.0)


def test_fast_rows_are_the_design_rows_and_predictions_are_xgboosts(predictor: ScopePredictor) -> None:
    specs = _candidates()
    boosters = []
    for raw in predictor.boosters:
        b = xgb.Booster()
        b.load_model(bytearray(raw))
        boosters.append(b)
    for features in _requests():
        x, known = predictor.design([features], [predictor._info(s) for s in specs])
        rows = predictor.plan.rows(features, predictor.plan.layout(specs))
        np.testing.assert_allclose(rows, x[known], rtol=0, atol=TOL, equal_nan=True)
        theirs = np.stack([b.inplace_predict(rows) for b in boosters], axis=1)
        fast = predictor.predict(features, specs)
        # half the quality ensemble, half the decomposed pair (prompt mean + the model's deviation)
        decomposed = theirs[:, 2:4].mean(axis=1) + theirs[:, 4:6].mean(axis=1)
        quality = 0.5 * theirs[:, :2].mean(axis=1) + 0.5 * decomposed
        np.testing.assert_allclose([p.quality for p in fast[:5]], np.clip(quality, 0, 1), atol=TOL)
        np.testing.assert_allclose(
            [p.output_tokens for p in fast[:5]], np.maximum(np.expm1(theirs[:, 6]), 1.0), rtol=TOL
        )
        np.testing.assert_allclose([p.latency_ms for p in fast[:5]], np.expm1(theirs[:, 7]), rtol=TOL)


def test_contributions_equal_xgboost_approximate_contributions(predictor: ScopePredictor) -> None:
    quality = xgb.Booster()
    quality.load_model(bytearray(predictor.boosters[0]))
    for features in _requests()[:6]:
        for spec in (_spec("large"), _spec("anchor-only")):
            got = predictor.contributions(features, spec, top=8)
            x, _ = predictor.design([features], [predictor._info(spec)])
            theirs = quality.predict(
                xgb.DMatrix(x, feature_names=list(predictor.names)), pred_contribs=True, approx_contribs=True
            )[0]
            assert got, "a known model always has contributions"
            for item in got:
                i = predictor.names.index(item["feature"])
                assert item["contribution"] == pytest.approx(theirs[i], abs=TOL)
            top = sorted(np.abs(theirs[:-1]), reverse=True)[: len(got)]
            np.testing.assert_allclose(
                sorted((abs(g["contribution"]) for g in got), reverse=True), top, atol=TOL
            )
    assert predictor.contributions(_requests()[0], _spec("brand-new")) == []


def _saabas_level_by_level(evaluator: ForestEvaluator, x: np.ndarray, booster: int) -> np.ndarray:
    """The Saabas walk adding each level's steps with np.add.at (contributions() before bincount)."""
    e = evaluator.ensembles[booster]
    out = np.zeros(evaluator.n_features + 1, dtype=np.float64)
    out[-1] = e.base_margin + float(e.node_means[:, 0].sum())
    trees, node = np.arange(e.n_trees), np.zeros(e.n_trees, dtype=np.int64)
    for _ in range(e.depth):
        feat = e.features[trees, node]
        value = x[feat]
        go_left = (value < e.thresholds[trees, node]) | (np.isnan(value) & e.default_left[trees, node])
        child = 2 * node + 2 - go_left
        np.add.at(out, feat, e.node_means[trees, child] - e.node_means[trees, node])
        node = child
    return out


def test_contributions_sum_each_feature_in_the_level_by_level_order(predictor: ScopePredictor) -> None:
    specs = _candidates()
    for features in _requests():
        rows = predictor.plan.rows(features, predictor.plan.layout(specs))
        for row in rows:
            for booster in (0, 1, 6):
                np.testing.assert_array_equal(
                    predictor.evaluator.contributions(row, booster),
                    _saabas_level_by_level(predictor.evaluator, row, booster),
                )


def test_candidate_lists_are_memoised_by_identity_and_rebuilt_for_new_objects(
    predictor: ScopePredictor,
) -> None:
    specs = _candidates()
    plan = predictor.plan
    assert plan.layout(specs) is plan.layout(list(specs))
    renamed = [replace(s, name="brand-new") if s.name == "large" else s for s in specs]
    layout = plan.layout(renamed)
    assert layout.known == (True, True, False, True, True, False)
    features = _requests()[0]
    again = predictor.predict(features, renamed)
    assert not again[2].known and again[0].quality == predictor.predict(features, specs)[0].quality


def test_folded_nan_forest_equals_the_reference_evaluator_and_xgboost() -> None:
    rng = np.random.default_rng(4)
    x = rng.normal(size=(500, 9)).astype(np.float32)
    x[rng.random(x.shape) < 0.2] = np.nan
    y = (np.nan_to_num(x[:, 0]) + np.nan_to_num(x[:, 1]) * 0.5 > 0).astype(float)
    shallow = xgb.train({"objective": "reg:squarederror", "max_depth": 2}, xgb.DMatrix(x, label=y), 7)
    deep = xgb.train({"objective": "reg:logistic", "max_depth": 6, "seed": 3}, xgb.DMatrix(x, label=y), 30)
    evaluator = ForestEvaluator([ensemble_from_json(b.save_raw("json")) for b in (deep, shallow)])
    test = x[:200].copy()
    test[0, :] = np.nan
    test[1, :] = np.inf
    test[2, :] = -np.inf
    np.testing.assert_array_equal(evaluator.margins(test), evaluator.margins_reference(test))
    got = evaluator.predict(test)[3:]  # XGBoost refuses infinite inputs
    np.testing.assert_allclose(got[:, 0], deep.predict(xgb.DMatrix(test[3:])), atol=TOL)
    np.testing.assert_allclose(got[:, 1], shallow.predict(xgb.DMatrix(test[3:])), atol=TOL)
    np.testing.assert_array_equal(evaluator.margins(test[:0]).shape, (0, 2))


def test_without_a_latency_model_latency_is_the_tier_prior_of_the_predicted_length() -> None:
    from routing.engine.prior import _TIER_SPEED

    train, _ = examples(80, seed=8)
    p = fit_predictor(train, infos(), seed=2, params=FAST).predictor
    assert "latency" not in p.roles
    specs = _candidates()
    for features in _requests()[:4]:
        batch = p.predict_batch([features], [p._info(s) for s in specs])
        fast = p.predict(features, specs)
        for j, (spec, pred) in enumerate(zip(specs[:4], fast[:4], strict=True)):
            ttft, tps = _TIER_SPEED[spec.tier]
            assert pred.output_tokens == pytest.approx(batch.output_tokens[0, j], abs=TOL)
            assert pred.latency_ms == pytest.approx(
                ttft + features.input_tokens * 0.05 + pred.output_tokens / tps * 1000.0, abs=TOL
            )
            assert pred.quality == pytest.approx(batch.quality[0, j], abs=TOL)
