"""The one-request serving path's arithmetic in C: design rows and predictions without numpy's per-call cost.

ServingPlan.rows and ScopePredictor.predict run about a hundred numpy operations per request on
arrays of 2 to 60 elements; nearly all of their instructions are numpy's fixed cost per call. This
kernel does the same steps in three calls: the text side (TF-IDF weights, projection, heads and
their calibration, the top centroids), the design rows (assignment weights, anchor statistics,
request means) and the predictions from the trees' margins.

The results are numpy's to the bit, not merely close, because the kernel repeats numpy's own
operations: its matrix products call numpy's BLAS (cblas_sgemv/dgemv of the OpenBLAS numpy ships,
with the arguments numpy passes), its sums numpy's pairwise summation, 1 + log(count) comes from a
table numpy computed, and exp, expm1 and log1p are numpy's own inner loops, taken from its ufuncs
(numpy_loops): on CPUs with AVX-512 numpy computes them with SIMD code of its own, whose last bit
differs from libm's in about one value in twenty. The library is installed only after those loops,
called as the kernel calls them, gave numpy's results on whole arrays, and a plan uses it only
after its rows and predictions equalled the numpy path's on probe requests. Without a C compiler,
numpy's BLAS, its loops or agreement, the numpy path keeps serving; it also serves the requests the
kernel declines (a tie for the last of the top centroids, whose pick is numpy's argpartition's).
"""

from __future__ import annotations

import ctypes
import glob
import logging
import math
import struct
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from routing.engine.prior import expected_output_tokens
from routing.engine.types import Prediction
from routing.features import RequestFeatures
from routing.predictor.compiled import CompiledForest, ensure_kernel, install_kernel, library_path
from routing.predictor.serving_source import (
    CHAR_SLOT,
    SERVING_KERNEL_SOURCE,
    VOCAB_SLOT,
    Plan,
    Post,
    char_table,
    vocab_table,
)
from scope_site.green import OsThreadLocal

if TYPE_CHECKING:
    from routing.predictor.model import ScopePredictor
    from routing.predictor.serving import CandidateLayout, ServingPlan

log = logging.getLogger(__name__)

SERVING_KERNEL_VERSION = 1
_P, _L, _D, _B = ctypes.c_void_p, ctypes.c_long, ctypes.c_double, ctypes.c_char_p  # bytes pass without a copy
TOP = 4
LOG_TF_SIZE = 1 << 16  # counts are uint16 (characters) or at most 2 * NGRAM_MAX_WORDS (words)


def numpy_blas() -> tuple[int, int]:
    """The addresses of cblas_sgemv and cblas_dgemv in the OpenBLAS numpy's wheel ships (scipy-openblas,
    64-bit integers); OSError without it (another numpy build: the numpy path serves)."""
    folder = Path(np.__file__).resolve().parent.parent / "numpy.libs"
    found = sorted(glob.glob(str(folder / "libscipy_openblas64_*.so")))
    if not found:
        raise OSError(f"numpy's OpenBLAS not found in {folder}")
    lib = ctypes.CDLL(found[0])
    addresses = []
    for name in ("scipy_cblas_sgemv64_", "scipy_cblas_dgemv64_"):
        fn = getattr(lib, name)  # AttributeError: not the expected build
        addresses.append(ctypes.cast(fn, ctypes.c_void_p).value or 0)
    return addresses[0], addresses[1]


class _UFuncHead(ctypes.Structure):
    """The leading fields of numpy's PyUFuncObject (numpy/ufuncobject.h, the same in numpy 1.x and 2.x)."""

    _fields_ = [
        ("ob_refcnt", ctypes.c_ssize_t),
        ("ob_type", ctypes.c_void_p),
        ("nin", ctypes.c_int),
        ("nout", ctypes.c_int),
        ("nargs", ctypes.c_int),
        ("identity", ctypes.c_int),
        ("functions", ctypes.POINTER(ctypes.c_void_p)),
        ("data", ctypes.POINTER(ctypes.c_void_p)),
        ("ntypes", ctypes.c_int),
        ("reserved1", ctypes.c_int),
        ("name", ctypes.c_char_p),
        ("types", ctypes.POINTER(ctypes.c_char)),
    ]


