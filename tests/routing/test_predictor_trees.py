from __future__ import annotations

import numpy as np
import pytest
import xgboost as xgb

from routing.predictor.trees import ForestEvaluator, TreeModelError, ensemble_from_json


def _data(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(600, 12)).astype(np.float32)
    x[rng.random(x.shape) < 0.1] = np.nan  # missing values follow each split's default direction
    a, b = np.nan_to_num(x[:, 0]), np.nan_to_num(x[:, 1])
    y = ((a + b * np.nan_to_num(x[:, 2])) > 0).astype(float)
    return x, y


def test_the_fast_evaluator_equals_xgboost_predictions() -> None:
    x, y = _data()
    quality = xgb.train(
        {"objective": "reg:logistic", "max_depth": 5, "eta": 0.2, "seed": 1}, xgb.DMatrix(x, label=y), 40
    )
    length = xgb.train({"objective": "reg:squarederror", "max_depth": 3}, xgb.DMatrix(x, label=y * 5 + 2), 25)
    evaluator = ForestEvaluator(
        [ensemble_from_json(quality.save_raw("json")), ensemble_from_json(length.save_raw("json"))]
    )
    got = evaluator.predict(x[:200])
    np.testing.assert_allclose(got[:, 0], quality.predict(xgb.DMatrix(x[:200])), atol=1e-5)
    np.testing.assert_allclose(got[:, 1], length.predict(xgb.DMatrix(x[:200])), atol=1e-4)


def test_contributions_equal_xgboost_approximate_pred_contribs() -> None:
    x, y = _data(1)
    booster = xgb.train({"objective": "reg:logistic", "max_depth": 4, "seed": 2}, xgb.DMatrix(x, label=y), 30)
    evaluator = ForestEvaluator([ensemble_from_json(booster.save_raw("json"))])
    for row in (0, 7, 42):
        ours = evaluator.contributions(x[row])
        theirs = booster.predict(xgb.DMatrix(x[row : row + 1]), pred_contribs=True, approx_contribs=True)[0]
        np.testing.assert_allclose(ours, theirs, atol=1e-4)
        # contributions add up to the margin
        assert ours.sum() == pytest.approx(float(evaluator.margins(x[row : row + 1])[0, 0]), abs=1e-4)


def test_it_refuses_an_unsupported_objective() -> None:
    x, y = _data()
    booster = xgb.train({"objective": "count:poisson"}, xgb.DMatrix(x, label=y), 3)
    with pytest.raises(TreeModelError):
        ensemble_from_json(booster.save_raw("json"))
