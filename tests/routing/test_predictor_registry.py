from __future__ import annotations

import shutil
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from django.core.cache import cache

from feedback.models import PredictorVersion
from feedback.services.registry import predictor_version_activate, predictor_version_save
from feedback.services.training import TrainedPredictor, predictor_train
from routing.predictor import registry
from routing.predictor.compiled import _compiler
from scope_site.errors import InvalidRequest
from tests.conftest import USER_MESSAGE
from tests.routing import predictor_data as data


@pytest.fixture(scope="module")
def two_trained() -> tuple[TrainedPredictor, TrainedPredictor]:
    examples, _ = data.examples(120, seed=11, models=("small", "medium", "large"))
    first = predictor_train(examples=examples, models=data.infos(), seed=0, params=data.FAST)
    second = predictor_train(examples=examples, models=data.infos(), seed=1, params=data.FAST)
    return first, second


@pytest.fixture(autouse=True)
def _fresh_registry(settings: Any, tmp_path: Path) -> Iterator[None]:
    settings.SCOPE_PREDICTOR_CHECK_SECONDS = 0  # every call looks the active id up again
    settings.VAR_DIR = tmp_path  # compiled trees go to this test's own cache
    registry.clear()
    yield
    registry.clear()


def _activate(version: PredictorVersion, capture: Callable[..., Any]) -> None:
    with capture(execute=True):
        predictor_version_activate(actor="test", version_id=version.pk)


@pytest.mark.django_db
def test_the_registry_switches_to_a_newly_activated_version_without_restart(
    two_trained: tuple[TrainedPredictor, TrainedPredictor], django_capture_on_commit_callbacks: Any
) -> None:
    assert registry.active_predictor() is None
    one = predictor_version_save(trained=two_trained[0], name="one")
    two = predictor_version_save(trained=two_trained[1], name="two")
    _activate(one, django_capture_on_commit_callbacks)
    first = registry.active_predictor()
    assert first is not None and first.version == "one"
    assert registry.active_predictor() is first  # loaded once, not per call
    _activate(two, django_capture_on_commit_callbacks)
    assert registry.active_predictor().version == "two"  # type: ignore[union-attr]
    assert list(PredictorVersion.objects.filter(is_active=True).values_list("name", flat=True)) == ["two"]


@pytest.mark.django_db
def test_a_version_activated_by_another_process_is_picked_up_from_the_shared_cache(
    two_trained: tuple[TrainedPredictor, TrainedPredictor], django_capture_on_commit_callbacks: Any
) -> None:
    one = predictor_version_save(trained=two_trained[0], name="one")
    two = predictor_version_save(trained=two_trained[1], name="two")
    _activate(one, django_capture_on_commit_callbacks)
    assert registry.active_predictor().version == "one"  # type: ignore[union-attr]
    # another worker promotes "two": it writes the row and the shared cache, not our memory
    PredictorVersion.objects.filter(pk=one.pk).update(is_active=False)
    PredictorVersion.objects.filter(pk=two.pk).update(is_active=True)
    cache.set(registry.CACHE_KEY, two.pk, timeout=None)
    assert registry.active_predictor().version == "two"  # type: ignore[union-attr]


@pytest.mark.django_db
def test_with_a_process_local_cache_another_process_activation_is_read_from_the_database(
    two_trained: tuple[TrainedPredictor, TrainedPredictor],
    django_capture_on_commit_callbacks: Any,
    settings: Any,
) -> None:
    """`make run`'s local-memory cache: `train_predictor` in a shell activates in the database and in
    its own memory only; the server must still switch."""
    settings.CACHES = {
        "default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache", "LOCATION": "r"}
    }
    one = predictor_version_save(trained=two_trained[0], name="one")
    two = predictor_version_save(trained=two_trained[1], name="two")
    _activate(one, django_capture_on_commit_callbacks)
    assert registry.active_predictor().version == "one"  # type: ignore[union-attr]
    PredictorVersion.objects.filter(pk=one.pk).update(is_active=False)  # the other process's activation
    PredictorVersion.objects.filter(pk=two.pk).update(is_active=True)
    assert registry.active_predictor().version == "two"  # type: ignore[union-attr]


