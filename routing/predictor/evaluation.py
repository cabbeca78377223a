"""Evaluating routers on a data set split (pure): SCOPE and the BENCHMARK.md baselines.

`evaluate_split` trains SCOPE on the TRAIN prompts only, predicts TEST, and computes every metric
for SCOPE and for random, always-cheapest, always-best, oracle and kNN-on-TF-IDF routers on the
same TEST prompts. Cost-aware metrics use only the models with prices.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from routing.features import RequestFeatures, extract_prompt_features
from routing.predictor import metrics
from routing.predictor.dataset import DEFAULT_OUTPUT_TOKENS, PromptRecord, record_input_tokens
from routing.predictor.fit import FitParams, Progress, TrainingExample, fit_predictor
from routing.predictor.model import ModelInfo, ScopePredictor
from routing.predictor.text import fit_vocabulary, tfidf_matrix

KNN_K = 20
ROUTERS = ("scope", "knn", "random", "always-cheapest", "always-best", "oracle")


def examples_from_records(
    records: Sequence[PromptRecord], features: Sequence[RequestFeatures], source: str = ""
) -> list[TrainingExample]:
    out = []
    for rec, feats in zip(records, features, strict=True):
        for model, o in rec.outcomes.items():
            out.append(
                TrainingExample(
                    prompt_key=rec.id,
                    features=feats,
                    model=model,
                    score=o.score,
                    output_tokens=o.output_tokens,
                    latency_ms=o.latency_ms,
                    source=source,
                )
            )
    return out


def split(records: Sequence[PromptRecord], seed: int, test_share: float = 0.5) -> tuple[list[int], list[int]]:
    order = np.random.default_rng(seed).permutation(len(records))
    cut = int(round(len(records) * (1 - test_share)))
    return sorted(order[:cut].tolist()), sorted(order[cut:].tolist())


def cost_matrix(
    records: Sequence[PromptRecord], models: Sequence[ModelInfo], all_records: Sequence[PromptRecord]
) -> np.ndarray:
    """USD per (prompt, model) by BENCHMARK.md: unknown lengths = the model's mean in the file, else 256."""
    means = {}
    for m in models:
        known = [r.outcomes[m.name].output_tokens for r in all_records if m.name in r.outcomes]
        known_f = [float(t) for t in known if t is not None]
        means[m.name] = float(np.mean(known_f)) if known_f else DEFAULT_OUTPUT_TOKENS
    out = np.zeros((len(records), len(models)))
    for i, r in enumerate(records):
        tin = record_input_tokens(r)
        for j, m in enumerate(models):
            o = r.outcomes.get(m.name)
            tout = o.output_tokens if o is not None and o.output_tokens is not None else means[m.name]
            out[i, j] = (tin * (m.input_usd_per_mtok or 0.0) + tout * (m.output_usd_per_mtok or 0.0)) / 1e6
    return out


def knn_quality(
    train_feats: Sequence[RequestFeatures],
    train_scores: np.ndarray,
    test_feats: Sequence[RequestFeatures],
    k: int = KNN_K,
) -> np.ndarray:
    """The kNN baseline: mean score of the k most cosine-similar TRAIN prompts on TF-IDF vectors."""
    vocab, idf = fit_vocabulary(train_feats, min_df=1, max_vocab=200_000)
    a = tfidf_matrix(train_feats, vocab, idf)
    b = tfidf_matrix(test_feats, vocab, idf)
    out = np.zeros((len(test_feats), train_scores.shape[1]))
    ok = ~np.isnan(train_scores)
    s = np.where(ok, train_scores, 0.0)
    for start in range(0, len(test_feats), 1000):
        sims = (b[start : start + 1000] @ a.T).toarray()
        kk = min(k, sims.shape[1])
        top = np.argpartition(-sims, kk - 1, axis=1)[:, :kk]
        num = s[top].sum(axis=1)
        den = ok[top].sum(axis=1)
        prior = np.nanmean(train_scores, axis=0)
        out[start : start + 1000] = (num + prior) / (den + 1.0)
    return out


@dataclass
class SplitResult:
    seed: int
    priced_models: list[str]
    unpriced_models: list[str]
    results: dict[str, dict[str, float | None]]
    curves: dict[str, np.ndarray] = field(default_factory=dict)  # router → [points, 2]
    train_seconds: float = 0.0


