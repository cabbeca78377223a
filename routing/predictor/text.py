"""Text projection: hashed n-gram counts → TF-IDF → a fitted low-rank projection (cosine space).

Fitted at training (scipy/scikit-learn), applied at serving with numpy alone: the artifact holds
the kept bucket ids, their IDF weights and the projection matrix as plain arrays. The projection
also keeps a vocabulary of hashed character 2-4-grams with their IDF weights: the per-model ridge
text heads read the word TF-IDF vector and the character TF-IDF vector side by side (the
projection itself uses the words only).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np

from routing.features import CHAR_BUCKETS, RequestFeatures, text_word_ngram_hashes


def _no_ids() -> np.ndarray:
    return np.zeros(0, dtype=np.int64)


def _no_weights() -> np.ndarray:
    return np.zeros(0, dtype=np.float32)


def sparse_weights(
    vocab: np.ndarray, idf: np.ndarray, ids: Sequence[int] | np.ndarray, counts: Sequence[int] | np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(vocabulary columns, L2-normalised sublinear TF-IDF weights) of one bag of hashed buckets."""
    if not len(ids) or not len(vocab):
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
    ids_a = np.asarray(ids, dtype=np.int64)
    pos = np.minimum(np.searchsorted(vocab, ids_a), len(vocab) - 1)
    hit = vocab[pos] == ids_a
    cols = pos[hit]
    w = (1.0 + np.log(np.asarray(counts, dtype=np.float32)[hit])) * idf[cols]
    norm = float(np.sqrt((w * w).sum()))
    return cols, (w / norm if norm > 0 else w)


