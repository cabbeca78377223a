"""API keys: stored hashed, shown once, verified on every request, revocation honoured within the TTL."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from io import StringIO
from typing import Any
from unittest import mock

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import IntegrityError, connection, transaction
from django.test import Client
from django.test.utils import CaptureQueriesContext

from routing.auth import api_key_cache_clear
from routing.models import ApiKey
from tests.conftest import USER_MESSAGE
from tests.factories import make_api_key

pytestmark = pytest.mark.django_db


@pytest.fixture
def key_cache(settings: Any) -> Iterator[None]:
    settings.SCOPE_API_KEY_CACHE_SECONDS = 2.0
    api_key_cache_clear()
    yield
    api_key_cache_clear()


def route(key: str) -> Any:
    return Client().post(
        "/api/v1/route",
        data={"messages": USER_MESSAGE("hello")},
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {key}",
    )


def test_a_new_key_is_printed_once_and_only_its_sha512_hash_is_stored(catalog: Any) -> None:
    out = StringIO()
    call_command("create_api_key", "printed", stdout=out)
    key = out.getvalue().strip()
    row = ApiKey.objects.get(name="printed")
    assert row.hashed_key == "sha512$$" + hashlib.sha512(key.encode()).hexdigest()
    stored = [str(getattr(row, f.attname)) for f in ApiKey._meta.concrete_fields]
    assert not any(key in value or key.split(".", 1)[1] in value for value in stored)
    assert route(key).status_code == 200


def test_it_rejects_a_wrong_secret_even_when_the_prefix_row_is_cached(catalog: Any, key_cache: None) -> None:
    _, key = make_api_key("cached")
    assert route(key).status_code == 200
    prefix = key.split(".", 1)[0]
    forged = route(f"{prefix}.{'x' * 32}")
    assert forged.status_code == 401
    assert forged.json()["error"]["code"] == "unauthenticated"


def test_a_cached_key_needs_no_query_to_authenticate(catalog: Any, key_cache: None) -> None:
    from rest_framework.request import Request
    from rest_framework.test import APIRequestFactory

    from routing.auth import BearerApiKeyAuthentication

    _, key = make_api_key("fast")
    request = APIRequestFactory().post("/api/v1/route", HTTP_AUTHORIZATION=f"Bearer {key}")
    BearerApiKeyAuthentication().authenticate(Request(request))
    with CaptureQueriesContext(connection) as queries:
        result = BearerApiKeyAuthentication().authenticate(Request(request))
    assert result is not None and result[1].name == "fast"
    assert len(queries) == 0


def test_a_revoked_key_stops_working_once_the_ttl_has_passed(catalog: Any, key_cache: None) -> None:
    row, key = make_api_key("revoked-later")
    clock = [1000.0]
    with mock.patch("routing.auth.time.monotonic", side_effect=lambda: clock[0]):
        assert route(key).status_code == 200
        ApiKey.objects.filter(pk=row.pk).update(revoked=True)
        clock[0] += 1.0
        assert route(key).status_code == 200  # within the TTL the remembered row still serves
        clock[0] += 1.5
        refused = route(key)
    assert refused.status_code == 401


def test_with_no_cache_a_revoked_key_is_refused_at_once(catalog: Any, settings: Any) -> None:
    settings.SCOPE_API_KEY_CACHE_SECONDS = 0
    row, key = make_api_key("revoked-now")
    assert route(key).status_code == 200
    ApiKey.objects.filter(pk=row.pk).update(is_active=False)
    assert route(key).status_code == 401


@pytest.mark.parametrize(
    "header", ["", "Bearer", "Bearer ", "Basic abc", "Bearer nodot", "Bearer .x", "Bearer a.b"]
)
def test_it_answers_401_json_to_missing_or_malformed_keys(catalog: Any, header: str) -> None:
    extra: dict[str, Any] = {"HTTP_AUTHORIZATION": header} if header else {}
    response = Client().post(
        "/api/v1/route", data={"messages": USER_MESSAGE("hi")}, content_type="application/json", **extra
    )
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "unauthenticated"


def test_it_refuses_a_second_unrevoked_key_with_the_same_name(catalog: Any) -> None:
    call_command("create_api_key", "billing-app", stdout=StringIO())
    with pytest.raises(CommandError, match="an API key named 'billing-app' already exists"):
        call_command("create_api_key", " billing-app ", stdout=StringIO())
    assert ApiKey.objects.filter(name="billing-app").count() == 1


def test_a_revoked_keys_name_may_be_reused(catalog: Any) -> None:
    old, _ = make_api_key("billing-app")
    call_command("revoke_api_key", old.prefix, stdout=StringIO())
    make_api_key("billing-app")
    assert ApiKey.objects.filter(name="billing-app", revoked=False).count() == 1


def test_the_database_refuses_two_unrevoked_keys_with_one_name(catalog: Any) -> None:
    make_api_key("billing-app")
    with pytest.raises(IntegrityError), transaction.atomic():
        ApiKey.objects.create_key(name="billing-app")


def test_the_admin_add_form_refuses_a_duplicate_name(catalog: Any, django_user_model: Any) -> None:
    make_api_key("billing-app")
    django_user_model.objects.create_superuser("root", "root@example.com", "pw")
    client = Client()
    assert client.login(username="root", password="pw")
    form = {"name": "billing-app", "is_active": "on", "expiry_date_0": "", "expiry_date_1": ""}
    response = client.post("/admin/routing/apikey/add/", form)
    assert response.status_code == 200
    assert "An API key with this name already exists" in response.content.decode()
    assert ApiKey.objects.filter(name="billing-app").count() == 1


@pytest.mark.django_db(transaction=True)
def test_the_migration_renames_later_duplicates_and_keeps_them_working() -> None:
    from django.db.migrations.executor import MigrationExecutor

    executor = MigrationExecutor(connection)
    executor.migrate([("routing", "0010_control_event")])
    old = executor.loader.project_state([("routing", "0010_control_event")]).apps.get_model(
        "routing", "ApiKey"
    )
    for i in range(3):
        old.objects.create(id=f"k{i}.x", prefix=f"k{i}", hashed_key="h", name="app")
    old.objects.create(id="k3.x", prefix="k3", hashed_key="h", name="app", revoked=True)
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(executor.loader.graph.leaf_nodes())
    names = dict(ApiKey.objects.values_list("prefix", "name"))
    assert names == {"k0": "app", "k1": "app (2)", "k2": "app (3)", "k3": "app"}
