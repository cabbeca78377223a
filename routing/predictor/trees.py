"""A vectorised numpy evaluator of XGBoost tree ensembles, for the live route path.

XGBoost's own predict costs ~0.4 ms of fixed overhead per call; routing scores 5–200 candidates
per request, so every booster is converted once (at load) from its UBJSON/JSON model into
complete binary trees of one depth, stored as flat arrays, and evaluated level by level for all
rows and all trees at once. Leaves that end above the full depth are padded with pass-through
splits (threshold +inf, missing goes left) that repeat the leaf, so the result is exact.

`contributions()` gives XGBoost's `pred_contribs=True, approx_contribs=True` (Saabas) values for
one row: along each tree's path, the change of the node mean value is credited to the split's
feature; the bias column holds the base margin plus the roots' mean values.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

_LOGISTIC = {"reg:logistic", "binary:logistic"}
_IDENTITY = {"reg:squarederror", "reg:absoluteerror", "reg:pseudohubererror"}


class CompiledMargins(Protocol):
    def margins(self, x: np.ndarray) -> np.ndarray: ...


class TreeModelError(ValueError):
    """The booster cannot be converted (unsupported objective or tree layout)."""


@dataclass(frozen=True)
class TreeEnsemble:
    """One booster as complete trees of `depth`: arrays indexed [tree, node]."""

    depth: int
    features: np.ndarray  # int32 [T, 2^depth - 1]
    thresholds: np.ndarray  # float32 [T, 2^depth - 1]
    default_left: np.ndarray  # bool [T, 2^depth - 1]
    leaves: np.ndarray  # float32 [T, 2^depth]
    node_means: np.ndarray  # float32 [T, 2^(depth+1) - 1] Saabas node mean values (internal, then leaves)
    base_margin: float
    logistic: bool
    n_features: int

    @property
    def n_trees(self) -> int:
        return int(self.features.shape[0])


def _base_score(learner: dict[str, Any]) -> float:
    raw = learner["learner_model_param"]["base_score"]
    if isinstance(raw, str):
        raw = raw.strip("[]").split(",")[0]
    return float(raw)


def ensemble_from_ubj(raw: bytes) -> TreeEnsemble:
    """Booster bytes (XGBoost's UBJSON, as artifacts hold them) converted without xgboost (ubjson.py)."""
    from routing.predictor import ubjson

    return ensemble_from_json(ubjson.loads(raw))


def ensemble_from_json(model_json: bytes | bytearray | str | dict[str, Any]) -> TreeEnsemble:
    """Convert XGBoost's JSON model (booster.save_raw("json")) into a TreeEnsemble."""
    doc = (
        json.loads(bytes(model_json))
        if isinstance(model_json, bytes | bytearray)
        else (json.loads(model_json) if isinstance(model_json, str) else model_json)
    )
    learner = doc["learner"]
    objective = learner["objective"]["name"]
    if objective in _LOGISTIC:
        logistic = True
    elif objective in _IDENTITY:
        logistic = False
    else:
        raise TreeModelError(f"objective {objective!r} is not supported by the fast evaluator")
    booster = learner["gradient_booster"]
    if booster.get("name") != "gbtree":
        raise TreeModelError(f"booster {booster.get('name')!r} is not a tree booster")
    trees = booster["model"]["trees"]
    n_features = int(learner["learner_model_param"]["num_feature"])
    base = _base_score(learner)
    if logistic:
        base = min(max(base, 1e-7), 1 - 1e-7)
        base_margin = math.log(base / (1 - base))
    else:
        base_margin = base
    parsed = [_parse_tree(t) for t in trees]
    depth = max((p[1] for p in parsed), default=0)
    depth = max(depth, 1)
    n_int, n_leaf = (1 << depth) - 1, 1 << depth
    t_count = max(len(parsed), 1)
    feats = np.zeros((t_count, n_int), dtype=np.int32)
    thr = np.full((t_count, n_int), np.inf, dtype=np.float32)
    dleft = np.ones((t_count, n_int), dtype=bool)
    leaves = np.zeros((t_count, n_leaf), dtype=np.float32)
    means = np.zeros((t_count, n_int + n_leaf), dtype=np.float32)
    for ti, (tree, _) in enumerate(parsed):
        _fill(tree, 0, 0, 0, depth, feats[ti], thr[ti], dleft[ti], leaves[ti], means[ti])
    return TreeEnsemble(depth, feats, thr, dleft, leaves, means, base_margin, logistic, n_features)


def _parse_tree(tree: dict[str, Any]) -> tuple[dict[str, Any], int]:
    left = tree["left_children"]
    right = tree["right_children"]
    cond = np.asarray(tree["split_conditions"], dtype=np.float32)
    idx = tree["split_indices"]
    dl = tree["default_left"]
    hess = tree["sum_hessian"]
    if any(int(t) != 0 for t in tree.get("split_type", [])):
        raise TreeModelError("categorical splits are not supported")
    mean = np.zeros(len(left), dtype=np.float64)

    def depth_and_mean(node: int) -> int:
        if left[node] == -1:
            mean[node] = float(cond[node])
            return 0
        d = 1 + max(depth_and_mean(left[node]), depth_and_mean(right[node]))
        hl, hr = hess[left[node]], hess[right[node]]
        total = hl + hr
        mean[node] = (mean[left[node]] * hl + mean[right[node]] * hr) / total if total > 0 else 0.0
        return d

    depth = depth_and_mean(0)
    return {"left": left, "right": right, "cond": cond, "idx": idx, "dl": dl, "mean": mean}, depth


def _fill(
    tree: dict[str, Any],
    node: int,
    pos: int,
    level: int,
    depth: int,
    feats: np.ndarray,
    thr: np.ndarray,
    dleft: np.ndarray,
    leaves: np.ndarray,
    means: np.ndarray,
) -> None:
    n_int = (1 << depth) - 1
    means[pos] = tree["mean"][node]
    if level == depth:
        leaves[pos - n_int] = tree["cond"][node]
        return
    left, right = tree["left"][node], tree["right"][node]
    if left == -1:  # a leaf above full depth: pass-through split repeating it
        feats[pos], thr[pos], dleft[pos] = 0, np.inf, True
        _fill(tree, node, 2 * pos + 1, level + 1, depth, feats, thr, dleft, leaves, means)
        _fill(tree, node, 2 * pos + 2, level + 1, depth, feats, thr, dleft, leaves, means)
        return
    feats[pos] = tree["idx"][node]
    thr[pos] = tree["cond"][node]
    dleft[pos] = bool(tree["dl"][node])
    _fill(tree, left, 2 * pos + 1, level + 1, depth, feats, thr, dleft, leaves, means)
    _fill(tree, right, 2 * pos + 2, level + 1, depth, feats, thr, dleft, leaves, means)


class ForestEvaluator:
    """Several boosters of one feature space evaluated in one pass (e.g. a quality ensemble + length)."""

    def __init__(self, ensembles: Sequence[TreeEnsemble]) -> None:
        if not ensembles:
            raise TreeModelError("no boosters to evaluate")
        depth = max(e.depth for e in ensembles)
        padded = [_deepen(e, depth) for e in ensembles]
        self.depth = depth
        self.n_int = (1 << depth) - 1
        self.ensembles = padded
        self.n_features = max(e.n_features for e in ensembles)
        self._features = np.concatenate([e.features for e in padded]).ravel()
        self._thresholds = np.concatenate([e.thresholds for e in padded]).ravel()
        self._default_left = np.concatenate([e.default_left for e in padded]).ravel()
        self._leaves = np.concatenate([e.leaves for e in padded]).ravel()
        counts = [e.n_trees for e in padded]
        self._n_trees = sum(counts)
        self._bounds = np.cumsum([0, *counts])
        self._tree_offsets = (np.arange(self._n_trees, dtype=np.int64) * self.n_int)[None, :]
        self._leaf_offsets = (np.arange(self._n_trees, dtype=np.int64) << depth)[None, :]
        # Missing values are folded into the feature index: rows are evaluated against
        # [x with NaN -> -inf | x with NaN -> +inf]; a default-left node reads the first half
        # (-inf < any finite threshold: left), a default-right node the second (+inf: right).
        # Pass-through nodes (threshold +inf) have two equal subtrees, so their side is moot.
        f = self.n_features
        self._split_at = np.where(self._default_left, self._features, self._features + f).astype(np.int64)
        self._root_split = self._split_at[self._tree_offsets[0]][None, :]
        self._root_threshold = self._thresholds[self._tree_offsets[0]][None, :]
        self._child_base = 1 - self._tree_offsets  # global child = 2 * global + child_base + went_right
        tree_of = np.repeat(np.arange(self._n_trees, dtype=np.int64), self.n_int)
        self._left_child = (
            2 * np.arange(self._n_trees * self.n_int, dtype=np.int64) + 1 - tree_of * self.n_int
        )
        self._leaf_shift = np.arange(self._n_trees, dtype=np.int64)[None, :] - self.n_int
        self._base = np.asarray([e.base_margin for e in padded], dtype=np.float64)
        logistic = [j for j, e in enumerate(padded) if e.logistic]
        self._logistic_cols = np.asarray(logistic, dtype=np.int64) if logistic else None
        self.compiled: CompiledMargins | None = None  # set once a checked compiled library is loaded

    def use_compiled(self, compiled: CompiledMargins | None) -> None:
        """Serve margins from `compiled` (compiled.py) from now on; None goes back to numpy."""
        self.compiled = compiled

    def margins(self, x: np.ndarray) -> np.ndarray:
        """Raw margins [rows, boosters] (base margin included), compiled when a library is attached."""
        compiled = self.compiled
        if compiled is not None:
            return compiled.margins(x)
        return self.margins_numpy(x)

    def margins_numpy(self, x: np.ndarray) -> np.ndarray:
        """Raw margins [rows, boosters] (base margin included): every row × every tree, level by level."""
        x = np.asarray(x, dtype=np.float32)
        rows, f = x.shape[0], self.n_features
        if x.ndim != 2 or x.shape[1] < f:
            raise ValueError(f"rows of {f} features expected, got shape {x.shape}")
        x = x[:, :f]
        missing = np.isnan(x)
        flat = np.concatenate(
            [np.where(missing, np.float32(-np.inf), x), np.where(missing, np.float32(np.inf), x)], axis=1
        ).ravel()
        row_base = (np.arange(rows, dtype=np.int64) * (2 * f))[:, None]
        at = self._root_split + row_base
        went_right = flat.take(at) >= self._root_threshold
        node = self._tree_offsets * 2 + self._child_base + went_right  # [rows, trees], global index
        for _ in range(self.depth - 1):
            at = self._split_at.take(node)
            at += row_base
            went_right = flat.take(at) >= self._thresholds.take(node)
            node = self._left_child.take(node)
            node += went_right
        node += self._leaf_shift
        leaf_values = self._leaves.take(node)
        sums = np.add.reduceat(leaf_values, self._bounds[:-1], axis=1, dtype=np.float64)
        sums += self._base
        return sums

    def margins_reference(self, x: np.ndarray) -> np.ndarray:
        """The first evaluator (NaN tested at every node); kept as the reference in tests."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        rows = x.shape[0]
        node = np.zeros((rows, self._n_trees), dtype=np.int64)
        row_base = (np.arange(rows, dtype=np.int64) * x.shape[1])[:, None]
        flat_x = x.ravel()
        for _ in range(self.depth):
            at = node + self._tree_offsets
            value = flat_x[row_base + self._features[at]]
            go_left = (value < self._thresholds[at]) | ((value != value) & self._default_left[at])
            node = 2 * node + 2 - go_left
        leaf_values = self._leaves[node - self.n_int + self._leaf_offsets]
        sums = np.add.reduceat(leaf_values, self._bounds[:-1], axis=1, dtype=np.float64)
        for j, e in enumerate(self.ensembles):
            sums[:, j] += e.base_margin
            if e.n_trees == 0:
                sums[:, j] = e.base_margin
        return sums

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Predictions [rows, boosters] on the boosters' output scale (sigmoid for logistic)."""
        out = self.margins(x)
        if self._logistic_cols is not None:
            out[:, self._logistic_cols] = 1.0 / (1.0 + np.exp(-out[:, self._logistic_cols]))
        return out

    def contributions(self, x_row: np.ndarray, booster: int = 0) -> np.ndarray:
        """Saabas contributions of one row for one booster: [n_features + 1], last = bias (margin space)."""
        e = self.ensembles[booster]
        x = np.asarray(x_row, dtype=np.float32).ravel()
        trees = np.arange(e.n_trees)
        node = np.zeros(e.n_trees, dtype=np.int64)
        feats, deltas = [], []
        for _ in range(e.depth):
            feat = e.features[trees, node]
            value = x[feat]
            go_left = (value < e.thresholds[trees, node]) | (np.isnan(value) & e.default_left[trees, node])
            child = 2 * node + 2 - go_left
            feats.append(feat)
            deltas.append(e.node_means[trees, child] - e.node_means[trees, node])
            node = child
        # one bincount over the path steps in level order: each feature's sum is added in the
        # order np.add.at level by level would add it (tested equal), at a fraction of its cost
        out = np.bincount(
            np.concatenate(feats),
            weights=np.concatenate(deltas).astype(np.float64),
            minlength=self.n_features + 1,
        )
        out[-1] = e.base_margin + float(e.node_means[:, 0].sum())
        return out


def _deepen(e: TreeEnsemble, depth: int) -> TreeEnsemble:
    """The same trees at a larger depth (leaves repeated below pass-through splits)."""
    if e.depth == depth:
        return e
    grow = depth - e.depth
    n_int = (1 << depth) - 1
    t = e.n_trees
    feats = np.zeros((t, n_int), dtype=np.int32)
    thr = np.full((t, n_int), np.inf, dtype=np.float32)
    dleft = np.ones((t, n_int), dtype=bool)
    means = np.zeros((t, n_int + (1 << depth)), dtype=np.float32)
    old_int = (1 << e.depth) - 1
    # copy level by level: a node at (level, k) keeps its index 2^level - 1 + k
    for level in range(e.depth):
        lo, hi = (1 << level) - 1, (1 << (level + 1)) - 1
        feats[:, lo:hi] = e.features[:, lo:hi]
        thr[:, lo:hi] = e.thresholds[:, lo:hi]
        dleft[:, lo:hi] = e.default_left[:, lo:hi]
        means[:, lo:hi] = e.node_means[:, lo:hi]
    leaf_means = e.node_means[:, old_int:]
    for extra in range(grow + 1):
        level = e.depth + extra
        lo = (1 << level) - 1
        width = 1 << extra
        means[:, lo : lo + (width << e.depth)] = np.repeat(leaf_means, width, axis=1)
    leaves = np.repeat(e.leaves, 1 << grow, axis=1)
    return TreeEnsemble(depth, feats, thr, dleft, leaves, means, e.base_margin, e.logistic, e.n_features)