@pytest.mark.django_db
@pytest.mark.skipif(_compiler() is None, reason="no C compiler")
def test_activation_compiles_the_trees_and_a_loading_process_only_opens_them(
    two_trained: tuple[TrainedPredictor, TrainedPredictor],
    django_capture_on_commit_callbacks: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    version = predictor_version_save(trained=two_trained[0], name="fast")
    _activate(version, django_capture_on_commit_callbacks)
    assert len(list((tmp_path / "forests").glob("forest-kernel-*.so"))) == 1
    monkeypatch.setattr("routing.predictor.compiled._compiler", lambda: None)  # loading must not compile
    predictor = registry.active_scope_predictor()
    assert predictor is not None and predictor.evaluator.compiled is not None


@pytest.mark.django_db
@pytest.mark.skipif(_compiler() is None, reason="no C compiler")
def test_without_a_cached_library_the_process_serves_numpy_trees_and_compiles_in_the_background(
    two_trained: tuple[TrainedPredictor, TrainedPredictor],
    catalog: Any,
    django_capture_on_commit_callbacks: Any,
    tmp_path: Path,
) -> None:
    from routing.features import extract_prompt_features
    from routing.selectors import model_specs

    version = predictor_version_save(trained=two_trained[0], name="later")
    _activate(version, django_capture_on_commit_callbacks)
    shutil.rmtree(tmp_path / "forests")  # e.g. activated on another machine
    registry.clear()
    predictor = registry.active_scope_predictor()
    assert predictor is not None
    features = extract_prompt_features("Solve the quadratic equation for its root.")
    specs = model_specs()
    before = predictor.predict(features, specs)  # answered at once, whatever the compiler is doing
    assert any(p.known for p in before)
    for thread in threading.enumerate():
        if thread.name == "scope-forest-compile":
            thread.join(timeout=120)
    assert predictor.evaluator.compiled is not None
    after = predictor.predict(features, specs)
    assert [p.quality for p in after] == pytest.approx([p.quality for p in before], abs=1e-9)


@pytest.mark.django_db
def test_a_corrupt_artifact_is_refused_and_the_previous_predictor_keeps_serving(
    two_trained: tuple[TrainedPredictor, TrainedPredictor], django_capture_on_commit_callbacks: Any
) -> None:
    good = predictor_version_save(trained=two_trained[0], name="good")
    _activate(good, django_capture_on_commit_callbacks)
    assert registry.active_predictor().version == "good"  # type: ignore[union-attr]
    broken = PredictorVersion.objects.create(
        name="broken", artifact=b"PK\x03\x04 truncated", feature_schema=2
    )
    with pytest.raises(InvalidRequest, match="cannot be served"):
        predictor_version_activate(actor="test", version_id=broken.pk)
    assert PredictorVersion.objects.get(is_active=True).name == "good"
    # even if a broken version is forced active behind the service's back, "good" keeps serving
    PredictorVersion.objects.filter(pk=good.pk).update(is_active=False)
    PredictorVersion.objects.filter(pk=broken.pk).update(is_active=True)
    cache.set(registry.CACHE_KEY, broken.pk, timeout=None)
    assert registry.active_predictor().version == "good"  # type: ignore[union-attr]


@pytest.mark.django_db
def test_live_routing_uses_the_active_predictor_and_explains_with_contributions(
    two_trained: tuple[TrainedPredictor, TrainedPredictor],
    api: Callable[..., Any],
    django_capture_on_commit_callbacks: Any,
) -> None:
    version = predictor_version_save(trained=two_trained[0], name="live")
    _activate(version, django_capture_on_commit_callbacks)
    response = api(
        "/api/v1/route",
        {"messages": USER_MESSAGE("Solve the quadratic equation for its root."), "alpha": 1.0},
    )
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["predictor_version"] == "live"
    assert all(c["predictions"]["known"] for c in body["candidates"])
    assert body["explanation"]["contributions"], body["explanation"]


@pytest.mark.django_db
def test_a_catalog_model_with_only_an_anchor_evaluation_is_scored_without_retraining(
    two_trained: tuple[TrainedPredictor, TrainedPredictor],
    catalog: Any,
    django_capture_on_commit_callbacks: Any,
) -> None:
    from decimal import Decimal

    from feedback.models import EvalOutcome, EvalPrompt
    from routing.features import extract_prompt_features
    from routing.selectors import catalog_invalidate, model_specs
    from tests.factories import LLMModelFactory

    _activate(predictor_version_save(trained=two_trained[0], name="base"), django_capture_on_commit_callbacks)
    LLMModelFactory(name="lawyer", tier=2, input_usd_per_mtok=Decimal("2"), output_usd_per_mtok=Decimal("4"))
    catalog_invalidate()
    lawyer = next(m for m in model_specs() if m.name == "lawyer")
    law = extract_prompt_features("The court ruled the contract statute liability appeal of the plaintiff?")
    algebra = extract_prompt_features("Solve the quadratic equation: factor the polynomial root coefficient?")
    predictor = registry.active_predictor()
    assert predictor is not None and not predictor.predict(law, [lawyer])[0].known
    anchors, _ = data.examples(120, seed=12, models=("lawyer",))
    for i, e in enumerate(anchors):
        prompt = EvalPrompt.objects.create(
            source="anchors", external_id=str(i), prompt=data.prompts(120, 12)[i][1]
        )
        EvalOutcome.objects.create(
            prompt=prompt, model_name="lawyer", score=e.score, output_tokens=e.output_tokens
        )
    predictor = registry.active_predictor()
    assert predictor is not None and predictor.version == "base"
    on_law, on_algebra = predictor.predict(law, [lawyer])[0], predictor.predict(algebra, [lawyer])[0]
    assert on_law.known and on_algebra.known
    assert on_law.quality > on_algebra.quality + 0.15


@pytest.mark.django_db
def test_with_the_cache_down_the_active_version_comes_from_the_database_without_tracebacks(
    two_trained: tuple[TrainedPredictor, TrainedPredictor],
    django_capture_on_commit_callbacks: Any,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import redis.exceptions

    from routing.services import counters

    monkeypatch.setattr(
        counters, "_last_warning", {}
    )  # an earlier test's outage warning is not rate-limiting ours

    monkeypatch.setattr(registry, "_cache_is_shared", lambda: True)  # Redis, as in production
    one = predictor_version_save(trained=two_trained[0], name="one")
    _activate(one, django_capture_on_commit_callbacks)
    registry.clear()
    down = redis.exceptions.ConnectionError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")
    with mock.patch.object(registry.cache, "get", side_effect=down), caplog.at_level("WARNING"):
        first = registry.active_predictor()
        second = registry.active_predictor()
    assert first is not None and first.version == "one" and second is first
    assert not [r for r in caplog.records if r.exc_info], "a cache outage must not log tracebacks"
    assert any("degraded" in r.getMessage() for r in caplog.records)
