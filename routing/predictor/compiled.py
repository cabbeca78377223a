"""Tree evaluation in C: a small fixed kernel, compiled once per machine, over the evaluator's own arrays.

The numpy evaluator walks all trees level by level with a dozen array calls per level; at 20
candidates most of its time is numpy's per-call overhead. The kernel here is the same walk in C:
per tree, level by level over all rows (independent rows keep the CPU's loads in flight; below
16 rows, each row's walk unrolled instead, for half the instructions), with
missing values folded into the feature index as in `ForestEvaluator.margins_numpy` (a
default-left split reads the row with NaN as -inf, a default-right one the row with NaN as
+inf), so each step is one load and one `>=`, without branches. Its cost does not depend on how
predictable the splits are nor on the forest's code size, unlike trees generated as C code
(measured: 2-4x faster than those on 1,200 depth-6 trees with rows that vary).

The kernel does not depend on the model: one library (named by a hash of its source, compiler
flags and this generator) is built under SCOPE_VAR_DIR/forests, atomically and by one process at
a time (a file lock), and every predictor uses it. Before a predictor uses it, its margins are
checked against the numpy evaluator on probe rows built from the split thresholds (with NaNs);
a library that disagrees, a missing compiler or a failed build leaves the numpy evaluator in
place.
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
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import numpy as np

from routing.predictor.trees import ForestEvaluator

log = logging.getLogger(__name__)
_K = TypeVar("_K")

KERNEL_VERSION = 2
CFLAGS = ("-O2", "-shared", "-fPIC", "-std=c99")  # no -ffast-math: NaN and comparisons must stay IEEE
COMPILE_TIMEOUT_S = 120.0
_SYMBOL = "scope_forest_margins"
KERNEL_SOURCE = r"""
#include <math.h>
#include <stdint.h>

/* Margins [rows, n_boosters] of complete trees of one depth, stored as in ForestEvaluator:
   split_at[t * n_int + node] is the feature read at a node (+ nf for a default-right node),
   thr the node's threshold, leaves[t * n_leaf + k], booster_of[t] the booster of tree t.
   buf: rows * 2 * nf floats, node: rows ints (scratch). Below FEW_ROWS rows (a request's known
   candidates, mostly) each row walks a tree alone, its levels unrolled: about half the
   instructions, and as fast; from there on the level-by-level walk over every row is faster. */
