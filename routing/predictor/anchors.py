"""Anchor statistics: how each model scored on prompts like this one, in the projected text space.

Prompts are softly assigned to fitted centroids (two granularities); per model and centroid the
table keeps score sums and counts. A model's local mean for a request is the assignment-weighted
mean of its anchor scores, shrunk towards its overall mean. Adding a model is adding a column of
sums: a model with only a small anchor evaluation (50–250 scored prompts) is scored without
retraining. One matrix product serves any number of models.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

SHRINK = 3.0  # pseudo-count pulling local means towards the model's overall mean
SHARPNESS = 12.0  # softmax temperature of the centroid assignment (cosine space)
TOP_CENTROIDS = 4

ANCHOR_FEATURES = (
    "anchor_mean",
    "anchor_n_log",
    "anchor_local_coarse",
    "anchor_local_fine",
    "anchor_local_fine_n",
    "anchor_tokens_mean",
    "anchor_tokens_local",
)


def assign(emb: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Soft assignment [rows, C]: softmax over the TOP_CENTROIDS most similar centroids."""
    sims = emb @ centroids.T
    c = sims.shape[1]
    weights = np.zeros_like(sims, dtype=np.float64)
    if c == 0:
        return weights
    k = min(TOP_CENTROIDS, c)
    top = np.argpartition(-sims, k - 1, axis=1)[:, :k] if c > k else np.tile(np.arange(c), (len(sims), 1))
    rows = np.arange(len(sims))[:, None]
    s = sims[rows, top] * SHARPNESS
    s = np.exp(s - s.max(axis=1, keepdims=True))
    weights[rows, top] = s / s.sum(axis=1, keepdims=True)
    return weights


@dataclass
class AnchorTable:
    """Per-model sufficient statistics over centroids; columns follow `models`."""

    models: list[str]
    coarse: np.ndarray  # [Cc, k]
    fine: np.ndarray  # [Cf, k]
    # [C, M] sums and counts of scores, and of log output tokens where known
    coarse_sum: np.ndarray
    coarse_n: np.ndarray
    fine_sum: np.ndarray
    fine_n: np.ndarray
    fine_tok_sum: np.ndarray
    fine_tok_n: np.ndarray
    index: dict[str, int] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        self.index = {m: i for i, m in enumerate(self.models)}
        # per-model totals, computed once: the route path needs them for every request
        self._totals = (
            self.fine_sum.sum(axis=0),
            self.fine_n.sum(axis=0),
            self.fine_tok_sum.sum(axis=0),
            self.fine_tok_n.sum(axis=0),
        )

    def totals(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        return self._totals

    def features(self, emb: np.ndarray, columns: Sequence[int] | np.ndarray) -> np.ndarray:
        """[rows, len(columns), len(ANCHOR_FEATURES)] for query embeddings `emb` [rows, k]."""
        cols = np.asarray(columns, dtype=np.int64)
        wc = assign(emb, self.coarse)
        wf = assign(emb, self.fine)
        s, n, ts, tn = (a[cols] for a in self.totals())
        mean = (s + 0.5 * SHRINK) / (n + SHRINK)
        tok_mean = np.where(tn > 0, ts / np.maximum(tn, 1e-9), np.nan)
        lc_s, lc_n = wc @ self.coarse_sum[:, cols], wc @ self.coarse_n[:, cols]
        lf_s, lf_n = wf @ self.fine_sum[:, cols], wf @ self.fine_n[:, cols]
        lt_s, lt_n = wf @ self.fine_tok_sum[:, cols], wf @ self.fine_tok_n[:, cols]
        local_c = (lc_s + SHRINK * mean) / (lc_n + SHRINK)
        local_f = (lf_s + SHRINK * local_c) / (lf_n + SHRINK)
        tok_prior = np.where(np.isnan(tok_mean), 0.0, tok_mean)
        local_t = np.where(tn > 0, (lt_s + SHRINK * tok_prior) / (lt_n + SHRINK), np.nan)
        rows = emb.shape[0]
        out = np.empty((rows, len(cols), len(ANCHOR_FEATURES)), dtype=np.float64)
        out[:, :, 0] = mean
        out[:, :, 1] = np.log1p(n)
        out[:, :, 2] = local_c
        out[:, :, 3] = local_f
        out[:, :, 4] = np.log1p(lf_n)
        out[:, :, 5] = tok_mean
        out[:, :, 6] = local_t
        return out

    def with_model(
        self, name: str, emb: np.ndarray, scores: np.ndarray, log_tokens: np.ndarray
    ) -> AnchorTable:
        """A copy with `name`'s anchor evaluation added (replacing any previous column of that name)."""
        sums = _sums(emb, scores, log_tokens, self.coarse, self.fine)
        models = list(self.models)
        arrays = [
            self.coarse_sum,
            self.coarse_n,
            self.fine_sum,
            self.fine_n,
            self.fine_tok_sum,
            self.fine_tok_n,
        ]
        if name in self.index:
            j = self.index[name]
            arrays = [a.copy() for a in arrays]
            for a, new in zip(arrays, sums, strict=True):
                a[:, j] = new
        else:
            models.append(name)
            arrays = [np.hstack([a, new[:, None]]) for a, new in zip(arrays, sums, strict=True)]
        return AnchorTable(models, self.coarse, self.fine, *arrays)


def _sums(
    emb: np.ndarray, scores: np.ndarray, log_tokens: np.ndarray, coarse: np.ndarray, fine: np.ndarray
) -> list[np.ndarray]:
    wc, wf = assign(emb, coarse), assign(emb, fine)
    ok = ~np.isnan(scores)
    s = np.where(ok, scores, 0.0)
    tok_ok = ~np.isnan(log_tokens)
    t = np.where(tok_ok, log_tokens, 0.0)
    return [wc.T @ s, wc.T @ ok, wf.T @ s, wf.T @ ok, wf.T @ t, wf.T @ tok_ok]


def fit_centroids(emb: np.ndarray, n: int, seed: int) -> np.ndarray:
    from sklearn.cluster import MiniBatchKMeans

    n = max(1, min(n, len(emb) // 4 or 1))
    km = MiniBatchKMeans(n_clusters=n, random_state=seed, n_init=3, batch_size=2048).fit(emb)
    c = km.cluster_centers_.astype(np.float32)
    norms = np.linalg.norm(c, axis=1, keepdims=True)
    return c / np.maximum(norms, 1e-9)


def build_table(
    models: list[str],
    emb: np.ndarray,
    scores: np.ndarray,
    log_tokens: np.ndarray,
    coarse: np.ndarray,
    fine: np.ndarray,
) -> AnchorTable:
    """Table from prompts `emb` [N, k] and per-model matrices [N, M] (NaN = not scored)."""
    return AnchorTable(models, coarse, fine, *_sums(emb, scores, log_tokens, coarse, fine))
