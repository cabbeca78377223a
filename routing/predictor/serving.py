"""The live, one-request path of a ScopePredictor: the same design rows as `design()`, built cheaply.

What depends only on the artifact (per-model anchor totals and means, the anchor sum tables) is
computed once per predictor; what depends only on the candidate list (anchor columns, model-side
vectors) is memoised per list of ModelSpec objects; per request the text projection, the anchor
statistics of every known model (the request-level means need them all) and the design rows of
the known candidates only are built. Unknown candidates get no row: their prediction is fixed.
The arithmetic is the batched path's, operation for operation, so the rows are bit-identical.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from routing.engine.prior import _TIER_SPEED
from routing.engine.types import ModelSpec
from routing.features import FEATURE_NAMES, RequestFeatures
from routing.predictor.anchors import ANCHOR_FEATURES, SHARPNESS, SHRINK, TOP_CENTROIDS
from routing.predictor.serving_kernel import BoundPlan, ServingKernel, serving_kernel

if TYPE_CHECKING:
    from routing.predictor.model import ScopePredictor

log = logging.getLogger(__name__)

_LIST_CACHE = 256  # candidate lists remembered per predictor
_SPEC_CACHE = 20_000


@dataclass(frozen=True, slots=True)
class CandidateLayout:
    """Where a candidate list's known models sit: positions in the list, anchor columns, model vectors."""

    specs: tuple[ModelSpec, ...]  # kept alive so the id()-based cache key cannot be reused
    positions: np.ndarray  # int64 [n_known] indexes into the candidate list
    columns: np.ndarray  # int64 [n_known] anchor-table columns
    vectors: np.ndarray  # float64 [n_known, 4]
    known: tuple[bool, ...]
    template: np.ndarray  # float32 [n_known, F]: model-side design columns, copied per request
    ttft_ms: np.ndarray  # float64 [n_known]: the tier prior's latency terms (used without a latency model)
    tokens_per_s: np.ndarray
    addresses: tuple[int, int, int, int]  # of columns, template, ttft_ms, tokens_per_s (the C kernel's)


def _layout(
    specs: tuple[ModelSpec, ...],
    positions: np.ndarray,
    columns: np.ndarray,
    vectors: np.ndarray,
    known: tuple[bool, ...],
    template: np.ndarray,
    ttft_ms: np.ndarray,
    tokens_per_s: np.ndarray,
) -> CandidateLayout:
    """A CandidateLayout with its arrays' addresses (contiguous arrays, read by the serving kernel)."""
    arrays = (columns, template, ttft_ms, tokens_per_s)
    assert all(a.flags.c_contiguous for a in arrays)
    a, b, c, d = (int(a.ctypes.data) for a in arrays)
    return CandidateLayout(
        specs, positions, columns, vectors, known, template, ttft_ms, tokens_per_s, (a, b, c, d)
    )


