"""Security properties checked across the whole URL map, not view by view.

CSRF on every form, no cookie-authenticated API, read-only roles refused on every write,
provider secrets only in the environment, prompts storable redacted, security headers, and
`check --deploy` clean with production settings.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest
from django.core import serializers
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver
from rest_framework.authentication import SessionAuthentication
from rest_framework.views import APIView

from feedback.models import Outcome
from providers.models import Provider
from providers.services import model_upsert, provider_upsert
from routing.dashboard.accounts import user_create_or_update
from routing.dashboard.roles import WRITE, Role
from routing.models import DecisionLog
from tests.conftest import USER_MESSAGE
from tests.factories import make_api_key, make_policy

pytestmark = pytest.mark.django_db
ROOT = Path(__file__).resolve().parents[2]
PASSWORD = "a-long-test-password-1"
SAMPLE_KWARGS = {
    "int": "1",
    "slug": "default",
    "str": "x",
    "uuid": "00000000-0000-0000-0000-000000000001",
    "path": "x",
}


def all_patterns(resolver: URLResolver | None = None, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """(example path, view callback) for every URL pattern, with sample values for converters."""
    import re

    resolver = resolver or get_resolver()
    for entry in resolver.url_patterns:
        route = prefix + str(entry.pattern)
        if isinstance(entry, URLResolver):
            yield from all_patterns(entry, route)
        elif isinstance(entry, URLPattern):
            path = re.sub(r"<(?:(\w+):)?(\w+)>", lambda m: SAMPLE_KWARGS.get(m.group(1) or "str", "x"), route)
            yield "/" + path.lstrip("^").rstrip("$"), entry.callback


def is_api(callback: Any) -> bool:
    view_class = getattr(callback, "cls", None) or getattr(callback, "view_class", None)
    return isinstance(view_class, type) and issubclass(view_class, APIView)


def web_pages() -> list[tuple[str, Any]]:
    return [(p, cb) for p, cb in all_patterns() if not is_api(cb) and not p.startswith("/admin/")]


def logged_in(role: Role, *, enforce_csrf: bool = False) -> Client:
    user_create_or_update(actor="test", username=f"{role.value}-user", role=role, password=PASSWORD)
    client = Client(enforce_csrf_checks=enforce_csrf)
    assert client.login(username=f"{role.value}-user", password=PASSWORD)
    return client


# --- CSRF ---------------------------------------------------------------------------------------


def test_no_web_view_is_exempt_from_csrf() -> None:
    exempt = [path for path, cb in web_pages() if getattr(cb, "csrf_exempt", False)]
    assert exempt == []


def test_api_views_cannot_be_authenticated_by_a_session_cookie() -> None:
    apis = [cb for _, cb in all_patterns() if is_api(cb)]
    assert apis, "the URL map has API views"
    for callback in apis:
        classes = getattr(callback.cls, "authentication_classes", ())
        assert not any(issubclass(c, SessionAuthentication) for c in classes), callback.cls


def test_every_web_form_post_without_a_csrf_token_is_refused(catalog: Any) -> None:
    client = logged_in(Role.OPERATOR, enforce_csrf=True)
    pages = web_pages() + [("/admin/login/", None), ("/admin/routing/apikey/add/", None)]
    answers = {path: client.post(path, {"x": "1"}).status_code for path, _ in pages}
    assert {path: status for path, status in answers.items() if status != 403} == {}


def test_a_logged_in_user_gets_401_from_the_api_without_a_key(catalog: Any) -> None:
    client = logged_in(Role.OPERATOR)
    response = client.post("/api/v1/route", {"messages": USER_MESSAGE("hi")}, content_type="application/json")
    assert response.status_code == 401


# --- roles --------------------------------------------------------------------------------------


def write_views() -> list[str]:
    return [path for path, cb in web_pages() if getattr(cb, "scope_roles", None) == WRITE]


@pytest.mark.parametrize("role", [Role.AUDITOR, Role.VIEWER])
def test_auditors_and_viewers_are_refused_on_every_write_view(catalog: Any, role: Role) -> None:
    paths = write_views()
    assert paths, "the dashboard has write views"
    client = logged_in(role)
    refused = {path: client.post(path, {"note": "x"}).status_code for path in paths}
    assert set(refused.values()) == {403}, refused


@pytest.mark.parametrize("role", [Role.AUDITOR, Role.VIEWER])
def test_auditors_and_viewers_cannot_use_the_admin(catalog: Any, role: Role) -> None:
    client = logged_in(role)
    for path in ("/admin/", "/admin/routing/routingpolicy/", "/admin/routing/apikey/add/"):
        response = client.get(path)
        assert response.status_code == 302 and "/admin/login/" in response["Location"], path
    response = client.post("/admin/routing/apikey/add/", {"name": "sneaky"})
    assert response.status_code == 302
    from routing.models import ApiKey

    assert not ApiKey.objects.filter(name="sneaky").exists()


# --- provider secrets ---------------------------------------------------------------------------

SECRET = "sk-test-upstream-SECRET-4f1d9c"


class _Upstream(BaseHTTPRequestHandler):
    seen_authorization: list[str] = []

    def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        _Upstream.seen_authorization.append(self.headers.get("Authorization", ""))
        body = json.dumps(
            {
                "id": "cmpl-1",
                "object": "chat.completion",
                "created": 0,
                "model": "upstream-model",
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": "hello"},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6},
            }
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def upstream(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    server = HTTPServer(("127.0.0.1", 0), _Upstream)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("SCOPE_TEST_UPSTREAM_KEY", SECRET)
    _Upstream.seen_authorization = []
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()


def test_a_provider_key_from_the_environment_reaches_the_upstream_and_nothing_else(
    catalog: Any, upstream: str, caplog: pytest.LogCaptureFixture
) -> None:
    provider_upsert(
        actor="test",
        name="upstream",
        kind="openai_compatible",
        base_url=upstream,
        api_key_env="SCOPE_TEST_UPSTREAM_KEY",
    )
    model_upsert(
        actor="test", name="upstream-model", provider="upstream", input_usd_per_mtok=1, output_usd_per_mtok=2
    )
    make_policy("upstream-only", strategy="hybrid", allowed_models=["upstream-model"])
    _, key = make_api_key("secret-test")
    caplog.set_level(logging.DEBUG)
    answer = Client().post(
        "/v1/chat/completions",
        {"model": "scope/upstream-only", "messages": USER_MESSAGE("hello")},
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {key}",
    )
    assert answer.status_code == 200, answer.content
    assert _Upstream.seen_authorization == [f"Bearer {SECRET}"]  # it was really used

    from django.contrib.auth import get_user_model

    get_user_model().objects.create_superuser("admin", "admin@example.com", PASSWORD)
    operator = Client()
    assert operator.login(username="admin", password=PASSWORD)
    provider = Provider.objects.get(name="upstream")
    pages = [
        operator.get(p)
        for p in (
            "/providers/",
            "/admin/providers/provider/",
            f"/admin/providers/provider/{provider.pk}/change/",
        )
    ]
    assert [p.status_code for p in pages] == [200, 200, 200]
    stored = serializers.serialize(
        "json", [*DecisionLog.objects.all(), *Outcome.objects.all(), *Provider.objects.all()]
    )
    places = {
        "answer": answer.content.decode() + str(dict(answer.items())),
        "database rows": stored,
        "pages": "".join(p.content.decode() for p in pages),
        "logs": caplog.text,
    }
    assert [name for name, text in places.items() if SECRET in text] == []


# --- redacted prompts ---------------------------------------------------------------------------


def test_with_redacted_storage_a_decision_keeps_only_the_prompt_hash_and_features(
    api: Any, settings: Any
) -> None:
    settings.SCOPE_PROMPT_STORAGE = "redacted"
    prompt = "My card number is 4111 1111 1111 1111, please check my invoice total."
    response = api("/api/v1/route", {"messages": USER_MESSAGE(prompt)})
    assert response.status_code == 200
    row = DecisionLog.objects.get(id=response.json()["decision_id"])
    assert row.prompt == ""
    assert row.prompt_sha256 == hashlib.sha256(prompt.encode()).hexdigest()
    assert row.features and row.features["approx_tokens"] > 0
    assert "4111" not in serializers.serialize("json", [row])


def test_with_full_storage_the_prompt_is_kept(api: Any, settings: Any) -> None:
    settings.SCOPE_PROMPT_STORAGE = "full"
    response = api("/api/v1/route", {"messages": USER_MESSAGE("keep this prompt")})
    assert DecisionLog.objects.get(id=response.json()["decision_id"]).prompt == "keep this prompt"


# --- headers and deployment checks --------------------------------------------------------------


@pytest.mark.parametrize("path", ["/login/", "/healthz"])
def test_pages_carry_the_security_headers(db: Any, path: str) -> None:
    response = Client().get(path)
    assert response["X-Content-Type-Options"] == "nosniff"
    assert response["X-Frame-Options"] == "DENY"
    assert response["Referrer-Policy"] == "same-origin"
    assert response["Cross-Origin-Opener-Policy"] == "same-origin"


def test_api_answers_carry_the_security_headers(api: Any) -> None:
    response = api("/api/v1/route", {"messages": USER_MESSAGE("hi")})
    assert response["X-Content-Type-Options"] == "nosniff"
    assert response["X-Frame-Options"] == "DENY"


def test_hsts_and_secure_cookies_are_sent_over_https_in_production(db: Any, settings: Any) -> None:
    settings.SECURE_HSTS_SECONDS = 31536000
    settings.SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    settings.SESSION_COOKIE_SECURE = settings.CSRF_COOKIE_SECURE = True
    response = Client().get("/login/", secure=True)
    assert response["Strict-Transport-Security"].startswith("max-age=31536000")
    assert response.cookies["csrftoken"]["secure"]


def test_the_https_redirect_spares_health_checks_and_scrapes(db: Any, settings: Any) -> None:
    settings.SECURE_SSL_REDIRECT = True
    client = Client()
    assert client.get("/healthz").status_code == 200
    assert client.get("/metrics").status_code == 200
    assert client.get("/login/").status_code == 301  # everything else still goes to HTTPS


def production_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "REDIS_URL", "SCOPE_TESTING"}}
    env.update(
        SCOPE_PRODUCTION="1",
        DJANGO_SECRET_KEY="x7" * 30 + "-production-like-secret-for-the-check",
        DJANGO_ALLOWED_HOSTS="scope.example.com",
        DJANGO_DEBUG="0",
        **extra,
    )
    return env


def test_check_deploy_is_clean_with_production_settings() -> None:
    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=ROOT,
        env=production_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


def test_production_refuses_to_start_without_a_secret_key() -> None:
    env = production_env()
    env.pop("DJANGO_SECRET_KEY")
    result = subprocess.run(
        [sys.executable, "manage.py", "check"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode != 0
    assert "DJANGO_SECRET_KEY" in result.stderr


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"DJANGO_SECRET_KEY": "change-me"}, "DJANGO_SECRET_KEY must be at least 50 characters"),
        ({"DJANGO_SECRET_KEY": "x" * 60}, "DJANGO_SECRET_KEY must be at least 50 characters"),
        ({"DJANGO_DEBUG": "true"}, "DJANGO_DEBUG must be false when SCOPE_PRODUCTION is true"),
    ],
)
def test_production_refuses_to_start_with_a_weak_key_or_debug_on(extra: dict[str, str], message: str) -> None:
    result = subprocess.run(
        [sys.executable, "manage.py", "check"],
        cwd=ROOT,
        env={**production_env(), **extra},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode != 0
    assert message in result.stderr


def test_the_benchmark_noop_endpoints_are_not_mounted_by_default(api: Any, settings: Any) -> None:
    assert settings.SCOPE_ENABLE_NOOP_ENDPOINT is False
    assert api("/api/v1/noop", {"messages": USER_MESSAGE("hi")}).status_code == 404
    assert api("/api/v1/noop-insert", {"messages": USER_MESSAGE("hi")}).status_code == 404