def evaluate_split(
    records: Sequence[PromptRecord],
    models: dict[str, ModelInfo],
    *,
    seed: int,
    params: FitParams | None = None,
    progress: Progress | None = None,
) -> SplitResult:
    train_idx, test_idx = split(records, seed)
    train = [records[i] for i in train_idx]
    test = [records[i] for i in test_idx]
    feats = [extract_prompt_features(r.prompt) for r in records]
    train_feats = [feats[i] for i in train_idx]
    test_feats = [feats[i] for i in test_idx]
    names = sorted({m for r in records for m in r.outcomes})
    infos = [models.get(n) or ModelInfo(n) for n in names]
    fit = fit_predictor(
        examples_from_records(train, train_feats), infos, seed=seed, params=params, progress=progress
    )
    predictor: ScopePredictor = fit.predictor
    priced = [m for m in infos if m.input_usd_per_mtok is not None and m.output_usd_per_mtok is not None]
    # a priced model missing on a few prompts stays; those prompts leave the cost-aware evaluation
    priced = [m for m in priced if sum(m.name in r.outcomes for r in test) >= 0.9 * len(test)]
    unpriced = [n for n in names if n not in {m.name for m in priced}]
    keep = [i for i, r in enumerate(test) if all(m.name in r.outcomes for m in priced)]
    test = [test[i] for i in keep]
    test_feats = [test_feats[i] for i in keep]
    batch = predictor.predict_batch(test_feats, priced)
    scores = np.asarray([[r.outcomes[m.name].score for m in priced] for r in test])
    costs = cost_matrix(test, priced, records)
    train_scores = np.asarray(
        [[r.outcomes[m.name].score if m.name in r.outcomes else math.nan for m in priced] for r in train]
    )
    rng = np.random.default_rng(seed + 1000)
    ref = metrics.reference(scores, costs)
    routers = {
        "scope": batch.quality,
        "knn": knn_quality(train_feats, train_scores, test_feats),
        "oracle": scores + 1e-9 * (costs.max() - costs),  # the best score, cheapest among ties
    }
    results: dict[str, dict[str, float | None]] = {}
    curves = {}
    for name, quality in routers.items():
        curves[name] = metrics.route_points(quality, scores, costs)
        results[name] = metrics.summarize_points(curves[name], scores, costs)
    # random mixing of the cheapest and the best model, and the two single models, as points
    u = rng.random(len(test))
    rows = np.arange(len(test))
    mix = []
    for share in np.linspace(0.0, 1.0, 101):
        choice = np.where(u < share, ref.best_model, ref.cheap_model)
        mix.append((costs[rows, choice].mean(), scores[rows, choice].mean()))
    curves["random"] = np.asarray(mix)
    results["random"] = metrics.summarize_points(curves["random"], scores, costs)
    for name, j in (("always-cheapest", ref.cheap_model), ("always-best", ref.best_model)):
        curves[name] = np.asarray([[costs[:, j].mean(), scores[:, j].mean()]])
        results[name] = metrics.summarize_points(curves[name], scores, costs)
    results["scope"].update(_prediction_quality(batch.quality, batch.output_tokens, test, priced, scores))
    return SplitResult(
        seed=seed,
        priced_models=[m.name for m in priced],
        unpriced_models=unpriced,
        results=results,
        curves=curves,
        train_seconds=fit.seconds,
    )


def _prediction_quality(
    quality: np.ndarray,
    tokens: np.ndarray,
    test: Sequence[PromptRecord],
    priced: Sequence[ModelInfo],
    scores: np.ndarray,
) -> dict[str, Any]:
    out: dict[str, Any] = {"brier": metrics.brier(quality, scores)}
    out["auc"] = metrics.auc(quality, scores) if metrics.is_binary(scores) else None
    true_tok = np.asarray(
        [
            [
                r.outcomes[m.name].output_tokens if r.outcomes[m.name].output_tokens is not None else np.nan
                for m in priced
            ]
            for r in test
        ],
        dtype=np.float64,
    )
    ok = ~np.isnan(true_tok) & ~np.isnan(tokens)
    out["tokens_mae_log"] = (
        float(np.mean(np.abs(np.log1p(tokens[ok]) - np.log1p(true_tok[ok])))) if ok.any() else None
    )
    return out
