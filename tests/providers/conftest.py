from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import openai
import pytest

from providers.models import LLMModel
from providers.services import model_upsert, provider_upsert
from tests.upstreams import FakeUpstream

UPSTREAM_KEY_ENV = "SCOPE_TEST_UPSTREAM_KEY"


@pytest.fixture(autouse=True)
def _fast_execution(settings: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Short waits everywhere: the simulated provider runs 1000× faster, backoffs are tiny."""
    settings.SCOPE_SIMULATED_SPEEDUP = 1000.0
    settings.SCOPE_RETRIES_PER_MODEL = 1
    settings.SCOPE_RETRY_BACKOFF_S = 0.01
    settings.SCOPE_RETRY_MAX_WAIT_S = 1.0
    settings.SCOPE_EXECUTION_BUDGET_S = 10.0
    settings.SCOPE_CIRCUIT_FAILURES = 3
    settings.SCOPE_CIRCUIT_WINDOW_S = 60.0
    settings.SCOPE_CIRCUIT_COOLDOWN_S = 30.0
    monkeypatch.setenv(UPSTREAM_KEY_ENV, "sk-upstream-test-secret")


@pytest.fixture
def openai_client(live_server: Any, api_key: str) -> Iterator[openai.OpenAI]:
    """The official client against SCOPE's live server, closed after the test: a kept-alive
    connection would keep its server thread, and that thread's database connection, open until
    the test database is dropped."""
    with openai.OpenAI(
        base_url=f"{live_server.url}/v1", api_key=api_key, max_retries=0, timeout=10
    ) as client:
        yield client


@pytest.fixture
def openai_upstream() -> Iterator[FakeUpstream]:
    with FakeUpstream(style="openai") as upstream:
        yield upstream


@pytest.fixture
def anthropic_upstream() -> Iterator[FakeUpstream]:
    with FakeUpstream(style="anthropic") as upstream:
        yield upstream


def upstream_model(
    name: str,
    upstream: FakeUpstream | None,
    *,
    tier: int = 3,
    price: str = "1",
    read_timeout_s: float = 0.5,
    sim_profile: dict[str, Any] | None = None,
) -> LLMModel:
    """A catalog model served by a fake upstream (or by the simulated provider when upstream is None)."""
    if upstream is None:
        provider = provider_upsert(actor="test", name="sim", kind="simulated")
    else:
        provider = provider_upsert(
            actor="test",
            name=f"up-{name}",
            kind="openai_compatible" if upstream.style == "openai" else "anthropic",
            base_url=upstream.base_url,
            api_key_env=UPSTREAM_KEY_ENV,
            connect_timeout_s=0.5,
            read_timeout_s=read_timeout_s,
        )
    return model_upsert(
        actor="test",
        name=name,
        provider=provider.name,
        upstream_name=f"{name}-upstream",
        input_usd_per_mtok=Decimal(price),
        output_usd_per_mtok=Decimal(price) * 2,
        context_window=32768,
        tier=tier,
        sim_profile=sim_profile
        or {"latency_ms": 50, "tokens_per_s": 200, "failure_rate": 0.0, "quality": 0.8},
    )