class ServingPlan:
    """Per-predictor precomputation for `ScopePredictor.predict` / `contributions`."""

    def __init__(self, predictor: ScopePredictor) -> None:
        self._p = predictor
        a = predictor.anchors
        s, n, ts, tn = a.totals()
        # the batched path computes these per call from the same totals, elementwise
        self.mean = (s + 0.5 * SHRINK) / (n + SHRINK)
        self.n_log = np.log1p(n)
        self.tok_mean = np.where(tn > 0, ts / np.maximum(tn, 1e-9), np.nan)
        self.tok_prior = np.where(np.isnan(self.tok_mean), 0.0, self.tok_mean)
        self.has_tok = tn > 0
        self.n_known = len(a.models)
        self.n_heads = len(predictor.heads.intercept)
        self.n_req = len(FEATURE_NAMES)
        self.dim = predictor.projection.dim
        # the anchor sum tables side by side: one product per granularity
        self._coarse, self._fine = a.coarse, a.fine
        self._coarse_tables = np.ascontiguousarray(np.hstack([a.coarse_sum, a.coarse_n]), dtype=np.float64)
        self._fine_tables = np.ascontiguousarray(
            np.hstack([a.fine_sum, a.fine_n, a.fine_tok_sum, a.fine_tok_n]), dtype=np.float64
        )
        self._specs: dict[
            tuple[str, float, float, int, int], tuple[int, tuple[float, float, float, float]]
        ] = {}
        self._lists: OrderedDict[tuple[int, ...], CandidateLayout] = OrderedDict()
        self._kernel: ServingKernel | None = None
        self._fast: BoundPlan | None = None

    # --- candidate side (memoised) ---------------------------------------------------------
    def layout(self, models: Sequence[ModelSpec]) -> CandidateLayout:
        key = tuple(map(id, models))
        hit = self._lists.get(key)
        if hit is not None:
            try:
                self._lists.move_to_end(key)
            except KeyError:  # evicted meanwhile by another thread: the layout itself is still valid
                pass
            return hit
        positions, columns, vectors, known = [], [], [], []
        speeds = [_TIER_SPEED.get(spec.tier, (300.0, 80.0)) for spec in models]
        for j, spec in enumerate(models):
            col, vector = self._spec(spec)
            known.append(col >= 0)
            if col >= 0:
                positions.append(j)
                columns.append(col)
                vectors.append(vector)
        layout = _layout(
            specs=tuple(models),
            positions=np.asarray(positions, dtype=np.int64),
            columns=np.asarray(columns, dtype=np.int64),
            vectors=np.asarray(vectors, dtype=np.float64).reshape(len(vectors), 4),
            known=tuple(known),
            template=self._template(np.asarray(columns, dtype=np.int64), vectors),
            ttft_ms=np.asarray([speeds[j][0] for j in positions], dtype=np.float64),
            tokens_per_s=np.asarray([speeds[j][1] for j in positions], dtype=np.float64),
        )
        self._lists[key] = layout
        if len(self._lists) > _LIST_CACHE:
            self._lists.popitem(last=False)
        return layout

    def _template(self, c: np.ndarray, vectors: list[tuple[float, float, float, float]]) -> np.ndarray:
        """Rows [len(c), F] with the request-independent model columns filled (the rest is overwritten)."""
        out = np.zeros((len(c), self._p.evaluator.n_features), dtype=np.float32)
        n_req = self.n_req + self.dim
        a0 = n_req + 4
        out[:, n_req:a0] = np.asarray(vectors, dtype=np.float64).reshape(len(c), 4)
        out[:, a0] = self.mean[c]
        out[:, a0 + 1] = self.n_log[c]
        out[:, a0 + 5] = self.tok_mean[c]
        return out

    def _spec(self, spec: ModelSpec) -> tuple[int, tuple[float, float, float, float]]:
        key = (spec.name, spec.input_usd_per_mtok, spec.output_usd_per_mtok, spec.context_window, spec.tier)
        hit = self._specs.get(key)
        if hit is None:
            if len(self._specs) > _SPEC_CACHE:
                self._specs.clear()
            info = self._p._info(spec)
            hit = self._specs[key] = (self._p.anchors.index.get(spec.name, -1), self._p._vector(info))
        return hit

    # --- the compiled kernel (serving_kernel.py) --------------------------------------------------
    def fast(self) -> BoundPlan | None:
        """This plan on the serving kernel once one is installed and gave the numpy path's results here."""
        kernel = serving_kernel()
        if kernel is not self._kernel:
            self._kernel, self._fast = kernel, None
            if kernel is not None:
                self._fast = self._bind(kernel)
        return self._fast

    def _bind(self, kernel: ServingKernel) -> BoundPlan | None:
        try:
            bound = BoundPlan(kernel, self)
        except ValueError as exc:
            log.info("predictor %s serves without the serving kernel: %s", self._p.version, exc)
            return None
        if not bound.agrees():
            log.error(
                "serving kernel's rows or contributions disagree with numpy on predictor %s: not used",
                self._p.version,
            )
            return None
        return bound

    def probe_layout(self) -> CandidateLayout:
        """Every known model as a candidate (made-up model-side columns): the kernel's check."""
        k = self.n_known
        columns = np.arange(k, dtype=np.int64)
        vectors = [(0.5, 1.0, 2.0, 9.0)] * k
        return _layout(
            specs=(),
            positions=columns,
            columns=columns,
            vectors=np.asarray(vectors, dtype=np.float64),
            known=(True,) * k,
            template=self._template(columns, vectors),
            ttft_ms=np.full(k, 300.0),
            tokens_per_s=np.full(k, 80.0),
        )

    # --- request side ------------------------------------------------------------------------
    def rows(self, features: RequestFeatures, layout: CandidateLayout) -> np.ndarray:
        """Design rows [n_known candidates, F] (float32), equal to `ScopePredictor.design`'s rows."""
        fast = self.fast()
        if fast is not None:
            x = fast.rows(features, layout)
            if x is not None:
                return x
        return self._rows_numpy(features, layout)

    def _rows_numpy(self, features: RequestFeatures, layout: CandidateLayout) -> np.ndarray:
        p = self._p
        cols, w = p.projection.weights(features.ngram_ids, features.ngram_counts)
        emb = np.empty((1, self.dim), dtype=np.float32)
        emb[0] = p.projection.project(cols, w)
        head = np.empty(self.n_known)
        head[: self.n_heads] = p.heads.value(cols, w, *p.projection.char_weights(features))
        head[: self.n_heads] += p.heads.option_value(features.text)
        head[: self.n_heads] = p.heads.calibrate(head[: self.n_heads])
        head[self.n_heads :] = np.nan

        k = self.n_known
        coarse = _assign_one(emb, self._coarse) @ self._coarse_tables
        fine = _assign_one(emb, self._fine) @ self._fine_tables
        lc_s, lc_n = coarse[:, :k], coarse[:, k:]
        lf_s, lf_n = fine[:, :k], fine[:, k : 2 * k]
        lt_s, lt_n = fine[:, 2 * k : 3 * k], fine[:, 3 * k :]
        local_c = (lc_s + SHRINK * self.mean) / (lc_n + SHRINK)
        local_f = (lf_s + SHRINK * local_c) / (lf_n + SHRINK)
        local_t = np.where(self.has_tok, (lt_s + SHRINK * self.tok_prior) / (lt_n + SHRINK), np.nan)

        # request-level means over every known model, NaN-aware as request_means()
        means = (_nan_mean(local_f[0]), _nan_mean(head))

        c = layout.columns
        out = layout.template.copy()  # the model-side columns are filled already
        n_req = self.n_req + self.dim
        out[:, :n_req] = np.concatenate([np.asarray(features.values, dtype=np.float32), emb[0]])
        a0 = n_req + 4
        out[:, a0 + 2] = local_c[0, c]
        fine = local_f[0, c]
        out[:, a0 + 3] = fine
        out[:, a0 + 4] = np.log1p(lf_n[0, c])
        out[:, a0 + 6] = local_t[0, c]
        h = head[c]
        e0 = a0 + len(ANCHOR_FEATURES)
        out[:, e0] = h
        out[:, e0 + 1] = means[0]
        out[:, e0 + 2] = means[1]
        out[:, e0 + 3] = fine - means[0]
        out[:, e0 + 4] = h - means[1]
        return out


def _assign_one(emb: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """anchors.assign() for a single row [1, k], with the same arithmetic and fewer array operations."""
    weights = np.zeros((1, centroids.shape[0]), dtype=np.float64)
    c = centroids.shape[0]
    if c == 0:
        return weights
    sims = (emb @ centroids.T)[0]
    k = min(TOP_CENTROIDS, c)
    top = np.argpartition(-sims, k - 1)[:k] if c > k else np.arange(c)
    s = sims[top] * SHARPNESS
    s = np.exp(s - s.max())
    weights[0, top] = s / s.sum()
    return weights


def _nan_mean(values: np.ndarray) -> float:
    ok = ~np.isnan(values)
    n = int(np.count_nonzero(ok))
    return float(values[ok].sum() / n) if n else float("nan")