@dataclass(frozen=True)
class TextProjection:
    vocab: np.ndarray  # int64 sorted hashed-bucket ids kept at fit time
    idf: np.ndarray  # float32 [V]
    components: np.ndarray  # float32 [V, k]
    char_vocab: np.ndarray = field(default_factory=_no_ids)  # int64 sorted character buckets [C]
    char_idf: np.ndarray = field(default_factory=_no_weights)  # float32 [C]

    @property
    def dim(self) -> int:
        return int(self.components.shape[1])

    def weights(self, ids: Sequence[int], counts: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """(vocabulary columns, L2-normalised sublinear TF-IDF weights) of one text."""
        return sparse_weights(self.vocab, self.idf, ids, counts)

    def char_weights(self, f: RequestFeatures) -> tuple[np.ndarray, np.ndarray]:
        """The same over the character vocabulary (empty without one).

        A request has about 2,000 distinct character buckets: they are looked up in a table of
        every bucket's column instead of binary-searched in the vocabulary (the same columns and
        weights as sparse_weights, for about a third of its instructions).
        """
        ids, counts = _bag(f, True)
        table = self._char_columns
        if not len(ids) or not len(table) or int(ids[-1]) >= len(table):  # ids are sorted
            return sparse_weights(self.char_vocab, self.char_idf, ids, counts)
        pos = table[ids]
        hit = pos >= 0
        cols = pos[hit].astype(np.int64)
        w = (1.0 + np.log(np.asarray(counts, dtype=np.float32)[hit])) * self.char_idf[cols]
        norm = float(np.sqrt((w * w).sum()))
        return cols, (w / norm if norm > 0 else w)

    @cached_property
    def _char_columns(self) -> np.ndarray:
        """int32 [every character bucket]: its column, or -1 (768 KB; empty without a vocabulary)."""
        if not len(self.char_vocab) or int(self.char_vocab[-1]) >= CHAR_BUCKETS:
            return np.zeros(0, dtype=np.int32)
        table = np.full(CHAR_BUCKETS, -1, dtype=np.int32)
        table[self.char_vocab] = np.arange(len(self.char_vocab), dtype=np.int32)
        return table

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
    """Per-model ridge regressions of score on the TF-IDF vector (columns follow the anchor models).

    Their input is the word TF-IDF vector beside the character TF-IDF vector, each L2-normalised;
    `char_coef` rows follow the projection's `char_vocab` (empty: a word-only predictor).
    """

    coef: np.ndarray  # float32 [V, M]
    intercept: np.ndarray  # float32 [M]
    char_coef: np.ndarray = field(default_factory=_no_weights)  # float32 [C, M]
    # the multiple-choice block (option_ngrams; empty unless fitted with it): its vocabulary, IDF
    # weights and coefficients [O, M]
    option_vocab: np.ndarray = field(default_factory=_no_ids)
    option_idf: np.ndarray = field(default_factory=_no_weights)
    option_coef: np.ndarray = field(default_factory=_no_weights)
    # per-model Platt calibration (fit_platt; empty unless fitted with it): a head's served value is
    # sigmoid(platt_a * raw + platt_b); a NaN platt_a leaves that model's head raw (identity)
    platt_a: np.ndarray = field(default_factory=_no_weights)
    platt_b: np.ndarray = field(default_factory=_no_weights)

    def calibrate(self, raw: np.ndarray) -> np.ndarray:
        """Heads [..., M] (float64) as served: each calibrated model's through its sigmoid, the rest as is."""
        if not len(self.platt_a):
            return raw
        on, a, b, every = self._platt
        calibrated = 1.0 / (1.0 + np.exp(-(a * raw + b)))
        return calibrated if every else np.where(on, calibrated, raw)

    @cached_property
    def _platt(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, bool]:
        """(calibrated models, a, b with 0 for the others, whether every model is calibrated): computed
        once per predictor instead of on every request."""
        a = self.platt_a.astype(np.float64)
        on = ~np.isnan(a)
        return on, np.where(on, a, 0.0), np.where(on, self.platt_b.astype(np.float64), 0.0), bool(on.all())

    def value(self, cols: np.ndarray, w: np.ndarray, ccols: np.ndarray, cw: np.ndarray) -> np.ndarray:
        """Every head for one request, from its word (cols, w) and character (ccols, cw) weights."""
        out = w @ self.coef[cols] + self.intercept if len(cols) else self.intercept
        if len(ccols) and len(self.char_coef):
            out = out + cw @ self.char_coef[ccols]
        return out

    def option_value(self, text: str) -> np.ndarray | float:
        """The multiple-choice block's share of every head for one request text (0 without one)."""
        if not len(self.option_vocab):
            return 0.0
        ocols, ow = sparse_weights(self.option_vocab, self.option_idf, *option_ngrams(text))
        return ow @ self.option_coef[ocols] if len(ocols) else 0.0

    def predict(self, projection: TextProjection, features: Sequence[RequestFeatures]) -> np.ndarray:
        out = np.empty((len(features), len(self.intercept)), dtype=np.float64)
        for i, f in enumerate(features):
            out[i] = self.value(*projection.weights(f.ngram_ids, f.ngram_counts), *projection.char_weights(f))
            out[i] += self.option_value(f.text)
        return self.calibrate(out)


def fit_platt(heads: np.ndarray, scores: np.ndarray, min_prompts: int) -> tuple[np.ndarray, np.ndarray]:
    """Per model, (a, b) of a 1-D logistic regression of the score on the head's value: heads and scores
    [P, M], the heads out of fold, scores in [0, 1] as soft labels (cross-entropy, Newton steps).

    A model with fewer than `min_prompts` scored prompts keeps its raw head (a = b = NaN): on a small
    set (mt-bench's 80 prompts) a calibration fitted on a few dozen prompts cost more than it gave.
    """
    m = scores.shape[1]
    out_a = np.full(m, np.nan, dtype=np.float32)
    out_b = np.full(m, np.nan, dtype=np.float32)
    for j in range(m):
        ok = ~np.isnan(scores[:, j]) & np.isfinite(heads[:, j])
        if ok.sum() < max(min_prompts, 2):
            continue
        x, y = heads[ok, j].astype(np.float64), np.clip(scores[ok, j], 0.0, 1.0)
        if float(x.std()) <= 1e-12:
            continue
        out_a[j], out_b[j] = _platt_one(x, y)
    return out_a, out_b


def _platt_one(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(a, b) minimising the cross-entropy of sigmoid(a * x + b) against soft labels y (Newton steps)."""
    design = np.stack([x, np.ones_like(x)], axis=1)
    theta = np.array([1.0, 0.0])
    ridge = np.diag([1e-6 * len(x), 0.0])  # a touch of shrinkage on the slope (separable data)

    def loss(t: np.ndarray) -> float:
        z = design @ t
        return float((np.logaddexp(0.0, z) - y * z).sum() + 0.5 * ridge[0, 0] * t[0] ** 2)

    current = loss(theta)
    for _ in range(50):
        p = 1.0 / (1.0 + np.exp(-(design @ theta)))
        grad = design.T @ (p - y) + ridge @ theta
        hess = (design * (p * (1.0 - p))[:, None]).T @ design + ridge + 1e-12 * np.eye(2)
        step = np.linalg.solve(hess, grad)
        size = 1.0
        while size > 1e-4:  # halve the step until the loss goes down
            trial = theta - size * step
            new = loss(trial)
            if new <= current:
                break
            size /= 2
        else:
            break
        theta, moved, current = trial, float(np.abs(size * step).max()), new
        if moved < 1e-10:
            break
    return float(theta[0]), float(theta[1])


def fit_heads(
    matrix: Any,
    scores: np.ndarray,
    folds: np.ndarray,
    n_folds: int,
    alpha: float | Sequence[float] = 1.0,
    nb_beta: float = 0.0,
    progress: Callable[[float], None] | None = None,
) -> tuple[np.ndarray, TextHeads]:
    """(out-of-fold predictions [P, M], heads fitted on every prompt) for score matrix [P, M] (NaN = none).

    Given several penalties `alpha`, each group of models keeps the one with the lowest out-of-fold
    squared error (the folds serve both: the choice and the out-of-fold predictions).

    With `nb_beta` > 0 (and a group fitted model by model), each model's head is an NBSVM-style ridge:
    every input column is scaled by |its naive-Bayes log-count ratio for that model|^nb_beta (from the
    fitting rows alone, so out of fold within the folds), which lowers the penalty on n-grams that
    separate the model's right answers from its wrong ones. The scale is folded into the stored
    coefficients, so serving is unchanged; each model then keeps its own penalty.
    """

    alphas = [float(alpha)] if isinstance(alpha, int | float) else [float(a) for a in alpha]
    p, m = scores.shape
    oof = np.full((p, m), np.nan)
    coef = np.zeros((matrix.shape[1], m), dtype=np.float32)
    intercept = np.zeros(m, dtype=np.float32)
    scores, groups = head_groups(scores)
    known = ~np.isnan(scores)
    presence = None  # the input's nonzero pattern (for the naive-Bayes ratios), made on first use
    fitted = 0

    def fitted_more(models: int) -> None:  # the share of models whose heads are fitted
        nonlocal fitted
        fitted += models
        if progress is not None:
            progress(fitted / m)

    for cols in groups:
        rows = known[:, cols[0]]
        if rows.sum() < 10:
            fill = np.nanmean(scores[:, cols], axis=0) if rows.any() else np.full(len(cols), 0.5)
            intercept[cols] = fill
            oof[:, cols] = fill
            fitted_more(len(cols))
            continue
        # many models on many prompts: fit the heads of the score matrix's leading components, not
        # one per model (a ridge fit is linear in its targets, so with every component it is exact)
        basis = score_basis(scores[rows][:, cols], max(LATENT_MIN, HEAD_TARGET_BUDGET // int(rows.sum())))
        if basis is None and nb_beta > 0:
            if presence is None:
                presence = matrix.copy()
                presence.data[:] = 1.0
            for j in cols:
                oof[:, j], coef[:, j], intercept[j] = _nb_ridge(
                    matrix, presence, scores[:, j], rows, folds, n_folds, alphas, nb_beta
                )
                fitted_more(1)
            continue
        y = scores[:, cols] if basis is None else (scores[:, cols] - basis[0]) @ basis[1].T
        pred, group_coef, group_intercept = _ridge_group(
            matrix, y, rows, folds, n_folds, alphas, block=basis is not None
        )
        if basis is not None:  # back from components to models
            center, components = basis
            pred = pred @ components + center
            group_coef = group_coef @ components
            group_intercept = group_intercept @ components + center
        oof[:, cols] = pred
        coef[:, cols] = group_coef.astype(np.float32)
        intercept[cols] = group_intercept.astype(np.float32)
        fitted_more(len(cols))
    return oof, TextHeads(coef=coef, intercept=intercept)


def _ridge_group(
    matrix: Any,
    y: np.ndarray,
    rows: np.ndarray,
    folds: np.ndarray,
    n_folds: int,
    alphas: Sequence[float],
    *,
    block: bool,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(out-of-fold predictions [P, k], coef [V, k], intercept [k]) of ridge heads for targets
    y [P, k] at the penalty chosen out of fold: sklearn's Ridge, or with `block` every target in one
    block solve warm-started from the last penalty's (ridge_block)."""
    from sklearn.linear_model import Ridge

    starts: dict[int, np.ndarray] = {}

    def fold_predict(a: float, f: int, fit_rows: np.ndarray, target: np.ndarray) -> np.ndarray:
        if not block:
            model = Ridge(alpha=a).fit(matrix[fit_rows], y[fit_rows])
            return np.asarray(model.predict(matrix[target])).reshape(-1, y.shape[1])
        w, b, starts[f] = ridge_block(matrix[fit_rows], y[fit_rows], a, start=starts.get(f))
        return np.asarray(matrix[target] @ w + b)

    chosen, pred = _penalty_out_of_fold(alphas, y, rows, folds, n_folds, fold_predict)
    if block:
        coef, intercept, _ = ridge_block(matrix[rows], y[rows], chosen)
        return pred, coef, intercept
    model = Ridge(alpha=chosen).fit(matrix[rows], y[rows])
    coef = np.asarray(model.coef_, dtype=np.float64).reshape(y.shape[1], -1).T  # [V, targets]
    return pred, coef, np.asarray(model.intercept_, dtype=np.float64).reshape(-1)


def head_groups(scores: np.ndarray) -> tuple[np.ndarray, list[list[int]]]:
    """(the scores the heads fit, groups of model columns fitted together).

    Models scored on the same prompts are fitted together (one multi-target solve). When that
    leaves more scores to fit than HEAD_TARGET_BUDGET, the models scored on at least
    DENSE_COVERAGE of the prompts form one group, their few missing scores filled with the model's
    mean (fitting only): real data sets miss a handful of answers per model, which made every
    model a group of its own, one solve per model, however many there were.
    """
    known = ~np.isnan(scores)
    by_pattern: dict[bytes, list[int]] = {}
    for j in range(scores.shape[1]):
        by_pattern.setdefault(np.packbits(known[:, j]).tobytes(), []).append(j)
    groups = list(by_pattern.values())
    work = sum(int(known[:, cols[0]].sum()) * len(cols) for cols in groups)
    dense = [j for j in range(scores.shape[1]) if known[:, j].mean() >= DENSE_COVERAGE]
    if work <= HEAD_TARGET_BUDGET or len(dense) < 2:
        return scores, groups
    filled = scores.copy()
    for j in dense:
        filled[~known[:, j], j] = np.nanmean(scores[:, j])
    rest = [[j for j in cols if j not in dense] for cols in groups]
    return filled, [dense, *[cols for cols in rest if cols]]


DENSE_COVERAGE = 0.9


def nb_scale(presence: Any, y: np.ndarray, beta: float) -> np.ndarray:
    """Per input column, |naive-Bayes log-count ratio of y|^beta, normalised to mean 1 before the power.

    `presence` [n, V] marks the n-grams each prompt contains; y [n] in [0, 1] counts as soft labels
    (a score of 0.7 adds 0.7 to the column's "right" count and 0.3 to its "wrong" count), each
    count smoothed by 1.
    """
    right = 1.0 + np.asarray(presence.T @ y).ravel()
    wrong = 1.0 + np.asarray(presence.T @ (1.0 - y)).ravel()
    ratio = np.abs(np.log(right / right.sum()) - np.log(wrong / wrong.sum()))
    return (ratio / max(float(ratio.mean()), 1e-12)) ** beta


def _nb_ridge(
    matrix: Any,
    presence: Any,
    scores: np.ndarray,
    rows: np.ndarray,
    folds: np.ndarray,
    n_folds: int,
    alphas: Sequence[float],
    beta: float,
) -> tuple[np.ndarray, np.ndarray, float]:
    """One model's (out-of-fold predictions [P], coef [V] on the unscaled input, intercept): a ridge on
    the input scaled by nb_scale, the scale recomputed from each fold's fitting rows."""
    from scipy import sparse
    from sklearn.linear_model import Ridge

    y = np.where(rows, scores, 0.0)
    scaled: dict[int, Any] = {}  # per fold: the input scaled by that fold's ratios

    def fold_predict(a: float, f: int, fit_rows: np.ndarray, target: np.ndarray) -> np.ndarray:
        if f not in scaled:
            scaled[f] = matrix @ sparse.diags(nb_scale(presence[fit_rows], y[fit_rows], beta))
        model = Ridge(alpha=a).fit(scaled[f][fit_rows], y[fit_rows])
        return np.asarray(model.predict(scaled[f][target])).reshape(-1, 1)

    chosen, pred = _penalty_out_of_fold(alphas, y[:, None], rows, folds, n_folds, fold_predict)
    scale = nb_scale(presence[rows], y[rows], beta)
    model = Ridge(alpha=chosen).fit(matrix[rows] @ sparse.diags(scale), y[rows])
    coef = (np.asarray(model.coef_, dtype=np.float64).reshape(-1) * scale).astype(np.float32)
    return pred[:, 0], coef, float(np.asarray(model.intercept_).reshape(-1)[0])


def _penalty_out_of_fold(
    alphas: Sequence[float],
    y: np.ndarray,
    rows: np.ndarray,
    folds: np.ndarray,
    n_folds: int,
    fold_predict: Callable[[float, int, np.ndarray, np.ndarray], np.ndarray],
) -> tuple[float, np.ndarray]:
    """(the penalty with the lowest out-of-fold squared error, its out-of-fold predictions [P, k])
    for targets y [P, k] known on `rows`; `fold_predict(alpha, fold, fit_rows, target_rows)` fits
    on one fold's complement and predicts its rows."""
    best: tuple[float, float, np.ndarray] | None = None
    for a in alphas:
        pred = np.full(y.shape, np.nan)
        for f in range(n_folds):
            fit_rows = rows & (folds != f)
            target = folds == f
            if fit_rows.sum() < 5 or not target.any():
                continue
            pred[target] = fold_predict(a, f, fit_rows, target)
        scored = rows & ~np.isnan(pred[:, 0])
        err = float(np.mean((pred[scored] - y[scored]) ** 2)) if scored.any() else 0.0
        if best is None or err < best[0]:
            best = (err, a, pred)
    assert best is not None
    return best[1], best[2]


# Above this many (prompt, model) scores in one group, the heads are fitted on the score matrix's
# leading components: one ridge solve per component instead of per model. 15,000 prompts × 56
# models was still in per-model solves after 16 minutes (10 of CPU), past predict_outcomes' 10-minute budget.
HEAD_TARGET_BUDGET = 120_000
LATENT_MIN = 4


def ridge_block(
    x: Any, y: np.ndarray, alpha: float, *, start: np.ndarray | None = None, tol: float = 1e-4
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Ridge with an intercept for every column of y [n, k] at once: (coef [V, k], intercept [k],
    dual solution [n, k], a warm start for the same rows at another penalty).

    Conjugate gradients on the dual system (Xc Xc' + alpha I) A = yc, X centred implicitly (X is
    sparse and wider than tall), one column per target advanced together: each iteration reads X
    twice for every target instead of twice per target, as a solve per target does. Each column
    stops at sklearn's sparse_cg criterion (residual <= tol × |yc|), so the solution is the one
    sklearn's Ridge reaches, to that tolerance.
    """
    n, k = y.shape
    mean_x = np.asarray(x.mean(axis=0)).reshape(-1)
    mean_y = y.mean(axis=0)
    yc = y - mean_y

    def gram(a: np.ndarray) -> np.ndarray:  # (Xc Xc' + alpha I) a
        t = x.T @ a - np.outer(mean_x, a.sum(axis=0))
        return x @ t - (mean_x @ t)[None, :] + alpha * a

    sol = np.zeros((n, k)) if start is None else start.copy()
    r = yc - gram(sol)
    direction = r.copy()
    rs = (r * r).sum(axis=0)
    bound = (tol * np.linalg.norm(yc, axis=0)) ** 2
    for _ in range(10 * n):
        active = rs > bound
        if not active.any():
            break
        step_dir = np.where(active[None, :], direction, 0.0)
        applied = gram(step_dir)
        curvature = (step_dir * applied).sum(axis=0)
        step = np.where(active, rs / np.where(curvature > 0, curvature, 1.0), 0.0)
        sol += step * step_dir
        r -= step * applied
        rs_next = (r * r).sum(axis=0)
        direction = r + np.where(active, rs_next / np.where(rs > 0, rs, 1.0), 0.0) * direction
        rs = rs_next
    coef = x.T @ sol - np.outer(mean_x, sol.sum(axis=0))
    return coef, mean_y - mean_x @ coef, sol


def score_basis(y: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray] | None:
    """(column means [c], top-k right singular vectors [k, c]) of a score matrix [n, c] with more
    than k columns, else None (fit every column)."""
    if y.shape[1] <= k:
        return None
    center = y.mean(axis=0)
    _, _, vt = np.linalg.svd(y - center, full_matrices=False)
    return center, vt[:k]


# A line that opens a multiple-choice option: "A. ", "b) ", "(C) " ...
_OPTION_LINE = re.compile(r"(?m)^\(?[A-Da-d][.)]\s")
# the same line starts, found faster: a pattern opening with a literal newline lets the search jump
# from one newline to the next instead of trying every position (30 µs on the bench's 2 KB prompt)
_OPTION_AFTER_NEWLINE = re.compile(r"\n(?=\(?[A-Da-d][.)]\s)")
_OPTION_AT_START = re.compile(r"\(?[A-Da-d][.)]\s")


def option_marks(text: str) -> list[int]:
    """Where each option line starts: the positions of _OPTION_LINE's matches (a match ends at most
    at a newline, so the next line start is never inside one)."""
    marks = [m.start() + 1 for m in _OPTION_AFTER_NEWLINE.finditer(text)]
    if _OPTION_AT_START.match(text):
        marks.insert(0, 0)
    return marks


_STEM_SALT = np.uint32(0x27D4EB2F)
_OPTION_SALT = np.uint32(0x165667B1)
OPTION_BUCKETS = 1 << 22


def option_ngrams(text: str) -> tuple[np.ndarray, np.ndarray]:
    """(sorted bucket ids, counts) of a multiple-choice prompt's stem and options, apart.

    For a text with at least two option lines, the word unigrams and bigrams of the stem (before
    the first option line) and of the options (markers and a closing "Answer:" dropped), each hashed
    with its own salt into OPTION_BUCKETS; empty for any other text. The word bag mixes the two, so
    a head could not tell a word of the question from the same word among the answers.
    """
    marks = option_marks(text) if "\n" in text else []
    if len(marks) < 2:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    stem, options = text[: marks[0]], _OPTION_LINE.sub(" ", text[marks[0] :]).replace("Answer:", " ")
    b = np.concatenate(
        [
            (text_word_ngram_hashes(stem) * np.uint32(3)) ^ _STEM_SALT,
            (text_word_ngram_hashes(options) * np.uint32(5)) ^ _OPTION_SALT,
        ]
    ) & np.uint32(OPTION_BUCKETS - 1)
    ids, counts = np.unique(b, return_counts=True)
    return ids.astype(np.int64), counts.astype(np.int64)


def option_matrix(
    texts: Sequence[str],
    vocab: np.ndarray | None = None,
    idf: np.ndarray | None = None,
    max_vocab: int = 100_000,
) -> tuple[Any, np.ndarray, np.ndarray]:
    """(CSR L2-normalised TF-IDF rows of option_ngrams, vocab, idf); the vocabulary (buckets in at least
    two texts, the most frequent max_vocab) and IDF are fitted on `texts` when not given."""
    from scipy import sparse

    bags = [option_ngrams(t) for t in texts]
    if vocab is None or idf is None:
        all_ids = np.concatenate([b[0] for b in bags]) if bags else np.zeros(0, np.int64)
        ids, df = np.unique(all_ids, return_counts=True)
        keep = df >= 2
        ids, df = ids[keep], df[keep]
        if len(ids) > max_vocab:
            top = np.sort(np.argsort(-df, kind="stable")[:max_vocab])
            ids, df = ids[top], df[top]
        vocab = ids
        idf = (np.log((1.0 + len(texts)) / (1.0 + df)) + 1.0).astype(np.float32)
    indptr, indices, data = [0], [], []
    for ids, counts in bags:
        cols, w = sparse_weights(vocab, idf, ids, counts)
        indices.append(cols)
        data.append(w.astype(np.float64))
        indptr.append(indptr[-1] + len(cols))
    m = sparse.csr_matrix(
        (
            np.concatenate(data) if data else np.zeros(0),
            np.concatenate(indices) if indices else np.zeros(0, int),
            indptr,
        ),
        shape=(len(texts), len(vocab)),
    )
    return m, vocab, idf


def _bag(f: RequestFeatures, chars: bool) -> tuple[Sequence[int] | np.ndarray, Sequence[int] | np.ndarray]:
    """A request's (bucket ids, counts): its word n-grams, or with `chars` its character n-grams."""
    if chars:
        return np.frombuffer(f.char_ids, dtype="<u4"), np.frombuffer(f.char_counts, dtype="<u2")
    return f.ngram_ids, f.ngram_counts


def tfidf_matrix(
    features: Sequence[RequestFeatures], vocab: np.ndarray, idf: np.ndarray, *, chars: bool = False
) -> Any:
    """Sparse L2-normalised TF-IDF rows over `vocab` (scipy CSR); used for fitting and the kNN baseline.

    Of the word n-grams, or with `chars` of the character n-grams."""
    from scipy import sparse

    indptr = [0]
    indices: list[np.ndarray] = []
    data: list[np.ndarray] = []
    for f in features:
        ids, counts = _bag(f, chars)
        ids_a = np.asarray(ids, dtype=np.int64)
        if len(ids_a) and len(vocab):
            pos = np.minimum(np.searchsorted(vocab, ids_a), len(vocab) - 1)
            hit = vocab[pos] == ids_a
            cols = pos[hit]
            w = (1.0 + np.log(np.asarray(counts, dtype=np.float64)[hit])) * idf[cols]
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
    features: Sequence[RequestFeatures], *, min_df: int = 2, max_vocab: int = 60_000, chars: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Buckets seen in ≥ min_df prompts (the most frequent max_vocab), with smoothed IDF weights.

    Of the word n-grams, or with `chars` of the character n-grams."""
    n = len(features)
    all_ids = (
        np.concatenate([np.asarray(_bag(f, chars)[0], dtype=np.int64) for f in features])
        if n
        else np.zeros(0, int)
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


def fit_projection(
    features: Sequence[RequestFeatures], *, dim: int, seed: int, char_vocab: int = 0
) -> TextProjection:
    """The word projection; with `char_vocab` > 0 also a character vocabulary of at most that many buckets."""
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
    if char_vocab > 0:
        cvocab, cidf = fit_vocabulary(features, max_vocab=char_vocab, chars=True)
    else:
        cvocab, cidf = _no_ids(), _no_weights()
    return TextProjection(
        vocab=vocab,
        idf=idf,
        components=np.ascontiguousarray(components),
        char_vocab=cvocab,
        char_idf=cidf,
    )
