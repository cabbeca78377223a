"""A ForestEvaluator compiled to C: every booster's trees as nested comparisons in one shared library.

The numpy evaluator walks all trees level by level with a dozen array calls per level; at 20
candidates most of its time is numpy's per-call overhead, at 200 it is the gathers. The same
trees as straight-line C cost ~5 ns a node and one ctypes call per request.

The C code is generated from the evaluator's own padded trees and reproduces their semantics
exactly (a default-left node is `!(x >= t)`, so NaN goes left; a default-right node `x < t`);
where both children of a node are the same code (the pass-through padding) only one is kept.
Leaves are summed in double in tree order, as `ForestEvaluator.margins` does.

Libraries are cached under a directory (SCOPE_VAR_DIR/forests) by a hash of the trees and of
this generator, written atomically, and compiled by one process at a time (a file lock), so
other processes only load them. Before use, a fresh library is checked against the numpy
evaluator on probe rows built from the split thresholds (with NaNs); a library that disagrees,
a missing compiler or a failed build leaves the numpy evaluator in place.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from routing.predictor.trees import ForestEvaluator, TreeEnsemble

log = logging.getLogger(__name__)

CODEGEN_VERSION = 1
CFLAGS = ("-O1", "-shared", "-fPIC", "-std=c99")  # no -ffast-math: NaN and comparisons must stay IEEE
COMPILE_TIMEOUT_S = 300.0
_SYMBOL = "scope_forest"


class CompiledForest:
    """The margins of a ForestEvaluator from its compiled library: [rows, boosters], base margin included."""

    def __init__(self, path: Path, n_features: int, n_boosters: int) -> None:
        self.path = path
        self.n_features = n_features
        self.n_boosters = n_boosters
        self._lib = ctypes.CDLL(str(path))  # kept: the function must not outlive its library
        fn = getattr(self._lib, _SYMBOL)
        fn.argtypes = (ctypes.c_void_p, ctypes.c_long, ctypes.c_long, ctypes.c_void_p)
        fn.restype = None
        self._fn = fn

    def margins(self, x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] < self.n_features:
            raise ValueError(f"rows of {self.n_features} features expected, got shape {x.shape}")
        out = np.empty((x.shape[0], self.n_boosters), dtype=np.float64)
        self._fn(x.ctypes.data, x.shape[0], x.shape[1], out.ctypes.data)
        return out


def forest_key(evaluator: ForestEvaluator) -> str:
    """A name for the library: a hash of the generator, the compiler flags and every tree array."""
    h = hashlib.sha256(f"scope-forest/{CODEGEN_VERSION}/{' '.join(CFLAGS)}".encode())
    for e in evaluator.ensembles:
        h.update(f"{e.depth}/{e.n_trees}/{e.base_margin!r}/{e.n_features}|".encode())
        for array in (e.features, e.thresholds, e.default_left, e.leaves):
            h.update(np.ascontiguousarray(array).tobytes())
    return h.hexdigest()[:32]


def _c_float(value: float) -> str:
    if np.isnan(value):
        return "NAN"
    if np.isinf(value):
        return "INFINITY" if value > 0 else "(-INFINITY)"
    return float(value).hex()  # exact; a float32 threshold compared as double gives the same order


def _tree_expr(e: TreeEnsemble, t: int, pos: int, level: int) -> str:
    if level == e.depth:
        return _c_float(float(e.leaves[t, pos - ((1 << e.depth) - 1)]))
    left = _tree_expr(e, t, 2 * pos + 1, level + 1)
    right = _tree_expr(e, t, 2 * pos + 2, level + 1)
    if left == right:  # the same function on both sides: the split cannot matter
        return left
    f = int(e.features[t, pos])
    threshold = _c_float(float(e.thresholds[t, pos]))
    test = f"!(v[{f}] >= {threshold})" if e.default_left[t, pos] else f"v[{f}] < {threshold}"
    return f"({test} ? {left} : {right})"


def forest_source(evaluator: ForestEvaluator) -> str:
    """C99 source of `void scope_forest(const float *x, long rows, long stride, double *out)`."""
    lines = ["#include <math.h>", ""]
    sums = []
    for b, e in enumerate(evaluator.ensembles):
        terms = []
        for t in range(e.n_trees):
            name = f"b{b}t{t}"
            lines.append(f"static double {name}(const float *v) {{ return {_tree_expr(e, t, 0, 0)}; }}")
            terms.append(f"{name}(v)")
        body = "".join(f"\n        s += {term};" for term in terms)
        sums.append(f"        s = {_c_float(e.base_margin)};{body}\n        o[{b}] = s;")
    lines += [
        "",
        f"void {_SYMBOL}(const float *x, long rows, long stride, double *out) {{",
        "    for (long r = 0; r < rows; ++r) {",
        "        const float *v = x + r * stride;",
        f"        double *o = out + r * {len(evaluator.ensembles)};",
        "        double s;",
        *sums,
        "    }",
        "}",
        "",
    ]
    return "\n".join(lines)


def probe_rows(evaluator: ForestEvaluator, n: int = 256, seed: int = 0) -> np.ndarray:
    """Rows that exercise both sides of many splits: values at, just around and far from thresholds, and NaN."""
    rng = np.random.default_rng(seed)
    f = evaluator.n_features
    out = rng.normal(size=(n, f)).astype(np.float32)
    for e in evaluator.ensembles:
        real = np.isfinite(e.thresholds)
        if not real.any():
            continue
        feats, thr = e.features[real], e.thresholds[real]
        pick = rng.integers(0, len(thr), size=n * 8)
        rows = rng.integers(0, n, size=n * 8)
        nudge = rng.choice(np.asarray([-1, 0, 1], dtype=np.int8), size=n * 8)
        values = thr[pick]
        values = np.where(nudge < 0, np.nextafter(values, np.float32(-np.inf)), values)
        values = np.where(nudge > 0, np.nextafter(values, np.float32(np.inf)), values)
        out[rows, feats[pick]] = values
    out[rng.random(out.shape) < 0.15] = np.nan
    out[0] = np.nan
    return out


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path, "a+b") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _compiler() -> str | None:
    return shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")


def load_cached(evaluator: ForestEvaluator, cache_dir: Path) -> CompiledForest | None:
    """The forest's library if it was compiled before (by any process), else None; never compiles."""
    path = Path(cache_dir) / f"forest-{forest_key(evaluator)}.so"
    if not path.exists():
        return None
    return _checked(evaluator, path)


