"""A process loads the catalog and the active predictor before its first request (make serve's
post_worker_init), and a database that is down does not stop it from booting."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.db import OperationalError
from django.urls import clear_url_caches, get_resolver

from feedback.services.registry import predictor_version_activate, predictor_version_save
from feedback.services.training import predictor_train
from routing import features, selectors
from routing.char_kernel import char_kernel_install
from routing.management.commands import run_embedded
from routing.predictor import registry
from routing.predictor.serving_kernel import serving_kernel
from routing.services import warmup
from routing.text_kernel import text_kernel_install
from tests.factories import make_catalog, make_policy
from tests.routing import predictor_data as data


@pytest.fixture(autouse=True)
def _fresh(settings: Any, tmp_path: Path) -> Iterator[None]:
    settings.VAR_DIR = tmp_path
    settings.SCOPE_CATALOG_TTL_SECONDS = 60.0
    settings.SCOPE_PREDICTOR_CHECK_SECONDS = 60.0
    registry.clear()
    selectors.catalog_invalidate()
    yield
    registry.clear()
    selectors.catalog_invalidate()


@pytest.mark.django_db
def test_after_warm_up_the_route_path_loads_nothing(
    django_capture_on_commit_callbacks: Any, django_assert_num_queries: Any
) -> None:
    make_catalog()
    make_policy("default")
    examples, _ = data.examples(80, seed=3, models=("small", "medium", "large"))
    trained = predictor_train(examples=examples, models=data.infos(), seed=0, params=data.FAST)
    version = predictor_version_save(trained=trained, name="warm")
    with django_capture_on_commit_callbacks(execute=True):
        predictor_version_activate(actor="test", version_id=version.pk)
    registry.clear()  # a fresh worker: nothing loaded yet

    warmed = warmup.warm_process()

    assert (warmed.predictor_version, warmed.error) == ("warm", "")
    assert warmed.models == len(selectors.model_specs()) > 0
    with django_assert_num_queries(0):  # what a first request needs is in memory already
        assert registry.active_predictor().version == "warm"  # type: ignore[union-attr]
        assert selectors.model_specs()
    # the serving kernel (installed with the trees at activation) is bound to the predictor and
    # checked: no request pays for the check
    plan = registry.active_scope_predictor().plan  # type: ignore[union-attr]
    assert serving_kernel() is not None
    assert plan._kernel is serving_kernel() and plan._fast is not None
    forest = registry.active_scope_predictor().evaluator.compiled  # type: ignore[union-attr]
    assert forest is not None and plan._fast._forest is forest and plan._fast._forest_agrees


@pytest.mark.django_db
def test_without_a_trained_predictor_warm_up_says_the_prior_routes() -> None:
    make_catalog()
    warmed = warmup.warm_process()
    assert (warmed.predictor_version, warmed.error) == ("", "")


@pytest.mark.django_db
def test_warm_up_loads_the_urlconf_so_no_first_request_imports_the_views() -> None:
    clear_url_caches()  # as in a new process: the next resolver has not read its URLconf yet
    assert "url_patterns" not in get_resolver().__dict__
    warmup.warm_process()
    assert "url_patterns" in get_resolver().__dict__


@pytest.mark.django_db
def test_a_database_that_is_down_does_not_stop_a_worker_booting(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def refused() -> Any:  # what the catalog read raises when PostgreSQL refuses connections
        raise OperationalError("connection refused")

    monkeypatch.setattr(warmup, "catalog_snapshot", refused)
    warmed = warmup.warm_process()
    assert warmed.error == "OperationalError: connection refused"
    assert "warm-up skipped" in caplog.text


@pytest.fixture
def new_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """A process that has not installed the features' kernels yet (restored afterwards)."""
    monkeypatch.setattr(features, "_char_kernel", None)
    monkeypatch.setattr(features, "_text_kernel", None)
    monkeypatch.setattr(registry, "_features_accelerated_in", 0)


@pytest.mark.django_db
def test_without_a_trained_predictor_the_features_still_run_compiled(new_process: None) -> None:
    """A fresh install routes with the tier prior until a predictor is trained: its requests' features
    are compiled too (numpy took about 5x as long), once the background compile is done."""
    make_catalog()
    warmed = warmup.warm_process()
    assert (warmed.predictor_version, warmed.error) == ("", "")
    deadline = time.monotonic() + 120
    while not all(registry.acceleration().values()) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert registry.acceleration() == {"character_ngrams": True, "text_counts": True}


@pytest.mark.django_db
def test_a_process_whose_library_is_cached_installs_the_features_kernels_at_once(
    new_process: None, tmp_path: Path
) -> None:
    assert char_kernel_install(tmp_path / "forests") and text_kernel_install(tmp_path / "forests")
    features.use_char_kernel(None)  # that was another process
    features.use_text_kernel(None)
    assert registry.active_scope_predictor() is None
    assert registry.acceleration() == {"character_ngrams": True, "text_counts": True}


@pytest.mark.django_db
def test_with_compiling_off_numpy_serves_the_features(
    new_process: None, settings: Any, tmp_path: Path
) -> None:
    settings.SCOPE_PREDICTOR_COMPILE = False
    warmup.warm_process()
    assert registry.acceleration() == {"character_ngrams": False, "text_counts": False}
    assert not (tmp_path / "forests").exists()


def test_make_run_warms_its_server_process_before_serving(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    monkeypatch.setattr(run_embedded, "periodic_tasks_start", lambda: calls.append("periodic"))
    monkeypatch.setattr(run_embedded, "warm_process", lambda: calls.append("warm"))
    monkeypatch.setattr(
        run_embedded.RunserverCommand, "inner_run", lambda self, *a, **kw: calls.append("serve")
    )
    run_embedded.Command().inner_run()
    assert calls == ["periodic", "warm", "serve"]