#define FEW_ROWS 16
#define STEP n = 2 * n + 1 + (b[sa[n]] >= th[n])
void scope_forest_margins(const float *x, long rows, long stride, long nf,
                          const int32_t *split_at, const float *thr, const float *leaves,
                          long n_trees, int depth, const int32_t *booster_of, long n_boosters,
                          const double *base, float *buf, int32_t *node, double *out)
{
    const long n_int = (1L << depth) - 1, n_leaf = 1L << depth, width = 2 * nf;
    for (long r = 0; r < rows; ++r) {
        const float *v = x + r * stride;
        float *b = buf + r * width;
        for (long f = 0; f < nf; ++f) {
            const float a = v[f];
            const int missing = isnan(a);
            b[f] = missing ? -INFINITY : a;
            b[nf + f] = missing ? INFINITY : a;
        }
        for (long j = 0; j < n_boosters; ++j) out[r * n_boosters + j] = base[j];
    }
    if (rows >= FEW_ROWS) {  /* level by level over all rows: independent loads keep the CPU busy */
        for (long t = 0; t < n_trees; ++t) {
            const int32_t *sa = split_at + t * n_int;
            const float *th = thr + t * n_int;
            const float *lv = leaves + t * n_leaf;
            for (long r = 0; r < rows; ++r) node[r] = 0;
            for (int level = 0; level < depth; ++level) {
                for (long r = 0; r < rows; ++r) {
                    const int32_t n = node[r];
                    node[r] = 2 * n + 1 + (buf[r * width + sa[n]] >= th[n]);
                }
            }
            const long j = booster_of[t];
            for (long r = 0; r < rows; ++r) out[r * n_boosters + j] += lv[node[r] - n_int];
        }
        return;
    }
    for (long t = 0; t < n_trees; ++t) {  /* a few rows: each row's walk unrolled, fewer instructions */
        const int32_t *sa = split_at + t * n_int;
        const float *th = thr + t * n_int;
        const float *lv = leaves + t * n_leaf;
        double *o = out + booster_of[t];
        for (long r = 0; r < rows; ++r) {
            const float *b = buf + r * width;
            long n = 0;
            int level = depth;
            for (; level > 8; --level) STEP;
            switch (level) {
            case 8: STEP; /* fall through */
            case 7: STEP; /* fall through */
            case 6: STEP; /* fall through */
            case 5: STEP; /* fall through */
            case 4: STEP; /* fall through */
            case 3: STEP; /* fall through */
            case 2: STEP; /* fall through */
            case 1: STEP; /* fall through */
            default: break;
            }
            o[r * n_boosters] += lv[n - n_int];
        }
    }
}
"""

_P, _L = ctypes.c_void_p, ctypes.c_long
_ARGTYPES = (_P, _L, _L, _L, _P, _P, _P, _L, ctypes.c_int, _P, _L, _P, _P, _P, _P)


class CompiledForest:
    """The margins of a ForestEvaluator from the kernel library: [rows, boosters], base margin included."""

    def __init__(self, evaluator: ForestEvaluator, path: Path) -> None:
        self.path = path
        self._lib = ctypes.CDLL(str(path))  # kept: the function must not outlive its library
        fn = getattr(self._lib, _SYMBOL)
        fn.argtypes = _ARGTYPES
        fn.restype = None
        self._fn = fn
        self.n_features = evaluator.n_features
        counts = [e.n_trees for e in evaluator.ensembles]
        self.n_boosters = len(counts)
        self._n_trees = sum(counts)
        self._depth = evaluator.depth
        # the numpy evaluator's own arrays (split_at holds feature indexes below 2 * n_features)
        self._split_at = np.ascontiguousarray(evaluator._split_at, dtype=np.int32)
        self._thresholds = np.ascontiguousarray(evaluator._thresholds, dtype=np.float32)
        self._leaves = np.ascontiguousarray(evaluator._leaves, dtype=np.float32)
        self._booster_of = np.repeat(np.arange(len(counts), dtype=np.int32), counts)
        self._base = np.ascontiguousarray(evaluator._base, dtype=np.float64)
        self._pointers = tuple(a.ctypes.data for a in (self._split_at, self._thresholds, self._leaves))
        self._tail = (self._booster_of.ctypes.data, self.n_boosters, self._base.ctypes.data)

    def margins_into(self, x: int, rows: int, stride: int, buf: int, node: int, out: int) -> None:
        """margins() between raw addresses: rows [rows, stride] float32 (stride >= n_features), scratch
        buf (rows * 2 * n_features float32) and node (rows int32), out [rows, n_boosters] float64."""
        self._fn(
            x,
            rows,
            stride,
            self.n_features,
            *self._pointers,
            self._n_trees,
            self._depth,
            *self._tail,
            buf,
            node,
            out,
        )

    def margins(self, x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] < self.n_features:
            raise ValueError(f"rows of {self.n_features} features expected, got shape {x.shape}")
        rows = x.shape[0]
        out = np.empty((rows, self.n_boosters), dtype=np.float64)
        buf = np.empty(rows * 2 * self.n_features, dtype=np.float32)
        node = np.empty(rows, dtype=np.int32)
        self.margins_into(x.ctypes.data, rows, x.shape[1], buf.ctypes.data, node.ctypes.data, out.ctypes.data)
        return out


def source_key(name: str, version: int, source: str) -> str:
    """A compiled library's name: a hash of its C source, the compiler flags and its version, so a
    change to any of them builds a new library beside the old one."""
    h = hashlib.sha256(f"scope-{name}/{version}/{' '.join(CFLAGS)}\n{source}".encode())
    return h.hexdigest()[:32]


def library_path(cache_dir: Path, name: str, version: int, source: str) -> Path:
    return Path(cache_dir) / f"{name}-kernel-{source_key(name, version, source)}.so"


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
def locked(path: Path) -> Iterator[None]:
    with open(path, "a+b") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _compiler() -> str | None:
    return shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")


def _library(cache_dir: Path) -> Path:
    return library_path(cache_dir, "forest", KERNEL_VERSION, KERNEL_SOURCE)


def load_cached(evaluator: ForestEvaluator, cache_dir: Path) -> CompiledForest | None:
    """The evaluator on the kernel library if it was compiled before (by any process), else None; never compiles."""
    path = _library(cache_dir)
    if not path.exists():
        return None
    return _checked(evaluator, path)


def compile_forest(evaluator: ForestEvaluator, cache_dir: Path) -> CompiledForest | None:
    """The evaluator on the kernel library, compiling the library first if needed; None when that fails."""
    path = _library(cache_dir)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with locked(path.with_suffix(".lock")):
            if not path.exists():
                _build(path)
    except (OSError, subprocess.SubprocessError) as exc:
        log.warning("tree compilation unavailable, the numpy evaluator keeps serving: %s", exc)
        return None
    return _checked(evaluator, path)


def _build(path: Path) -> None:
    build_library(path, KERNEL_SOURCE)


def build_library(path: Path, code: str) -> None:
    """Compile C `code` into the shared library `path` (atomically); OSError when it cannot."""
    cc = _compiler()
    if cc is None:
        raise OSError("no C compiler (cc/gcc) on PATH")
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        source = Path(tmp) / "kernel.c"
        source.write_text(code, encoding="ascii")
        built = Path(tmp) / "kernel.so"
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


def install_kernel(
    path: Path,
    source: str,
    *,
    load: Callable[[Path], _K],
    agrees: Callable[[_K], bool],
    use: Callable[[_K], None],
    what: str,
    fallback: str,
    compile_if_missing: bool = True,
) -> bool:
    """Build the library `path` from C `source` once per machine (file lock, atomic rename), load
    it, and hand it to `use` only if `agrees` (it gave the reference implementation's results);
    False, with the reason logged, when it cannot serve and `fallback` keeps serving."""
    try:
        if not path.exists():
            if not compile_if_missing:
                return False
            path.parent.mkdir(parents=True, exist_ok=True)
            with locked(path.with_suffix(".lock")):
                if not path.exists():
                    build_library(path, source)
        kernel = load(path)
    except (OSError, AttributeError, subprocess.SubprocessError) as exc:
        log.warning("%s kernel unavailable, %s keeps serving: %s", what, fallback, exc)
        return False
    if not agrees(kernel):
        log.error("%s kernel %s disagrees with %s: not used", what, path.name, fallback)
        return False
    use(kernel)
    return True


def ensure_kernel(
    install: Callable[..., bool], in_use: Callable[[], bool], cache_dir: Path, thread_name: str
) -> None:
    """At once if the library is cached, else once a background compile is done (never blocks a request)."""
    if in_use() or install(cache_dir, compile_if_missing=False):
        return
    threading.Thread(target=install, args=(cache_dir,), name=thread_name, daemon=True).start()


def _checked(evaluator: ForestEvaluator, path: Path) -> CompiledForest | None:
    try:
        forest = CompiledForest(evaluator, path)
    except (OSError, AttributeError) as exc:
        log.warning("compiled forest kernel %s cannot be loaded: %s", path.name, exc)
        return None
    x = probe_rows(evaluator)
    expected = evaluator.margins_numpy(x)
    got = np.concatenate([forest.margins(x[:5]), forest.margins(x[5:])])  # both of the kernel's walks
    if not np.allclose(got, expected, rtol=0.0, atol=1e-5, equal_nan=True):
        worst = float(np.nanmax(np.abs(got - expected)))
        log.error(
            "compiled forest kernel %s disagrees with the numpy evaluator (%.3g); not used", path.name, worst
        )
        return None
    return forest
