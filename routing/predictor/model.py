"""ScopePredictor: one predictor over (request, model) pairs, serving any number of models.

The design matrix row of a pair is [request features | text projection | model features |
anchor statistics]. Both training (fit.py) and serving build it with `design_rows`, so the two
can never disagree. Serving evaluates every booster in one vectorised pass (trees.py).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from routing.engine.prior import expected_output_tokens
from routing.engine.types import ModelSpec, Prediction
from routing.features import FEATURE_NAMES, RequestFeatures
from routing.predictor.anchors import ANCHOR_FEATURES, AnchorTable
from routing.predictor.serving import CandidateLayout, ServingPlan
from routing.predictor.text import TextHeads, TextProjection
from routing.predictor.trees import ForestEvaluator

MODEL_FEATURES = ("log_input_price", "log_output_price", "tier", "log_context")
PAIR_FEATURES = (*ANCHOR_FEATURES, "text_head")
EXTRA_FEATURES = ("anchor_all_local", "text_head_all", "local_minus_all", "head_minus_all")
# Share of the decomposed estimate (prompt mean + the model's deviation from it) in the predicted
# quality; the rest is the quality ensemble's. With 0.5, bench-quality APGR (seeds 0-2) rose on all
# five shared sets: mmlu 0.678 -> 0.684, gsm8k 0.585 -> 0.593, alpacaeval2 0.583 -> 0.590, mt-bench
# 0.805 -> 0.816, alpacaeval1 0.899 -> 0.914. The decomposed estimate alone routed no better than
# the ensemble (mmlu 0.678 over 6 seeds): the gain is the blend of the two.
# The pair learns only from prompts scored for several models; a predictor trained partly on a
# decision log (one answering model per request) gives it that much less say, so live feedback
# moves the predicted quality as much as the data it is in (fit.py stores the share it used).
DECOMPOSED_SHARE = 0.5
# a model the predictor knows nothing about (frozen: one object serves every such candidate)
UNKNOWN = Prediction(quality=0.5, uncertainty=0.5, output_tokens=256.0, latency_ms=0.0, known=False)


def design_names(text_dim: int) -> tuple[str, ...]:
    return (
        *FEATURE_NAMES,
        *(f"text_{i}" for i in range(text_dim)),
        *MODEL_FEATURES,
        *PAIR_FEATURES,
        *EXTRA_FEATURES,
    )


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """What the predictor may know of a model besides its anchors; None = unknown."""

    name: str
    input_usd_per_mtok: float | None = None
    output_usd_per_mtok: float | None = None
    context_window: int | None = None
    tier: int | None = None

    @classmethod
    def from_spec(cls, spec: ModelSpec) -> ModelInfo:
        return cls(
            spec.name, spec.input_usd_per_mtok, spec.output_usd_per_mtok, spec.context_window, spec.tier
        )

    def vector(self) -> tuple[float, float, float, float]:
        def log_or_nan(v: float | None) -> float:
            return math.log1p(v) if v is not None and v >= 0 else math.nan

        return (
            log_or_nan(self.input_usd_per_mtok),
            log_or_nan(self.output_usd_per_mtok),
            float(self.tier) if self.tier is not None else math.nan,
            log_or_nan(float(self.context_window)) if self.context_window else math.nan,
        )


def design_rows(
    request_block: np.ndarray, emb: np.ndarray, model_vectors: np.ndarray, pair: np.ndarray, means: np.ndarray
) -> np.ndarray:
    """[R*M, F] rows for R requests × M models, request-major.

    request_block [R, 30], emb [R, k], model_vectors [M, 4] (or [R, M, 4]), pair [R, M, len(PAIR_FEATURES)],
    means [R, 2]: the request's mean local anchor score and mean text head over every known model.
    """
    r, m = pair.shape[0], pair.shape[1]
    n_req = request_block.shape[1] + emb.shape[1]
    width = n_req + len(MODEL_FEATURES) + len(PAIR_FEATURES) + len(EXTRA_FEATURES)
    out = np.empty((r, m, width), dtype=np.float32)
    out[:, :, : request_block.shape[1]] = request_block[:, None, :]
    out[:, :, request_block.shape[1] : n_req] = emb[:, None, :]
    a0 = n_req + len(MODEL_FEATURES)
    out[:, :, n_req:a0] = model_vectors if model_vectors.ndim == 3 else model_vectors[None, :, :]
    out[:, :, a0 : a0 + len(PAIR_FEATURES)] = pair
    e0 = a0 + len(PAIR_FEATURES)
    out[:, :, e0] = means[:, None, 0]
    out[:, :, e0 + 1] = means[:, None, 1]
    out[:, :, e0 + 2] = pair[:, :, ANCHOR_FEATURES.index("anchor_local_fine")] - means[:, None, 0]
    out[:, :, e0 + 3] = pair[:, :, -1] - means[:, None, 1]
    return out.reshape(r * m, width)


def request_means(pair_all: np.ndarray) -> np.ndarray:
    """[R, 2] NaN-aware means over models of the local anchor score and the text head."""
    stacked = np.stack(
        [pair_all[:, :, ANCHOR_FEATURES.index("anchor_local_fine")], pair_all[:, :, -1]], axis=2
    )
    ok = ~np.isnan(stacked)
    n = ok.sum(axis=1)
    total = np.where(ok, stacked, 0.0).sum(axis=1)
    return np.where(n > 0, total / np.maximum(n, 1), np.nan)


@dataclass
class BatchPrediction:
    quality: np.ndarray  # [R, M]
    uncertainty: np.ndarray
    output_tokens: np.ndarray  # NaN where the predictor has no length model
    latency_ms: np.ndarray  # NaN where the predictor has no latency model
    known: np.ndarray  # bool [M]


@dataclass
class ScopePredictor:
    """A trained predictor; `version` is its PredictorVersion name."""

    version: str
    projection: TextProjection
    anchors: AnchorTable
    heads: TextHeads  # columns: the first len(intercept) anchor models (the trained ones)
    evaluator: ForestEvaluator
    roles: list[str]  # one per booster: "quality", "prompt_mean", "relative", "tokens" or "latency"
    boosters: list[bytes] = field(default_factory=list)  # XGBoost UBJSON, in `roles` order
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._quality = [i for i, r in enumerate(self.roles) if r == "quality"]
        self._prompt_mean = [i for i, r in enumerate(self.roles) if r == "prompt_mean"]
        self._relative = [i for i, r in enumerate(self.roles) if r == "relative"]
        self._tokens = self.roles.index("tokens") if "tokens" in self.roles else None
        self._latency = self.roles.index("latency") if "latency" in self.roles else None
        self.names = design_names(self.projection.dim)
        self._all_cols = np.arange(len(self.anchors.models))
        self._local_n = self.names.index("anchor_local_fine_n")
        # catalog rows change rarely: their model-side vectors are memoised per process
        self._infos: dict[tuple[str, float, float, int, int], ModelInfo] = {}
        self._vectors: dict[ModelInfo, tuple[float, float, float, float]] = {}
        self._plan: ServingPlan | None = None

    @property
    def plan(self) -> ServingPlan:
        """The one-request serving path's precomputation, built on first use."""
        if self._plan is None:
            self._plan = ServingPlan(self)
        return self._plan

    def _blend(self, quality: np.ndarray, out: np.ndarray) -> np.ndarray:
        """The quality ensemble's mean blended with the decomposed estimate, where one was trained.

        Per row, so a model's quality never depends on the other candidates; clipped to [0, 1] (the
        relative trees are unbounded).
        """
        if not self._prompt_mean or not self._relative:
            return quality
        share = self.decomposed_share
        mean = out[:, self._prompt_mean].sum(axis=1) / len(self._prompt_mean)
        relative = out[:, self._relative].sum(axis=1) / len(self._relative)
        blended = (1.0 - share) * quality + share * (mean + relative)
        return np.clip(blended, 0.0, 1.0)

    @property
    def decomposed_share(self) -> float:
        """The decomposed pair's share of the predicted quality (set at training, kept in the artifact)."""
        return float(self.metadata.get("decomposed_share", DECOMPOSED_SHARE))

    def _info(self, spec: ModelSpec) -> ModelInfo:
        key = (spec.name, spec.input_usd_per_mtok, spec.output_usd_per_mtok, spec.context_window, spec.tier)
        info = self._infos.get(key)
        if info is None:
            if len(self._infos) > 10_000:
                self._infos.clear()
            info = self._infos[key] = ModelInfo.from_spec(spec)
        return info

    def _vector(self, info: ModelInfo) -> tuple[float, float, float, float]:
        vector = self._vectors.get(info)
        if vector is None:
            if len(self._vectors) > 10_000:
                self._vectors.clear()
            vector = self._vectors[info] = info.vector()
        return vector

    # --- the pure batched core -------------------------------------------------------------
    def design(
        self, features: Sequence[RequestFeatures], infos: Sequence[ModelInfo]
    ) -> tuple[np.ndarray, np.ndarray]:
        """(design rows [R*M, F], known mask [M]) for requests × models.

        Pair features are computed for every model the predictor knows (the request-level means
        need them), then picked for the asked models; unknown models get NaN.
        """
        r = len(features)
        emb = np.empty((r, self.projection.dim), dtype=np.float32)
        n_known = len(self.anchors.models)
        n_heads = len(self.heads.intercept)
        pair_all = np.empty((r, n_known, len(PAIR_FEATURES)))
        for i, f in enumerate(features):
            cols, w = self.projection.weights(f.ngram_ids, f.ngram_counts)
            emb[i] = self.projection.project(cols, w)
            pair_all[i, :n_heads, -1] = self.heads.value(cols, w, *self.projection.char_weights(f))
            pair_all[i, :n_heads, -1] += self.heads.option_value(f.text)
        pair_all[:, :n_heads, -1] = self.heads.calibrate(pair_all[:, :n_heads, -1])
        pair_all[:, n_heads:, -1] = np.nan  # anchor-only models have no text head
        pair_all[:, :, :-1] = self.anchors.features(emb, self._all_cols)
        req = np.asarray([f.values for f in features], dtype=np.float64).reshape(r, len(FEATURE_NAMES))
        cols_of = [self.anchors.index.get(i.name, -1) for i in infos]
        known = np.asarray([c >= 0 for c in cols_of], dtype=bool)
        pair = pair_all[:, [c if c >= 0 else 0 for c in cols_of], :]
        pair[:, ~known, :] = np.nan
        vectors = np.asarray([self._vector(i) for i in infos], dtype=np.float64).reshape(len(infos), 4)
        return design_rows(req, emb, vectors, pair, request_means(pair_all)), known

    def predict_batch(
        self, features: Sequence[RequestFeatures], infos: Sequence[ModelInfo]
    ) -> BatchPrediction:
        r, m = len(features), len(infos)
        x, known = self.design(features, infos)
        out = self.evaluator.predict(x)
        q_all = out[:, self._quality]
        spread = q_all.std(axis=1) if len(self._quality) > 1 else np.zeros(len(x))
        quality = self._blend(q_all.mean(axis=1), out)
        local_n = np.expm1(x[:, self._local_n].astype(np.float64))
        local_n = np.nan_to_num(local_n, nan=0.0)
        unc = np.sqrt(spread**2 + quality * (1 - quality) / (1.0 + local_n))
        tokens = np.expm1(out[:, self._tokens]) if self._tokens is not None else np.full(len(x), np.nan)
        latency = np.expm1(out[:, self._latency]) if self._latency is not None else np.full(len(x), np.nan)
        shape = (r, m)
        return BatchPrediction(
            quality=np.clip(quality, 0.0, 1.0).reshape(shape),
            uncertainty=unc.reshape(shape),
            output_tokens=np.maximum(tokens, 1.0).reshape(shape),
            latency_ms=latency.reshape(shape),
            known=known,
        )

    def with_anchor_model(
        self, name: str, anchors: Sequence[tuple[RequestFeatures, float, float | None]]
    ) -> ScopePredictor:
        """A copy that also scores `name` from a small anchor evaluation, without retraining."""
        emb = self.projection.transform([a[0] for a in anchors])
        scores = np.asarray([[a[1]] for a in anchors], dtype=np.float64)
        toks = np.asarray(
            [[math.log1p(a[2]) if a[2] is not None else math.nan] for a in anchors], dtype=np.float64
        )
        table = self.anchors.with_model(name, emb, scores[:, 0], toks[:, 0])
        return ScopePredictor(
            self.version,
            self.projection,
            table,
            self.heads,
            self.evaluator,
            self.roles,
            self.boosters,
            self.metadata,
        )

    # --- the engine's Predictor protocol -------------------------------------------------------
    def predict(self, features: RequestFeatures, models: Sequence[ModelSpec]) -> list[Prediction]:
        """One request: rows only for the known candidates (serving.py), one pass over every tree.

        Equal to `predict_batch` on the same request and models (tested), at a fraction of its cost.
        """
        if not models:
            return []
        plan = self.plan
        layout = plan.layout(models)
        if not len(layout.positions):
            return [UNKNOWN] * len(models)
        fast = plan.fast()
        made = fast.predict(features, layout) if fast is not None else None
        if made is None:
            x = plan.rows(features, layout)
            made = self._predictions_numpy(features, layout, x, self.evaluator.predict(x))
        if len(made) == len(models):
            return made
        result = [UNKNOWN] * len(models)
        for j, prediction in zip(layout.positions.tolist(), made, strict=True):
            result[j] = prediction
        return result

    def _predictions_numpy(
        self, features: RequestFeatures, layout: CandidateLayout, x: np.ndarray, out: np.ndarray
    ) -> list[Prediction]:
        """predict()'s predictions from the design rows `x` and the trees' outputs `out` (numpy)."""
        q_all = out[:, self._quality]
        # numpy's mean and std, spelled out (the same sum, divisions and square root, fewer calls)
        quality = q_all.sum(axis=1) / len(self._quality)
        if len(self._quality) > 1:
            d = q_all - quality[:, None]
            spread = np.sqrt((d * d).sum(axis=1) / len(self._quality))
        else:
            spread = np.zeros(len(x))
        quality = self._blend(quality, out)
        local_n = np.expm1(x[:, self._local_n].astype(np.float64))
        local_n[np.isnan(local_n)] = 0.0  # a count: never infinite, so nan_to_num's other work is moot
        unc = np.sqrt(spread**2 + quality * (1 - quality) / (1.0 + local_n))
        n = len(x)
        tokens = np.expm1(out[:, self._tokens]) if self._tokens is not None else np.full(n, np.nan)
        latency = np.expm1(out[:, self._latency]) if self._latency is not None else np.full(n, np.nan)
        tokens = np.maximum(tokens, 1.0)
        missing = np.isnan(tokens)
        if missing.any():
            tokens[missing] = expected_output_tokens(features)
        slow = np.isnan(latency)
        if slow.any():  # the tier prior's latency, as PriorPredictor computes it
            prior = layout.ttft_ms + features.input_tokens * 0.05 + tokens / layout.tokens_per_s * 1000.0
            latency[slow] = prior[slow]
        return list(
            map(
                Prediction,
                np.clip(quality, 0.0, 1.0).tolist(),
                unc.tolist(),
                tokens.tolist(),
                latency.tolist(),
            )
        )

    def contributions(
        self, features: RequestFeatures, model: ModelSpec, top: int = 5
    ) -> list[dict[str, Any]]:
        """Top Saabas (XGBoost approx pred_contribs) contributions to the model's quality logit."""
        if not self._quality:
            return []
        layout = self.plan.layout([model])
        if not len(layout.positions):
            return []
        fast = self.plan.fast()
        got = fast.contributions(features, layout) if fast is not None else None
        if got is None:
            x = self.plan.rows(features, layout)
            got = x[0], self.evaluator.contributions(x[0], self._quality[0])
        row, contrib = got
        order = np.argsort(-np.abs(contrib[:-1]))[:top]
        return [
            {
                "feature": self.names[i],
                "value": _jsonable(row[i]),
                "contribution": round(float(contrib[i]), 5),
            }
            for i in order
            if contrib[i] != 0.0
        ]


def _jsonable(v: float) -> float | None:
    f = float(v)
    return None if math.isnan(f) else round(f, 5)
