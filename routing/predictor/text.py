"""Text projection: hashed n-gram counts → TF-IDF → a fitted low-rank projection (cosine space).

Fitted at training (scipy/scikit-learn), applied at serving with numpy alone: the artifact holds
the kept bucket ids, their IDF weights and the projection matrix as plain arrays.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from routing.features import RequestFeatures


@dataclass(frozen=True)
class TextProjection:
    vocab: np.ndarray  # int64 sorted hashed-bucket ids kept at fit time
    idf: np.ndarray  # float32 [V]
    components: np.ndarray  # float32 [V, k]

    @property
    def dim(self) -> int:
        return int(self.components.shape[1])

    def weights(self, ids: Sequence[int], counts: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """(vocabulary columns, L2-normalised sublinear TF-IDF weights) of one text."""
        if not ids or not len(self.vocab):
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
        ids_a = np.asarray(ids, dtype=np.int64)
        pos = np.minimum(np.searchsorted(self.vocab, ids_a), len(self.vocab) - 1)
        hit = self.vocab[pos] == ids_a
        cols = pos[hit]
        w = (1.0 + np.log(np.asarray(counts, dtype=np.float32)[hit])) * self.idf[cols]
        norm = float(np.sqrt((w * w).sum()))
        return cols, (w / norm if norm > 0 else w)

    def transform_one(self, ids: Sequence[int], counts: Sequence[int]) -> np.ndarray:
        return self.project(*self.weights(ids, counts))

    def project(self, cols: np.ndarray, w: np.ndarray) -> np.ndarray:
        if not len(cols):
            return np.zeros(self.dim, dtype=np.float32)
        out = w @ self.components[cols]
        n2 = float(np.sqrt((out * out).sum()))
        return out / n2 if n2 > 0 else out

    def transform(self, features: Sequence[RequestFeatures]) -> np.ndarray:
        if not features:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.vstack([self.transform_one(f.ngram_ids, f.ngram_counts) for f in features]).astype(
            np.float32
        )


@dataclass(frozen=True)
class TextHeads:
    """Per-model ridge regressions of score on the TF-IDF vector (columns follow the anchor models)."""

    coef: np.ndarray  # float32 [V, M]
    intercept: np.ndarray  # float32 [M]

    def predict(self, projection: TextProjection, features: Sequence[RequestFeatures]) -> np.ndarray:
        out = np.empty((len(features), len(self.intercept)), dtype=np.float64)
        for i, f in enumerate(features):
            cols, w = projection.weights(f.ngram_ids, f.ngram_counts)
            out[i] = w @ self.coef[cols] + self.intercept if len(cols) else self.intercept
        return out


def fit_heads(
    matrix: Any, scores: np.ndarray, folds: np.ndarray, n_folds: int, alpha: float = 1.0
) -> tuple[np.ndarray, TextHeads]:
    """(out-of-fold predictions [P, M], heads fitted on every prompt) for score matrix [P, M] (NaN = none)."""
    from sklearn.linear_model import Ridge

    p, m = scores.shape
    oof = np.full((p, m), np.nan)
    coef = np.zeros((matrix.shape[1], m), dtype=np.float32)
    intercept = np.zeros(m, dtype=np.float32)
    known = ~np.isnan(scores)
    # models scored on the same prompts are fitted together (one multi-target solve)
    groups: dict[bytes, list[int]] = {}
    for j in range(m):
        groups.setdefault(np.packbits(known[:, j]).tobytes(), []).append(j)
    for cols in groups.values():
        rows = known[:, cols[0]]
        if rows.sum() < 10:
            fill = np.nanmean(scores[:, cols], axis=0) if rows.any() else np.full(len(cols), 0.5)
            intercept[cols] = fill
            oof[:, cols] = fill
            continue
        y = scores[:, cols]
        for f in range(n_folds):
            fit_rows = rows & (folds != f)
            target = folds == f
            if fit_rows.sum() < 5 or not target.any():
                continue
            model = Ridge(alpha=alpha).fit(matrix[fit_rows], y[fit_rows])
            oof[np.ix_(target, cols)] = np.asarray(model.predict(matrix[target])).reshape(-1, len(cols))
        model = Ridge(alpha=alpha).fit(matrix[rows], y[rows])
        coef[:, cols] = np.asarray(model.coef_, dtype=np.float32).reshape(len(cols), -1).T
        intercept[cols] = np.asarray(model.intercept_, dtype=np.float32).reshape(-1)
    return oof, TextHeads(coef=coef, intercept=intercept)


def tfidf_matrix(features: Sequence[RequestFeatures], vocab: np.ndarray, idf: np.ndarray) -> Any:
    """Sparse L2-normalised TF-IDF rows over `vocab` (scipy CSR); used for fitting and the kNN baseline."""
    from scipy import sparse

    indptr = [0]
    indices: list[np.ndarray] = []
    data: list[np.ndarray] = []
    for f in features:
        ids_a = np.asarray(f.ngram_ids, dtype=np.int64)
        if len(ids_a) and len(vocab):
            pos = np.minimum(np.searchsorted(vocab, ids_a), len(vocab) - 1)
            hit = vocab[pos] == ids_a
            cols = pos[hit]
            w = (1.0 + np.log(np.asarray(f.ngram_counts, dtype=np.float64)[hit])) * idf[cols]
            n = np.sqrt((w * w).sum())
            if n > 0:
                w = w / n
        else:
            cols = np.zeros(0, dtype=np.int64)
            w = np.zeros(0)
        indices.append(cols)
        data.append(w)
        indptr.append(indptr[-1] + len(cols))
    return sparse.csr_matrix(
        (
            np.concatenate(data) if data else np.zeros(0),
            np.concatenate(indices) if indices else np.zeros(0, int),
            indptr,
        ),
        shape=(len(features), len(vocab)),
    )


def fit_vocabulary(
    features: Sequence[RequestFeatures], *, min_df: int = 2, max_vocab: int = 60_000
) -> tuple[np.ndarray, np.ndarray]:
    """Buckets seen in ≥ min_df prompts (the most frequent max_vocab), with smoothed IDF weights."""
    n = len(features)
    all_ids = (
        np.concatenate([np.asarray(f.ngram_ids, dtype=np.int64) for f in features]) if n else np.zeros(0, int)
    )
    ids, df = np.unique(all_ids, return_counts=True)
    keep = df >= min(min_df, max(1, n // 2))
    ids, df = ids[keep], df[keep]
    if len(ids) > max_vocab:
        top = np.argsort(-df, kind="stable")[:max_vocab]
        top.sort()
        ids, df = ids[top], df[top]
    idf = (np.log((1.0 + n) / (1.0 + df)) + 1.0).astype(np.float32)
    return ids, idf


def fit_projection(features: Sequence[RequestFeatures], *, dim: int, seed: int) -> TextProjection:
    from sklearn.decomposition import TruncatedSVD

    vocab, idf = fit_vocabulary(features)
    matrix = tfidf_matrix(features, vocab, idf)
    k = max(1, min(dim, len(vocab) - 1, len(features) - 1))
    if len(vocab) < 3 or len(features) < 3:
        components = np.zeros((len(vocab), max(k, 1)), dtype=np.float32)
    else:
        svd = TruncatedSVD(n_components=k, random_state=seed, n_iter=5)
        svd.fit(matrix)
        components = svd.components_.T.astype(np.float32)
    return TextProjection(vocab=vocab, idf=idf, components=np.ascontiguousarray(components))
