"""A backing service that fails gives clear JSON 503s (or degraded service), never a 500 or a lie.

The database is made to fail at the driver boundary with Django's own `execute_wrapper` hook;
Redis is made unreachable by pointing the cache at a closed local port (real connection errors).
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any
from unittest import mock

import pytest
from django.db import OperationalError, connection
from django.test import Client, override_settings

from routing.models import DecisionLog
from tests.conftest import USER_MESSAGE
from tests.factories import make_api_key

pytestmark = pytest.mark.django_db

Api = Callable[..., Any]


@contextmanager
def database_fails(when: Callable[[str], bool] = lambda sql: True) -> Iterator[None]:
    def fail(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        if when(sql):
            raise OperationalError("server closed the connection unexpectedly")
        return execute(sql, params, many, context)

    with connection.execute_wrapper(fail):
        yield


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # nothing listens once the socket is closed


def dead_redis_cache() -> dict[str, Any]:
    return {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": f"redis://127.0.0.1:{closed_port()}/0",
            "OPTIONS": {"socket_connect_timeout": 0.2, "socket_timeout": 0.2},
        }
    }


def test_route_answers_a_json_503_with_retry_after_when_the_database_fails(api: Api) -> None:
    with database_fails():
        response = api("/api/v1/route", {"messages": USER_MESSAGE("hello")})
    assert response.status_code == 503
    assert response["Content-Type"] == "application/json"
    assert response["Retry-After"] == "2"
    error = response.json()["error"]
    assert error["code"] == "service_unavailable"
    assert "database" in error["message"]


def test_route_never_answers_a_decision_whose_row_was_not_written(api: Api) -> None:
    before = DecisionLog.objects.count()
    with database_fails(lambda sql: "INSERT" in sql and "routing_decisionlog" in sql):
        response = api("/api/v1/route", {"messages": USER_MESSAGE("hello")})
    assert response.status_code == 503
    assert "decision_id" not in response.json()
    assert DecisionLog.objects.count() == before


def test_route_works_again_once_the_database_is_back(api: Api) -> None:
    with database_fails():
        assert api("/api/v1/route", {"messages": USER_MESSAGE("hello")}).status_code == 503
    response = api("/api/v1/route", {"messages": USER_MESSAGE("hello")})
    assert response.status_code == 200
    assert DecisionLog.objects.filter(id=response.json()["decision_id"]).exists()


def test_a_page_outside_the_api_also_answers_503_json_when_the_database_fails(catalog: Any) -> None:
    client = Client(raise_request_exception=False)
    with database_fails():
        client.cookies["sessionid"] = "a-session-that-must-be-looked-up"
        response = client.get("/admin/")
    assert response.status_code == 503
    assert response["Retry-After"] == "2"
    assert response.json()["error"]["code"] == "service_unavailable"


def test_healthz_says_down_with_503_when_the_database_fails(db: Any) -> None:
    with database_fails():
        response = Client().get("/healthz")
    assert response.status_code == 503
    assert response.json()["checks"]["database"]["ok"] is False


def test_routing_goes_on_when_redis_is_unreachable(catalog: Any) -> None:
    _, key = make_api_key("limited", rpm_limit=5)  # exercises the rate limiter's cache calls
    with override_settings(CACHES=dead_redis_cache()):
        responses = [
            Client().post(
                "/api/v1/route",
                data={"messages": USER_MESSAGE("hello")},
                content_type="application/json",
                HTTP_AUTHORIZATION=f"Bearer {key}",
            )
            for _ in range(3)
        ]
        health = Client().get("/healthz")
    assert [r.status_code for r in responses] == [200, 200, 200]
    assert DecisionLog.objects.filter(id__in=[r.json()["decision_id"] for r in responses]).count() == 3
    assert health.status_code == 200
    body = health.json()
    assert body["status"] == "degraded"
    assert body["checks"]["cache"]["ok"] is False


def test_a_job_submitted_while_the_broker_is_down_is_kept_and_swept_up_later(api: Api) -> None:
    import kombu.exceptions

    from routing.models import Job, JobStatus
    from routing.services.jobs import jobs_requeue_stale
    from routing.tasks import job_execute

    refused = kombu.exceptions.OperationalError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")
    with mock.patch.object(job_execute, "apply_async", side_effect=refused):
        response = api("/api/v1/jobs", {"model": "scope/auto", "messages": USER_MESSAGE("later, please")})
    assert response.status_code == 202, response.content
    job = Job.objects.get(id=response.json()["id"])
    assert job.status == JobStatus.QUEUED
    enqueued: list[Any] = []
    assert jobs_requeue_stale(queued_older_than_s=0, enqueue=enqueued.append) >= 1
    assert job.id in enqueued
