"""The ridge text heads: per model while that is cheap, on the score matrix's components at scale."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from scipy import sparse

from routing.predictor import text
from routing.predictor.text import fit_heads, score_basis


def _problem(n: int = 400, v: int = 300, m: int = 12, seed: int = 0) -> tuple[Any, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = sparse.random(n, v, density=0.05, random_state=seed, format="csr")
    skill = rng.normal(size=(v, 3))
    loadings = rng.normal(size=(3, m))
    scores = 1 / (1 + np.exp(-(x @ skill @ loadings + rng.normal(scale=0.3, size=(n, m)))))
    folds = rng.integers(0, 3, size=n)
    return x, scores, folds


def test_no_components_are_taken_for_a_group_no_larger_than_the_allowed_count() -> None:
    x, scores, _ = _problem(m=3)
    assert score_basis(scores, 4) is None  # 3 models, 4 components allowed: every model its own head


def test_at_scale_the_heads_are_the_per_model_heads_projected_on_the_leading_components(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    x, scores, folds = _problem()
    oof_exact, exact = fit_heads(x, scores, folds, 3, alpha=1.0)
    # 400 prompts and a budget of 1,600 scores: 4 components for 12 models
    monkeypatch.setattr(text, "HEAD_TARGET_BUDGET", 1_600)
    oof_latent, latent = fit_heads(x, scores, folds, 3, alpha=1.0)

    basis = score_basis(scores, 4)
    assert basis is not None
    projector = basis[1].T @ basis[1]  # [m, m], onto the 4 leading components
    # a ridge fit is linear in its targets: fitting the components equals projecting the per-model fit
    scale = np.abs(exact.coef).max()
    np.testing.assert_allclose(latent.coef, exact.coef @ projector, atol=2e-3 * scale)
    np.testing.assert_allclose(oof_latent, (oof_exact - basis[0]) @ projector + basis[0], atol=2e-3)

    # and it keeps most of what the per-model heads predict out of fold
    def r2(pred: np.ndarray) -> float:
        return 1 - float(((pred - scores) ** 2).sum() / ((scores - scores.mean(0)) ** 2).sum())

    assert r2(oof_latent) > 0.9 * r2(oof_exact) > 0


def test_with_every_component_the_heads_equal_the_per_model_heads(monkeypatch: pytest.MonkeyPatch) -> None:
    x, scores, folds = _problem(m=5)
    oof_exact, exact = fit_heads(x, scores, folds, 3, alpha=[1.0, 3.0])
    center, components = score_basis(scores, 4) or (None, None)
    assert components is not None and components.shape == (4, 5)
    full = np.linalg.svd(scores - scores.mean(0), full_matrices=False)[2]
    monkeypatch.setattr(text, "score_basis", lambda y, k: (y.mean(axis=0), full))
    oof_full, heads_full = fit_heads(x, scores, folds, 3, alpha=[1.0, 3.0])
    np.testing.assert_allclose(heads_full.coef, exact.coef, atol=2e-3 * np.abs(exact.coef).max())
    np.testing.assert_allclose(heads_full.intercept, exact.intercept, atol=2e-3)
    np.testing.assert_allclose(oof_full, oof_exact, atol=2e-3)


def test_each_booster_trains_on_at_most_the_row_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    import dataclasses

    import xgboost as xgb

    from routing.predictor.fit import fit_predictor
    from tests.routing import predictor_data as data

    train, _ = data.examples(120, seed=1)  # 120 prompts × 4 models: 480 rows
    rows: list[int] = []
    real = xgb.DMatrix

    def recording(matrix: Any, *args: Any, **kwargs: Any) -> Any:
        rows.append(len(matrix))
        return real(matrix, *args, **kwargs)

    monkeypatch.setattr(xgb, "DMatrix", recording)
    fit_predictor(train, data.infos(), seed=0, params=data.FAST)
    assert max(rows) > 200  # uncapped, the quality boosters see every row
    rows.clear()
    fit_predictor(train, data.infos(), seed=0, params=dataclasses.replace(data.FAST, max_booster_rows=200))
    assert rows and max(rows) <= 200


@pytest.mark.parametrize("alpha", [0.3, 3.0, 30.0])
def test_the_block_solve_reaches_sklearns_ridge_for_every_target(alpha: float) -> None:
    from sklearn.linear_model import Ridge

    from routing.predictor.text import ridge_block

    x, scores, _ = _problem(n=300, v=500, m=6)
    reference = Ridge(alpha=alpha, tol=1e-8).fit(x, scores)
    coef, intercept, dual = ridge_block(x, scores, alpha, tol=1e-8)
    np.testing.assert_allclose(coef, reference.coef_.T, atol=1e-6)
    np.testing.assert_allclose(intercept, reference.intercept_, atol=1e-6)
    # warm-started from another penalty's solution, it ends at the same place
    warm, _, _ = ridge_block(x, scores, alpha, start=ridge_block(x, scores, alpha * 3)[2], tol=1e-8)
    np.testing.assert_allclose(warm, coef, atol=1e-6)


def test_models_missing_a_few_answers_are_fitted_as_one_group_at_scale(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from routing.predictor.text import head_groups

    rng = np.random.default_rng(3)
    scores = rng.random((200, 6))
    for j in range(4):  # models 0-3 miss a different handful of answers; 4 and 5 answered a third
        scores[rng.choice(200, 5, replace=False), j] = np.nan
    scores[67:, 4:] = np.nan
    same, groups = head_groups(scores)
    assert same is scores and sorted(map(sorted, groups)) == [[0], [1], [2], [3], [4, 5]]  # within budget
    monkeypatch.setattr(text, "HEAD_TARGET_BUDGET", 500)
    filled, groups = head_groups(scores)
    assert sorted(map(sorted, groups)) == [[0, 1, 2, 3], [4, 5]]
    assert not np.isnan(filled[:, :4]).any() and np.isnan(filled[67:, 4:]).all()
    gap = np.isnan(scores[:, 0])
    np.testing.assert_allclose(filled[gap, 0], np.nanmean(scores[:, 0]))  # the model's mean, for fitting only
    np.testing.assert_array_equal(filled[~gap, 0], scores[~gap, 0])


def test_nb_scaled_heads_store_coefficients_on_the_unscaled_input() -> None:
    from sklearn.linear_model import Ridge

    x, scores, folds = _problem(m=3)
    oof, heads = fit_heads(x, scores, folds, 3, alpha=[1.0], nb_beta=0.5)
    presence = x.copy()
    presence.data[:] = 1.0
    for j in range(3):
        scale = text.nb_scale(presence, scores[:, j], 0.5)
        direct = Ridge(alpha=1.0).fit(x @ sparse.diags(scale), scores[:, j]).predict(x @ sparse.diags(scale))
        served = x @ heads.coef[:, j].astype(np.float64) + heads.intercept[j]
        np.testing.assert_allclose(served, direct, atol=1e-4)
    # out of fold it still predicts the scores (the toy problem is learnable)
    assert np.corrcoef(oof.ravel(), scores.ravel())[0, 1] > 0.3
    # nb_beta = 0 is the plain ridge
    plain_oof, plain = fit_heads(x, scores, folds, 3, alpha=[1.0])
    zero_oof, zero = fit_heads(x, scores, folds, 3, alpha=[1.0], nb_beta=0.0)
    np.testing.assert_array_equal(zero.coef, plain.coef)


def test_training_says_how_far_it_is_inside_the_heads_and_every_booster_round() -> None:
    from routing.predictor.fit import fit_predictor
    from tests.routing import predictor_data as data

    said: list[tuple[float, str]] = []
    train, _ = data.examples(120, seed=1)
    fit_predictor(train, data.infos(), seed=0, params=data.FAST, progress=lambda f, m: said.append((f, m)))
    heads = [f for f, m in said if m.startswith("text heads")]
    assert heads and math.isclose(heads[-1], 0.3) and heads == sorted(heads)  # 0.2 → 0.3, one per model
    rounds = [m for _, m in said if m.startswith("quality model 1/2, round ")]
    assert len(rounds) > 10 and rounds[0].endswith("round 1")
    fractions = [f for f, _ in said]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0


def test_character_weights_from_the_bucket_table_equal_the_searched_ones() -> None:
    # char_weights looks buckets up in a table of every bucket's column; sparse_weights searches the
    # sorted vocabulary: the columns and weights must be the same, buckets outside the vocabulary too
    from routing.features import CHAR_BUCKETS, extract_prompt_features
    from routing.predictor.text import TextProjection, _bag, sparse_weights

    rng = np.random.default_rng(3)
    texts = [
        "What is 2 + 2? Explain step by step.",
        "Écrivez un poème 😀 sur les routeurs",
        "x",
        "",
        "a" * 5000,
    ]
    features = [extract_prompt_features(t) for t in texts]
    seen = np.unique(
        np.concatenate([np.frombuffer(f.char_ids, dtype="<u4") for f in features]).astype(np.int64)
    )
    vocab = np.sort(rng.choice(seen, size=len(seen) // 2, replace=False))  # about half the buckets known
    projection = TextProjection(
        vocab=np.zeros(0, dtype=np.int64),
        idf=np.zeros(0, dtype=np.float32),
        components=np.zeros((0, 4), dtype=np.float32),
        char_vocab=vocab,
        char_idf=rng.uniform(1, 5, size=len(vocab)).astype(np.float32),
    )
    assert len(projection._char_columns) == CHAR_BUCKETS  # the table serves, not the fallback
    for f in features:
        cols, w = projection.char_weights(f)
        want_cols, want_w = sparse_weights(projection.char_vocab, projection.char_idf, *_bag(f, True))
        assert cols.dtype == want_cols.dtype and np.array_equal(cols, want_cols)
        assert w.dtype == want_w.dtype and np.array_equal(w, want_w)
