"""Training-set assembly, training and evaluation of the pre-inference predictor.

The API other parts of SCOPE (the feedback loop, commands, Celery tasks) call:

- ``TrainingExample(prompt_key, features, model, score, output_tokens=None, latency_ms=None,
  weight=1.0, source="")`` — one (request, model) outcome. ``features`` is a RequestFeatures:
  from a decision log row use ``routing.features.request_features_from_log(row.features,
  row.feature_schema, row.prompt)`` (a redacted row's logged n-grams stand for its empty prompt);
  for imported prompts ``extract_prompt_features``.
  Examples sharing ``prompt_key`` are the same request (e.g. ``f"decision:{row.id}"``).
- ``ModelInfo`` (routing.predictor.model) or ``ModelSpec``: prices, context window, tier;
  ``model_infos(specs)`` converts catalog specs.
- ``predictor_train(*, examples, models, seed=0, holdout_share=0.2, progress=None)
  -> TrainedPredictor``: splits the requests (by prompt_key) into train and held-out, trains on
  the train part, evaluates on the held-out part (``metrics``), and returns the artifact bytes
  ready for ``feedback.services.registry.predictor_version_save``.
- ``predictor_evaluate(*, predictor, examples) -> dict``: Brier, AUC (binary scores), log-length
  error, and a routing APGR over the priced models when the examples allow it; the same
  function compares a challenger with the active champion on one held-out set.
- ``examples_from_eval_outcomes(*, source=None)``: imported evaluation data as examples.

``progress(fraction, message)`` is called as training advances (TrainingRun progress, tqdm).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from routing.engine.types import ModelSpec
from routing.features import RequestFeatures, extract_prompt_features
from routing.predictor import metrics
from routing.predictor.artifact import pack
from routing.predictor.fit import FitParams, TrainingExample, fit_predictor
from routing.predictor.model import ModelInfo, ScopePredictor

__all__ = [
    "TrainedPredictor",
    "TrainingExample",
    "examples_from_eval_outcomes",
    "model_infos",
    "predictor_evaluate",
    "predictor_train",
]

Progress = Callable[[float, str], None]


@dataclass
class TrainedPredictor:
    predictor: ScopePredictor
    artifact: bytes
    metrics: dict[str, Any]
    counts: dict[str, int]
    training_seconds: float
    lineage: dict[str, Any] = field(default_factory=dict)
    holdout: list[TrainingExample] = field(default_factory=list)


def model_infos(models: Iterable[ModelInfo | ModelSpec]) -> list[ModelInfo]:
    return [m if isinstance(m, ModelInfo) else ModelInfo.from_spec(m) for m in models]


def split_examples(
    examples: Sequence[TrainingExample], *, seed: int, holdout_share: float
) -> tuple[list[TrainingExample], list[TrainingExample]]:
    keys = sorted({e.prompt_key for e in examples})
    rng = np.random.default_rng(seed)
    held = {k for k, u in zip(keys, rng.random(len(keys)), strict=True) if u < holdout_share}
    if len(keys) - len(held) < 2:
        held = set()
    return [e for e in examples if e.prompt_key not in held], [e for e in examples if e.prompt_key in held]


def predictor_train(
    *,
    examples: Sequence[TrainingExample],
    models: Iterable[ModelInfo | ModelSpec],
    seed: int = 0,
    holdout_share: float = 0.2,
    params: FitParams | None = None,
    progress: Progress | None = None,
    lineage: dict[str, Any] | None = None,
) -> TrainedPredictor:
    infos = model_infos(models)
    train, holdout = split_examples(examples, seed=seed, holdout_share=holdout_share)
    fit = fit_predictor(train, infos, seed=seed, params=params, progress=progress)
    measured = predictor_evaluate(predictor=fit.predictor, examples=holdout, models=infos) if holdout else {}
    sources: dict[str, int] = {}
    for e in examples:
        sources[e.source or "unknown"] = sources.get(e.source or "unknown", 0) + 1
    full_lineage = {**(lineage or {}), "sources": sources, "seed": seed, "holdout_share": holdout_share}
    counts = {**fit.counts, "holdout_examples": len(holdout)}
    artifact = pack(
        fit.predictor,
        metadata={
            "metrics": measured,
            "lineage": full_lineage,
            "counts": counts,
            "training_seconds": fit.seconds,
        },
    )
    return TrainedPredictor(
        predictor=fit.predictor,
        artifact=artifact,
        metrics=measured,
        counts=counts,
        training_seconds=fit.seconds,
        lineage=full_lineage,
        holdout=holdout,
    )


def predictor_evaluate(
    *,
    predictor: Any,
    examples: Sequence[TrainingExample],
    models: Iterable[ModelInfo | ModelSpec] = (),
) -> dict[str, Any]:
    """Held-out metrics of any predictor with `predict_batch` (ScopePredictor) on the examples."""
    if not examples:
        return {}
    infos = {m.name: m for m in model_infos(models)}
    keys: dict[str, int] = {}
    feats: list[RequestFeatures] = []
    for e in examples:
        if e.prompt_key not in keys:
            keys[e.prompt_key] = len(feats)
            feats.append(e.features)
    names = sorted({e.model for e in examples})
    col = {n: j for j, n in enumerate(names)}
    batch = predictor.predict_batch(feats, [infos.get(n) or ModelInfo(n) for n in names])
    q = np.asarray([batch.quality[keys[e.prompt_key], col[e.model]] for e in examples])
    y = np.asarray([e.score for e in examples])
    out: dict[str, Any] = {
        "examples": len(examples),
        "brier": metrics.brier(q, y),
        # the best constant guess (the held-out mean score): a predictor must do better to be worth serving
        "brier_constant": metrics.brier(np.full_like(y, float(y.mean()), dtype=float), y),
    }
    if metrics.is_binary(y):
        out["auc"] = metrics.auc(q, y)
    tok_pairs = [
        (batch.output_tokens[keys[e.prompt_key], col[e.model]], e.output_tokens)
        for e in examples
        if e.output_tokens is not None
    ]
    tok_pairs = [(p, t) for p, t in tok_pairs if not math.isnan(p)]
    if tok_pairs:
        out["tokens_mae_log"] = float(np.mean([abs(math.log1p(p) - math.log1p(t)) for p, t in tok_pairs]))
    out.update(_routing_metrics(batch.quality, examples, keys, names, infos))
    return out


def _routing_metrics(
    quality: np.ndarray,
    examples: Sequence[TrainingExample],
    keys: dict[str, int],
    names: list[str],
    infos: dict[str, ModelInfo],
) -> dict[str, Any]:
    """APGR over priced models on the prompts every priced model answered (when ≥ 2 and ≥ 10 prompts)."""
    priced = [n for n in names if infos.get(n) and infos[n].input_usd_per_mtok is not None]
    if len(priced) < 2:
        return {}
    full: dict[int, dict[str, TrainingExample]] = {}
    for e in examples:
        if e.model in priced:
            full.setdefault(keys[e.prompt_key], {})[e.model] = e
    rows = [i for i, got in full.items() if len(got) == len(priced)]
    if len(rows) < 10:
        return {}
    cols = [names.index(n) for n in priced]
    scores = np.asarray([[full[i][n].score for n in priced] for i in rows])
    costs = np.asarray(
        [
            [
                (
                    full[i][n].features.input_tokens * (infos[n].input_usd_per_mtok or 0.0)
                    + (full[i][n].output_tokens or 256.0) * (infos[n].output_usd_per_mtok or 0.0)
                )
                / 1e6
                for n in priced
            ]
            for i in rows
        ]
    )
    summary = metrics.summarize(quality[np.ix_(rows, cols)], scores, costs)
    return {"apgr": summary["apgr"], "peak_quality": summary["peak"], "q_best": summary["q_best"]}


def examples_from_eval_outcomes(
    *, source: str | None = None
) -> tuple[list[TrainingExample], list[ModelInfo]]:
    """Imported evaluation data (EvalPrompt/EvalOutcome) as training examples, plus known model info."""
    from feedback.models import EvalOutcome

    qs = EvalOutcome.objects.select_related("prompt").order_by("prompt_id", "model_name")
    if source:
        qs = qs.filter(prompt__source=source)
    examples: list[TrainingExample] = []
    feats_cache: dict[int, Any] = {}
    for row in qs.iterator(chunk_size=5000):
        feats = feats_cache.get(row.prompt_id)
        if feats is None:
            feats = feats_cache[row.prompt_id] = extract_prompt_features(row.prompt.prompt)
        examples.append(
            TrainingExample(
                prompt_key=f"eval:{row.prompt_id}",
                features=feats,
                model=row.model_name,
                score=row.score,
                output_tokens=row.output_tokens,
                latency_ms=row.latency_ms,
                source=row.prompt.source,
            )
        )
    return examples, _catalog_infos()


def _catalog_infos() -> list[ModelInfo]:
    from providers.models import LLMModel

    return [
        ModelInfo(
            name=m.name,
            input_usd_per_mtok=float(m.input_usd_per_mtok),
            output_usd_per_mtok=float(m.output_usd_per_mtok),
            context_window=m.context_window,
            tier=m.tier,
        )
        for m in LLMModel.objects.all()
    ]