def compile_forest(evaluator: ForestEvaluator, cache_dir: Path) -> CompiledForest | None:
    """Load the forest's library from the cache, compiling it first if needed; None when that fails."""
    cache_dir = Path(cache_dir)
    key = forest_key(evaluator)
    path = cache_dir / f"forest-{key}.so"
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        with _locked(cache_dir / f"forest-{key}.lock"):
            if not path.exists():
                _build(evaluator, path)
    except (OSError, subprocess.SubprocessError) as exc:
        log.warning("tree compilation unavailable, the numpy evaluator keeps serving: %s", exc)
        return None
    return _checked(evaluator, path)


def _build(evaluator: ForestEvaluator, path: Path) -> None:
    cc = _compiler()
    if cc is None:
        raise OSError("no C compiler (cc/gcc) on PATH")
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        source = Path(tmp) / "forest.c"
        source.write_text(forest_source(evaluator), encoding="ascii")
        built = Path(tmp) / "forest.so"
        done = subprocess.run(
            [cc, *CFLAGS, "-o", str(built), str(source), "-lm"],
            capture_output=True,
            text=True,
            timeout=COMPILE_TIMEOUT_S,
            check=False,
        )
        if done.returncode != 0:
            raise OSError(f"{cc} failed ({done.returncode}): {done.stderr.strip()[:500]}")
        os.replace(built, path)  # atomic: other processes see no library or a whole one


def _checked(evaluator: ForestEvaluator, path: Path) -> CompiledForest | None:
    try:
        forest = CompiledForest(path, evaluator.n_features, len(evaluator.ensembles))
    except (OSError, AttributeError) as exc:
        log.warning("compiled forest %s cannot be loaded: %s", path.name, exc)
        return None
    x = probe_rows(evaluator)
    expected = evaluator.margins_numpy(x)
    got = forest.margins(x)
    if not np.allclose(got, expected, rtol=0.0, atol=1e-5, equal_nan=True):
        worst = float(np.nanmax(np.abs(got - expected)))
        log.error("compiled forest %s disagrees with the numpy evaluator (%.3g); not used", path.name, worst)
        return None
    return forest
