"""Which predictor serves live traffic in this process.

The active version's id is looked up at most every SCOPE_PREDICTOR_CHECK_SECONDS (2 s) in the
shared cache (Redis in production), falling back to the database; with a cache that is not shared
between processes (the embedded default's local memory), in the database itself, since an
activation in another process (a management command) never reaches this one's memory. Each
version's artifact is loaded once per process. A newly activated version is picked up without restart. Catalog
models the artifact does not know but that have an anchor evaluation (EvalOutcome rows, e.g.
from calibrate_model) are added from those anchors, without retraining; the anchors are
re-read when their row count changes. An artifact
that cannot be served (corrupt, other schema) is refused and the previously loaded predictor
keeps serving; the failure is logged once per version.

Trees are served by a compiled C kernel (compiled.py) when SCOPE_PREDICTOR_COMPILE is on:
activation builds its library (one per kernel version) into SCOPE_VAR_DIR/forests if it is not
there, and checks it against the predictor; a process loading the version only opens it. If it
is missing (activated elsewhere, cache wiped), a background thread compiles it while the numpy
evaluator serves, so no request waits for a compiler.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from django.conf import settings
from django.core.cache import cache

from routing.char_kernel import char_kernel_ensure, char_kernel_install
from routing.engine.types import Predictor
from routing.features import char_kernel_in_use, text_kernel_in_use
from routing.predictor.artifact import ArtifactError, unpack
from routing.predictor.compiled import CompiledForest, compile_forest, load_cached
from routing.predictor.model import ScopePredictor
from routing.predictor.serving_kernel import serving_kernel_ensure, serving_kernel_install
from routing.services.counters import CACHE_ERRORS, warn_degraded
from routing.text_kernel import text_kernel_ensure, text_kernel_install

log = logging.getLogger(__name__)
CACHE_KEY = "scope:predictor:active-id"
_NONE = 0  # cached marker: no version is active
# the shared entry also expires, so an activation that skipped announce_active is seen within a minute
CACHE_SECONDS = 60
_PROCESS_LOCAL_CACHES = (
    "django.core.cache.backends.locmem.LocMemCache",
    "django.core.cache.backends.dummy.DummyCache",
)


@dataclass
class _State:
    checked_at: float = -1e9
    version_id: int | None = None
    predictor: ScopePredictor | None = None
    base: ScopePredictor | None = None  # the artifact as loaded, before anchor-only models
    anchor_signature: tuple[tuple[str, int], ...] = ()
    refused: set[int] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)


_state = _State()


def _check_seconds() -> float:
    return float(getattr(settings, "SCOPE_PREDICTOR_CHECK_SECONDS", 2.0))


def _cache_is_shared() -> bool:
    return settings.CACHES["default"]["BACKEND"] not in _PROCESS_LOCAL_CACHES


def announce_active(version_id: int | None) -> None:
    """Publish the active id to every process (called on commit of an activation)."""
    try:
        cache.set(CACHE_KEY, version_id or _NONE, timeout=CACHE_SECONDS)
    except CACHE_ERRORS as exc:  # the others fall back to the database while Redis is down
        warn_degraded("predictor activation broadcast", exc)
    reset()


def _active_id() -> int | None:
    from feedback.models import PredictorVersion

    if not _cache_is_shared():
        return PredictorVersion.objects.filter(is_active=True).values_list("pk", flat=True).first()
    try:
        cached = cache.get(CACHE_KEY)
    except CACHE_ERRORS as exc:  # Redis down: ask the database instead (degraded, not down)
        warn_degraded("predictor version lookup", exc)
        return PredictorVersion.objects.filter(is_active=True).values_list("pk", flat=True).first()
    if cached is not None:
        return int(cached) or None
    active = PredictorVersion.objects.filter(is_active=True).values_list("pk", flat=True).first()
    with contextlib.suppress(*CACHE_ERRORS):
        cache.set(CACHE_KEY, active or _NONE, timeout=CACHE_SECONDS)
    return active


def _load(version_id: int) -> ScopePredictor | None:
    from feedback.models import PredictorVersion

    row = PredictorVersion.objects.filter(pk=version_id).only("name", "artifact").first()
    if row is None:
        return None
    try:
        return unpack(bytes(row.artifact), version=row.name)
    except ArtifactError as exc:
        log.error("predictor version %s refused, the previous predictor keeps serving: %s", row.name, exc)
        return None


def active_predictor() -> Predictor | None:
    """The active trained predictor, or None (the engine then uses the tier prior and says so)."""
    return active_scope_predictor()


def active_scope_predictor() -> ScopePredictor | None:
    now = time.monotonic()
    if now - _state.checked_at < _check_seconds():
        return _state.predictor
    with _state.lock:
        if now - _state.checked_at < _check_seconds():
            return _state.predictor
        _state.checked_at = now
        _accelerate_features()
        try:
            wanted = _active_id()
        except Exception:  # noqa: BLE001 - a cache/DB hiccup must not break routing
            log.exception("could not look up the active predictor; keeping the current one")
            return _state.predictor
        if wanted == _state.version_id or (wanted is not None and wanted in _state.refused):
            _refresh_anchor_models()
            return _state.predictor
        if wanted is None:
            _state.version_id, _state.predictor, _state.base = None, None, None
            return None
        loaded = _load(wanted)
        if loaded is None:
            _state.refused.add(wanted)
        else:
            _accelerate(loaded)
            _state.version_id, _state.predictor, _state.base = wanted, loaded, loaded
            _state.anchor_signature = ()
            _refresh_anchor_models()
        return _state.predictor


def acceleration() -> dict[str, bool]:
    """Which parts of the route path's arithmetic this process serves compiled (True), and which
    numpy or Python serves (False): a kernel still compiling, missing (no C compiler) or refused for
    not giving the reference's results to the bit. Either way the results are the same; only the
    speed differs (a refused serving kernel cost about a fifth of the throughput in
    bench-overhead). Reads what is loaded: nothing is loaded or compiled here. The predictor's
    parts are listed only while a trained predictor is active."""
    parts = {"character_ngrams": char_kernel_in_use(), "text_counts": text_kernel_in_use()}
    predictor = _state.predictor
    if predictor is not None:
        parts["predictor_rows"] = predictor.plan.fast() is not None
        parts["predictor_trees"] = isinstance(predictor.evaluator.compiled, CompiledForest)
    return parts


def _forest_dir() -> Path | None:
    if not getattr(settings, "SCOPE_PREDICTOR_COMPILE", True):
        return None
    return Path(settings.VAR_DIR) / "forests"


def predictor_precompile(predictor: ScopePredictor) -> bool:
    """Compile the predictor's trees into the shared cache now (activation); True if they serve compiled."""
    cache_dir = _forest_dir()
    if cache_dir is None:
        return False
    char_kernel_install(cache_dir)  # the request features' character n-grams, compiled the same way
    text_kernel_install(cache_dir)  # ... and their words and character counts (ASCII text)
    serving_kernel_install(cache_dir)  # ... and the one-request path's rows and predictions
    try:
        compiled = compile_forest(predictor.evaluator, cache_dir)
    except Exception:  # noqa: BLE001 - activation must not fail for a speed-up; processes retry on load
        log.exception("compiling the trees of %s failed", predictor.version)
        return False
    predictor.evaluator.use_compiled(compiled)
    return compiled is not None


