from __future__ import annotations

import numpy as np
import pytest

from feedback.services.alpha_calibration import describe
from routing.engine.strategies import StrategyContext, utility_rank
from routing.engine.types import Candidate, ModelSpec, PolicySpec, Prediction
from routing.features import extract_prompt_features
from routing.predictor import metrics
from routing.predictor.calibration import choices, choose_for_cost, choose_for_share, sweep


def _two_models(n: int = 400, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    strong = (rng.random(n) < 0.8).astype(float)
    weak = np.where(strong == 1, (rng.random(n) < 0.7).astype(float), (rng.random(n) < 0.2).astype(float))
    scores = np.stack([weak, strong], axis=1)
    costs = np.tile([0.1, 1.0], (n, 1))
    return scores, costs


def test_the_oracle_recovers_more_than_the_whole_gap_and_random_about_half() -> None:
    scores, costs = _two_models()
    ref = metrics.reference(scores, costs)
    assert ref.cheap_model == 0 and ref.best_model == 1
    oracle = metrics.summarize(scores + 1e-9 * (costs.max() - costs), scores, costs)
    assert oracle["apgr"] is not None and oracle["apgr"] > 1.0
    assert oracle["peak"] == pytest.approx(scores.max(axis=1).mean())
    rng = np.random.default_rng(1)
    u = rng.random(len(scores))
    mix = [
        (
            costs[np.arange(len(u)), np.where(u < s, 1, 0)].mean(),
            scores[np.arange(len(u)), np.where(u < s, 1, 0)].mean(),
        )
        for s in np.linspace(0, 1, 201)
    ]
    random_apgr = metrics.apgr(metrics.envelope(np.asarray(mix)), ref)
    assert random_apgr == pytest.approx(0.5, abs=0.05)


def test_apgr_is_none_when_the_cheapest_model_is_also_the_best() -> None:
    scores = np.array([[1.0, 0.0], [1.0, 1.0]])
    costs = np.array([[0.1, 1.0], [0.1, 1.0]])
    result = metrics.summarize(np.array([[0.9, 0.1], [0.9, 0.8]]), scores, costs)
    assert result["apgr"] is None and result["peak"] == 1.0


def test_cpt_and_savings_follow_the_curve() -> None:
    # two points: cheap (0.1, 0.5) and a router point (0.4, 0.9) with q_best 0.9 at cost 1.0
    ref = metrics.Reference(
        q_cheap=0.5, c_cheap=0.1, q_best=0.9, c_best=1.0, cheap_model=0, best_model=1, oracle=1
    )
    curve = metrics.envelope(np.array([[0.1, 0.5], [0.4, 0.9], [1.0, 0.9]]))
    assert metrics.cpt(curve, ref, 0.5) == pytest.approx(0.4)
    assert metrics.savings_at(curve, ref, 0.95) == pytest.approx(0.6)
    # q(c) is a step: 0.5 until 0.4, then 0.9 → APGR = share of [0.1, 1.0] above 0.4
    assert metrics.apgr(curve, ref) == pytest.approx(0.6 / 0.9, abs=0.01)


def test_auc_and_brier_match_hand_computed_values() -> None:
    pred = np.array([0.9, 0.8, 0.3, 0.2, 0.8])
    truth = np.array([1, 0, 1, 0, 1])
    # positive/negative pairs: (0.9>0.8,0.2), (0.3<0.8,>0.2), (0.8=0.8 tie, >0.2) → (2 + 1 + 1.5) / 6
    assert metrics.auc(pred, truth) == pytest.approx(4.5 / 6)
    assert metrics.brier(pred, truth) == pytest.approx(np.mean((pred - truth) ** 2))
    assert metrics.auc(pred, np.ones(5)) is None


def test_calibration_replays_the_engines_own_choice() -> None:
    rng = np.random.default_rng(3)
    features = extract_prompt_features("hello")
    specs = [ModelSpec(f"m{j}", "p", "simulated", 1.0, 1.0, 8192, 3) for j in range(4)]
    policy = PolicySpec(slug="s", version=1)
    for _ in range(50):
        q, u, c = rng.random(4), rng.random(4) * 0.2, rng.random(4) * 0.01
        alpha = float(rng.random())
        cands = []
        for j, spec in enumerate(specs):
            cand = Candidate(
                model=spec, prediction=Prediction(q[j], u[j], 100.0, 100.0), cost_usd=float(c[j])
            )
            cands.append(cand)
        ranked = utility_rank(cands, StrategyContext(features, policy, alpha, {}))
        ours = choices(alpha, q[None], u[None], c[None], risk_aversion=0.5)[0]
        assert ranked[0].model.name == f"m{ours}"


def test_alpha_calibration_hits_a_target_share_and_a_cost_budget() -> None:
    rng = np.random.default_rng(4)
    n = 500
    q = np.stack([rng.uniform(0.3, 0.7, n), rng.uniform(0.5, 0.95, n)], axis=1)
    u = np.zeros_like(q)
    c = np.tile([0.001, 0.01], (n, 1))
    points = sweep(q, u, c, risk_aversion=0.0)
    assert points[0].shares[0] == 1.0  # α = 0: the cheapest
    assert points[-1].shares[1] == pytest.approx(np.mean(q[:, 1] > q[:, 0]))  # α = 1: the best prediction
    chosen = choose_for_share(points, 1, 0.3)
    assert chosen.shares[1] == pytest.approx(0.3, abs=0.05)
    budget = choose_for_cost(points, 0.004)
    assert budget.mean_cost <= 0.004


def test_the_true_score_says_over_how_many_requests_it_is_known() -> None:
    q = np.array([[0.2, 0.9], [0.3, 0.8], [0.4, 0.7], [0.1, 0.6]])
    truth = np.array([[0.0, 1.0], [np.nan, np.nan], [1.0, np.nan], [0.0, 1.0]])  # gaps: models without data
    best = sweep(q, np.zeros_like(q), np.tile([0.001, 0.01], (4, 1)), risk_aversion=0.0, truth=truth)[-1]
    assert best.shares[1] == 1.0 and (best.true_n, best.mean_true) == (2, 1.0)
    said = describe(best, ["cheap", "best"], 4)
    assert "true score 1.000 (over the 2 of 4 requests whose chosen model has an outcome)" in said
