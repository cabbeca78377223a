from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import pytest
from django.http import HttpRequest, HttpResponse
from django.test import Client, RequestFactory

from scope_site.static_files import StaticFilesMiddleware


def _no_view(request: HttpRequest) -> HttpResponse:
    return HttpResponse("not a static file", status=404)


# closing a response sends request_finished, whose handler checks the database connection
@pytest.mark.django_db
def test_it_serves_the_assets_from_the_finders_without_a_warning_before_collectstatic(
    settings: Any, tmp_path: Path
) -> None:
    settings.STATIC_ROOT = str(tmp_path / "never-collected")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "No directory at: …" would fail the test here
        middleware = StaticFilesMiddleware(_no_view)
    response = middleware(RequestFactory().get("/static/dashboard/charts.js"))
    assert response.status_code == 200
    assert b"data-chart" in b"".join(response.streaming_content)  # type: ignore[attr-defined]
    response.close()


# closing a response sends request_finished, whose handler checks the database connection
@pytest.mark.django_db
def test_it_serves_collected_files_once_collectstatic_has_run(settings: Any, tmp_path: Path) -> None:
    collected = tmp_path / "collected"
    collected.mkdir()
    (collected / "only-collected.txt").write_text("from STATIC_ROOT")
    settings.STATIC_ROOT = str(collected)
    response = StaticFilesMiddleware(_no_view)(RequestFactory().get("/static/only-collected.txt"))
    assert response.status_code == 200
    assert b"".join(response.streaming_content) == b"from STATIC_ROOT"  # type: ignore[attr-defined]
    response.close()


def test_a_missing_static_root_still_warns_when_nothing_else_serves_the_files(
    settings: Any, tmp_path: Path
) -> None:
    settings.STATIC_ROOT = str(tmp_path / "never-collected")
    settings.WHITENOISE_USE_FINDERS = False
    with pytest.warns(UserWarning, match="No directory at"):
        StaticFilesMiddleware(_no_view)


@pytest.mark.django_db
def test_the_site_middleware_serves_the_vendored_chart_library(settings: Any, tmp_path: Path) -> None:
    settings.STATIC_ROOT = str(tmp_path / "never-collected")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        response = Client().get("/static/vendor/chart-4.6.1.umd.min.js")
    response.close()
    assert response.status_code == 200 and response["Content-Type"].startswith("text/javascript")