_features_accelerated_in = 0  # the pid of the process that installed (or tried) the features' kernels


def _accelerate_features() -> None:
    """The request features' kernels (character n-grams; words and character counts), whether or not
    a trained predictor is active: the tier prior's requests are featurized too, and numpy took
    0.43-0.53 ms for the bench's 2.2 KB prompt against 0.08-0.13 ms compiled (medians). Once per
    process (a fork starts over: a compile thread does not follow it)."""
    global _features_accelerated_in
    if _features_accelerated_in == os.getpid():
        return
    _features_accelerated_in = os.getpid()
    cache_dir = _forest_dir()
    if cache_dir is not None:
        char_kernel_ensure(cache_dir)
        text_kernel_ensure(cache_dir)


def _accelerate(predictor: ScopePredictor) -> None:
    """Serve compiled trees: at once if the library is cached, else once a background compile is done."""
    cache_dir = _forest_dir()
    if cache_dir is None:
        return
    serving_kernel_ensure(cache_dir)
    try:
        compiled = load_cached(predictor.evaluator, cache_dir)
    except Exception:  # noqa: BLE001 - compiled trees are a speed-up; numpy serves without them
        log.exception("could not open the compiled trees of %s", predictor.version)
        return
    if compiled is not None:
        predictor.evaluator.use_compiled(compiled)
        return
    threading.Thread(
        target=_compile_in_background, args=(predictor, cache_dir), name="scope-forest-compile", daemon=True
    ).start()


def _compile_in_background(predictor: ScopePredictor, cache_dir: Path) -> None:
    try:
        compiled = compile_forest(predictor.evaluator, cache_dir)
    except Exception:  # noqa: BLE001 - never let a compile failure reach routing
        log.exception(
            "compiling the trees of %s failed; the numpy evaluator keeps serving", predictor.version
        )
        return
    if compiled is not None:
        predictor.evaluator.use_compiled(compiled)  # anchor-model copies share this evaluator
        log.info("predictor %s now serves compiled trees", predictor.version)


MAX_ANCHORS = 500


def _refresh_anchor_models() -> None:
    """Score catalog models unknown to the artifact from their anchor evaluations (caller holds the lock)."""
    base = _state.base
    if base is None:
        return
    from django.db.models import Count

    from feedback.models import EvalOutcome
    from routing.features import extract_prompt_features
    from routing.selectors import model_specs

    try:
        unknown = [m.name for m in model_specs() if m.name not in base.anchors.index]
        if not unknown:
            signature: tuple[tuple[str, int], ...] = ()
        else:
            counts = (
                EvalOutcome.objects.filter(model_name__in=unknown)
                .values_list("model_name")
                .annotate(n=Count("pk"))
                .order_by("model_name")
            )
            signature = tuple((name, n) for name, n in counts)
        if signature == _state.anchor_signature:
            return
        predictor = base
        for name, _ in signature:
            rows = (
                EvalOutcome.objects.filter(model_name=name)
                .select_related("prompt")
                .order_by("-pk")[:MAX_ANCHORS]
            )
            anchors = [(extract_prompt_features(r.prompt.prompt), r.score, r.output_tokens) for r in rows]
            if anchors:
                predictor = predictor.with_anchor_model(name, anchors)
        _state.predictor, _state.anchor_signature = predictor, signature
    except Exception:  # noqa: BLE001 - anchors are an improvement; routing must go on without them
        log.exception("could not add anchor-only models; serving the trained models only")


def reset() -> None:
    """Forget the cached lookup (the next call checks again); loaded predictors stay until replaced."""
    _state.checked_at = -1e9


def clear() -> None:
    """Forget everything this process loaded (tests; a process that must start over)."""
    with _state.lock:
        _state.checked_at = -1e9
        _state.version_id = None
        _state.predictor = None
        _state.base = None
        _state.anchor_signature = ()
        _state.refused.clear()