def numpy_loop(ufunc: np.ufunc, dtype: type) -> tuple[int, int]:
    """(inner loop, its data) of a one-input ufunc for `dtype` in and out: the function numpy calls on
    each run of an array, with the CPU's SIMD version already picked; OSError when not found."""
    head = _UFuncHead.from_address(id(ufunc))  # CPython: id() is the object's address
    if head.name != ufunc.__name__.encode() or (head.nin, head.nout) != (1, 1) or not 0 < head.ntypes < 1024:
        raise OSError(f"numpy's {ufunc.__name__} is not laid out as numpy/ufuncobject.h says")
    num = bytes([np.dtype(dtype).num])
    for i in range(head.ntypes):
        if head.types[2 * i] == num and head.types[2 * i + 1] == num and head.functions[i]:
            return int(head.functions[i]), int(head.data[i] or 0)
    raise OSError(f"numpy's {ufunc.__name__} has no {np.dtype(dtype)} loop")


# the kernel's order (its NP_EXP, NP_EXPM1, NP_LOG1P, NP_EXP_F32)
NUMPY_LOOPS = ((np.exp, np.float64), (np.expm1, np.float64), (np.log1p, np.float64), (np.exp, np.float32))


class ServingKernel:
    """The library's three functions, with numpy's BLAS to call."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lib = ctypes.CDLL(str(path))  # kept: the functions must not outlive their library
        self.text = self._lib.scope_serving_text
        self.text.argtypes = (_P, _B, _L, _B, _B, _L, _P, _P, _P, _P, _P, _P)
        self.text.restype = _L
        self.rows = self._lib.scope_serving_rows
        self.rows.argtypes = (_P, _B, _P, _P, _P, _P, _P, _L, _P, _P)
        self.rows.restype = _L
        self.post = self._lib.scope_serving_post
        self.post.argtypes = (_P, _P, _L, _P, _L, _P, _P, _D, _D, _P, _P, _P, _P)
        self.post.restype = _L
        self.saabas = self._lib.scope_saabas
        self.saabas.argtypes = (_P, _L, _P, _P, _P, _P, _L, ctypes.c_int, _D, _P, _P, _P)
        self.saabas.restype = None
        self._each = self._lib.scope_serving_numpy_each
        self._each.argtypes = (ctypes.c_int, _P, _L, _P)
        self._each.restype = None
        self.blas = numpy_blas()
        loops = [numpy_loop(ufunc, dtype) for ufunc, dtype in NUMPY_LOOPS]
        use = self._lib.scope_serving_use_numpy
        use.argtypes = (_P, _P)
        use.restype = None
        use(
            (ctypes.c_void_p * len(loops))(*(fn for fn, _ in loops)),
            (ctypes.c_void_p * len(loops))(*(data for _, data in loops)),
        )

    def numpy_each(self, which: int, x: np.ndarray) -> np.ndarray:
        """numpy's loop `which` (NUMPY_LOOPS' order) applied by the kernel, one element per call."""
        x = np.ascontiguousarray(x, dtype=NUMPY_LOOPS[which][1])
        out = np.empty_like(x)
        self._each(which, x.ctypes.data, len(x), out.ctypes.data)
        return out


def _agrees(kernel: ServingKernel) -> bool:
    """numpy's loops, called one element at a time as the kernel calls them, give what numpy gives
    for whole arrays (its SIMD code handles a lone element as it handles the array's last ones)."""
    rng = np.random.default_rng(0)
    edges = [0.0, -0.0, 1e-300, -1e-300, 88.7, 89.0, -104.0, 709.0, 710.0, -745.0, np.inf, -np.inf, np.nan]
    x = np.concatenate([rng.normal(size=4096) * 8.0, rng.uniform(-40.0, 40.0, size=4096), edges])
    nonneg = np.abs(np.concatenate([x, rng.uniform(0.0, 3000.0, size=4096)]))
    with np.errstate(over="ignore", under="ignore"):
        return all(
            np.array_equal(kernel.numpy_each(which, values), ufunc(values.astype(dtype)), equal_nan=True)
            for which, ((ufunc, dtype), values) in enumerate(zip(NUMPY_LOOPS, (x, x, nonneg, x), strict=True))
        )


_kernel: ServingKernel | None = None


def serving_kernel() -> ServingKernel | None:
    return _kernel


def use_serving_kernel(kernel: ServingKernel | None) -> None:
    global _kernel
    _kernel = kernel


def serving_kernel_in_use() -> bool:
    return _kernel is not None


def _library(cache_dir: Path) -> Path:
    return library_path(cache_dir, "serving", SERVING_KERNEL_VERSION, SERVING_KERNEL_SOURCE)


def serving_kernel_install(cache_dir: Path, *, compile_if_missing: bool = True) -> bool:
    """Serve the one-request path's arithmetic from the compiled kernel; False when it cannot."""
    return install_kernel(
        _library(cache_dir),
        SERVING_KERNEL_SOURCE,
        load=ServingKernel,
        agrees=_agrees,
        use=use_serving_kernel,
        what="serving",
        fallback="numpy",
        compile_if_missing=compile_if_missing,
    )


def serving_kernel_ensure(cache_dir: Path) -> None:
    """At once if the library is cached, else once a background compile is done (never blocks a request)."""
    ensure_kernel(serving_kernel_install, serving_kernel_in_use, cache_dir, "scope-serving-compile")


class _Buffers:
    """One request's intermediate results and outputs for up to `rows` rows (one set per thread)."""

    def __init__(
        self, dim: int, n_known: int, n_sims: int, width: int, n_boosters: int, n_trees: int, rows: int
    ) -> None:
        self.rows = rows
        self.features: RequestFeatures | None = None  # whose text side the buffers hold, packed as `request`
        self.request = b""
        self.emb = np.empty(dim, dtype=np.float32)
        self.head = np.empty(n_known, dtype=np.float64)
        self.top = np.empty(2 * TOP, dtype=np.int64)
        self.expo = np.empty(2 * TOP, dtype=np.float32)
        self.sims = np.empty(n_sims, dtype=np.float32)
        self.x = np.empty((rows, width), dtype=np.float32)
        self.margins = np.empty((rows, n_boosters), dtype=np.float64)
        self.forest = np.empty(rows * 2 * width, dtype=np.float32)  # the forest kernel's scratch
        self.node = np.empty(rows, dtype=np.int32)
        self.out = np.empty((4, rows), dtype=np.float64)  # quality, uncertainty, tokens, latency
        self.contributions = np.empty(width + 1, dtype=np.float64)
        self.tree_node = np.empty(max(n_trees, 1), dtype=np.int64)
        self.tree_scratch = np.empty(max(n_trees, 1), dtype=np.float32)
        # raw addresses once: `array.ctypes.data` costs about 11k instructions on every access
        self.text = tuple(a.ctypes.data for a in (self.emb, self.head, self.top, self.expo, self.sims))
        self.x_at, self.margins_at = self.x.ctypes.data, self.margins.ctypes.data
        self.forest_at, self.node_at, self.out_at = (
            self.forest.ctypes.data,
            self.node.ctypes.data,
            self.out.ctypes.data,
        )
        self.saabas = tuple(a.ctypes.data for a in (self.tree_node, self.tree_scratch, self.contributions))


def _array(keep: list[np.ndarray], a: np.ndarray, dtype: type | np.dtype[Any]) -> int:
    """The address of `a` as a contiguous array of `dtype` (kept alive in `keep`); ValueError if it is
    not of that dtype already (the kernel would compute in another precision than numpy)."""
    if a.dtype != np.dtype(dtype):
        raise ValueError(f"{a.dtype} array where the kernel expects {np.dtype(dtype)}")
    a = np.ascontiguousarray(a)
    keep.append(a)
    return int(a.ctypes.data)


class BoundPlan:
    """A ServingPlan's predictor arrays as the kernel reads them; ValueError for a predictor whose
    shapes numpy computes another way (one head, one centroid: numpy then calls dot, not gemv)."""

    def __init__(self, kernel: ServingKernel, plan: ServingPlan) -> None:
        p = plan._p
        proj, heads, anchors = p.projection, p.heads, p.anchors
        n_heads, dim = len(heads.intercept), proj.dim
        n_coarse, n_fine = anchors.coarse.shape[0], anchors.fine.shape[0]
        if min(n_heads, dim, n_coarse, n_fine) < 2 or len(proj.vocab) == 0:
            raise ValueError("a predictor shape the kernel does not serve")
        if len(proj.char_vocab) and not len(proj._char_columns):
            raise ValueError("character vocabulary without its column table")
        self.kernel, self.plan = kernel, plan
        keep: list[np.ndarray] = []
        self._keep = keep
        with np.errstate(divide="ignore"):  # count 0 (never looked up): log(0) = -inf
            log_tf = 1.0 + np.log(np.arange(LOG_TF_SIZE, dtype=np.float32))
        char_coef = heads.char_coef if len(heads.char_coef) and len(proj.char_vocab) else None
        if heads.platt_a.size:
            on, a, b, _ = heads._platt
            platt = (
                _array(keep, on.astype(np.uint8), np.uint8),
                _array(keep, a, np.float64),
                _array(keep, b, np.float64),
            )
        else:
            platt = (0, 0, 0)
        self._options = bool(len(heads.option_vocab))
        if self._options and heads.option_coef.dtype != np.float32:
            raise ValueError("option coefficients not in float32")
        self.width = p.evaluator.n_features
        if proj.vocab.dtype != np.int64 or proj.idf.dtype != np.float32:
            raise ValueError("a word vocabulary not in int64 ids and float32 idf")
        if len(proj.char_vocab) and proj.char_idf.dtype != np.float32:
            raise ValueError("a character vocabulary not in float32 idf")
        words, word_bits = vocab_table(proj.vocab, proj.idf)
        self._plan = Plan(
            kernel.blas[0],
            kernel.blas[1],
            _array(keep, log_tf, np.float32),
            LOG_TF_SIZE,
            _array(keep, words, VOCAB_SLOT),
            word_bits,
            len(proj.vocab),
            _array(keep, char_table(proj._char_columns, proj.char_idf), CHAR_SLOT)
            if len(proj.char_vocab)
            else 0,
            len(proj._char_columns) if len(proj.char_vocab) else 0,
            _array(keep, proj.components, np.float32),
            dim,
            _array(keep, heads.coef, np.float32),
            _array(keep, char_coef, np.float32) if char_coef is not None else 0,
            _array(keep, heads.intercept, np.float32),
            n_heads,
            *platt,
            plan.n_known,
            _array(keep, anchors.coarse, np.float32),
            n_coarse,
            _array(keep, anchors.fine, np.float32),
            n_fine,
            _array(keep, plan._coarse_tables, np.float64),
            _array(keep, plan._fine_tables, np.float64),
            _array(keep, np.asarray(plan.mean, dtype=np.float64), np.float64),
            _array(keep, np.asarray(plan.tok_prior, dtype=np.float64), np.float64),
            _array(keep, np.asarray(plan.has_tok, dtype=np.uint8), np.uint8),
            plan.n_req,
            self.width,
        )
        logistic = np.zeros(len(p.roles), dtype=np.uint8)
        if p.evaluator._logistic_cols is not None:
            logistic[p.evaluator._logistic_cols] = 1
        roles = [np.asarray(r, dtype=np.int64) for r in (p._quality, p._prompt_mean, p._relative)]
        if not len(roles[0]) or len(p.roles) > 64:
            raise ValueError("a predictor shape the kernel does not serve")
        self._post = Post(
            len(p.roles),
            _array(keep, logistic, np.uint8),
            _array(keep, roles[0], np.int64),
            len(roles[0]),
            _array(keep, roles[1], np.int64),
            len(roles[1]),
            _array(keep, roles[2], np.int64),
            len(roles[2]),
            -1 if p._tokens is None else p._tokens,
            -1 if p._latency is None else p._latency,
            p._local_n,
            p.decomposed_share,
        )
        self._n_req = plan.n_req
        self._plan_at = ctypes.addressof(self._plan)
        self._post_at = ctypes.addressof(self._post)
        self._no_tokens = p._tokens is None
        self._forest: CompiledForest | None = None  # the compiled trees the predictions were checked with
        self._forest_agrees = False
        first = p.evaluator.ensembles[p._quality[0]]  # contributions() explains the first quality booster
        self._saabas = (
            _array(keep, first.features, np.int32),
            _array(keep, first.thresholds, np.float32),
            _array(keep, first.default_left.view(np.uint8), np.uint8),
            _array(keep, first.node_means, np.float32),
            first.n_trees,
            first.depth,
            float(first.base_margin),
        )
        self._sizes = (dim, plan.n_known, max(n_coarse, n_fine), self.width, len(p.roles), first.n_trees)
        self._local = OsThreadLocal()  # .buffers: a plain object, whose attributes are cheaper to read

    def _buffers(self, rows: int) -> _Buffers:
        b: _Buffers | None = getattr(self._local, "buffers", None)
        if b is None or b.rows < rows:  # a new thread, or more rows (a model twice in the list)
            b = self._local.buffers = _Buffers(*self._sizes, max(rows, self._sizes[1], 1))
        return b

    def _rows(self, features: RequestFeatures, layout: CandidateLayout, b: _Buffers) -> bool:
        """The design rows into b.x[:len(layout.columns)]; False when the kernel leaves the request to numpy.

        The text side is kept per thread for the last request (`features` are immutable): the
        contributions of the chosen model, asked right after predict(), reuse it."""
        if features is not b.features:
            b.features = None
            if not self._text(features, b):
                return False
            b.features = features
        emb, head, top, expo, _ = b.text
        columns, template, _, _ = layout.addresses
        n = len(layout.columns)
        return not self.kernel.rows(
            self._plan_at, b.request, emb, head, top, expo, columns, n, template, b.x_at
        )

    def _text(self, features: RequestFeatures, b: _Buffers) -> bool:
        ids, values = features.ngram_ids, features.values
        if len(values) != self._n_req:
            return False
        # one struct.pack: about 100 instructions per number, against 250-300 for array.array or numpy
        request = struct.pack(f"{len(values)}d{2 * len(ids)}q", *values, *ids, *features.ngram_counts)
        option = 0
        if self._options:
            share = self.plan._p.heads.option_value(features.text)
            if isinstance(share, np.ndarray):
                option_values = np.ascontiguousarray(share, dtype=np.float32)
                option = option_values.ctypes.data
        if self.kernel.text(
            self._plan_at,
            request,
            len(ids),
            features.char_ids,
            features.char_counts,
            len(features.char_ids) // 4,
            option,
            *b.text,
        ):
            return False
        b.request = request
        return True

    def rows(self, features: RequestFeatures, layout: CandidateLayout) -> np.ndarray | None:
        """ServingPlan.rows' design rows, or None when the kernel leaves the request to numpy."""
        n = len(layout.columns)
        b = self._buffers(n)
        return b.x[:n].copy() if self._rows(features, layout, b) else None

    def agrees(self) -> bool:
        """The numpy path's rows and contributions on probe requests (every known model a candidate)."""
        p, layout = self.plan._p, self.plan.probe_layout()
        for features in probe_requests(p):
            rows = self.rows(features, layout)
            if rows is None:
                continue
            x = self.plan._rows_numpy(features, layout)
            got = self.contributions(features, layout)  # the same request: its text side is reused
            if (
                not np.array_equal(rows, x, equal_nan=True)
                or got is None
                or not np.array_equal(got[1], p.evaluator.contributions(x[0], p._quality[0]))
            ):
                return False
        return True

    def contributions(
        self, features: RequestFeatures, layout: CandidateLayout
    ) -> tuple[np.ndarray, np.ndarray] | None:
        """(the first candidate's design row, ForestEvaluator.contributions of it for the first quality
        booster), or None when the kernel leaves the request to numpy."""
        b = self._buffers(len(layout.columns))
        if not len(layout.columns) or not self._rows(features, layout, b):
            return None
        self.kernel.saabas(b.x_at, self.width, *self._saabas, *b.saabas)
        return b.x[0].copy(), b.contributions.copy()

    def _predictions_agree(self, forest: CompiledForest) -> bool:
        """The numpy path's predictions (from the same compiled trees) on probe requests."""
        p, layout = self.plan._p, self.plan.probe_layout()
        for features in probe_requests(p):
            made = self._predict(features, layout, forest)
            if made is None:
                continue
            x = self.plan._rows_numpy(features, layout)
            if made != p._predictions_numpy(features, layout, x, p.evaluator.predict(x)):
                return False
        return True

    def predict(self, features: RequestFeatures, layout: CandidateLayout) -> list[Prediction] | None:
        """ScopePredictor.predict's predictions of the known candidates: rows, compiled trees and
        post-processing without a numpy array in between; None when the trees are not compiled (yet)
        or the kernel leaves the request to numpy. Checked on probe requests with each compiled forest."""
        forest = self.plan._p.evaluator.compiled
        if not isinstance(forest, CompiledForest) or not self._checked(forest):
            return None
        return self._predict(features, layout, forest)

    def check_forest(self) -> None:
        """Check the predictions with the compiled trees now (warm-up), not in the first request."""
        forest = self.plan._p.evaluator.compiled
        if isinstance(forest, CompiledForest):
            self._checked(forest)

    def _checked(self, forest: CompiledForest) -> bool:
        """Whether the predictions with `forest` equalled the numpy path's (checked once per forest)."""
        if forest is not self._forest:
            agrees = self._predictions_agree(forest)
            if not agrees:
                log.error(
                    "serving kernel's predictions disagree with numpy on %s: not used", self.plan._p.version
                )
            # the verdict before the forest it is about: another thread that reads the new verdict
            # with the old forest only falls back to numpy or checks again
            self._forest_agrees = agrees
            self._forest = forest
        return self._forest_agrees

    def _predict(
        self, features: RequestFeatures, layout: CandidateLayout, forest: CompiledForest
    ) -> list[Prediction] | None:
        n = len(layout.columns)
        b = self._buffers(n)
        if not self._rows(features, layout, b):
            return None
        forest.margins_into(b.x_at, n, self.width, b.forest_at, b.node_at, b.margins_at)
        expected = expected_output_tokens(features) if self._no_tokens else math.nan
        at = b.out_at
        _, _, ttft, tokens_per_s = layout.addresses
        if self.kernel.post(
            self._post_at,
            b.margins_at,
            n,
            b.x_at,
            self.width,
            ttft,
            tokens_per_s,
            expected,
            features.input_tokens * 0.05,
            at,
            at + 8 * b.rows,
            at + 16 * b.rows,
            at + 24 * b.rows,
        ):
            return None
        return list(map(Prediction, *b.out[:, :n].tolist()))


PROBE_TEXTS = (
    "",
    "Explain why this loop is slow: for i in range(n): total += price[i] * qty[i]. 17 * 3.25?",
    "Which of these is a prime number?\nA. 21\nB. 27\nC. 29\nD. 33\nAnswer:",
)


def probe_requests(predictor: ScopePredictor, n: int = 12, seed: int = 0) -> list[RequestFeatures]:
    """Requests that exercise the kernel on this predictor: real texts, and bags drawn from its own
    vocabularies (every word and character bucket a hit or a near miss) with random counts and values."""
    from routing.features import FEATURE_NAMES, extract_prompt_features

    rng = np.random.default_rng(seed)
    out = [extract_prompt_features(t) for t in PROBE_TEXTS]
    proj = predictor.projection
    for i in range(n):
        size = int(rng.integers(1, 1 + min(len(proj.vocab), 200)))
        ids = rng.choice(proj.vocab, size=size, replace=False) + rng.integers(0, 2, size=size)
        ids = np.unique(ids)
        chars = np.zeros(0, dtype=np.int64)
        if len(proj.char_vocab):
            csize = int(rng.integers(0 if i % 3 == 0 else 1, 1 + min(len(proj.char_vocab), 2000)))
            chars = np.unique(rng.choice(proj.char_vocab, size=csize, replace=False))
        out.append(
            RequestFeatures(
                values=tuple(rng.normal(size=len(FEATURE_NAMES)).tolist()),
                text="",
                input_tokens=int(rng.integers(1, 5000)),
                ngram_ids=tuple(ids.tolist()),
                ngram_counts=tuple(rng.integers(1, 40, size=len(ids)).tolist()),
                char_ids=chars.astype("<u4").tobytes(),
                char_counts=rng.integers(1, 300, size=len(chars)).astype("<u2").tobytes(),
            )
        )
    return out
