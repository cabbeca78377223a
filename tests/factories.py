"""Factories that build data through the real services where one exists."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import factory

from providers.models import LLMModel, Provider, ProviderKind
from routing.models import ApiKey, PolicyVersion
from routing.services.api_keys import api_key_create
from routing.services.policies import policy_publish


class ProviderFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Provider
        django_get_or_create = ("name",)

    name = factory.Sequence(lambda n: f"provider-{n}")
    kind = ProviderKind.SIMULATED


class LLMModelFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = LLMModel
        django_get_or_create = ("name",)

    name = factory.Sequence(lambda n: f"model-{n}")
    provider = factory.SubFactory(ProviderFactory, name="sim")
    input_usd_per_mtok = Decimal("1.0")
    output_usd_per_mtok = Decimal("2.0")
    context_window = 32768
    tier = 3
    capabilities: list[str] = factory.LazyFunction(list)  # type: ignore[assignment]
    tags: dict[str, Any] = factory.LazyFunction(dict)  # type: ignore[assignment]


def make_catalog() -> list[Any]:
    """Three models from cheap/small to expensive/frontier, on the simulated provider."""
    return [
        LLMModelFactory(
            name="small",
            tier=1,
            input_usd_per_mtok=Decimal("0.1"),
            output_usd_per_mtok=Decimal("0.2"),
            tags={"region": "eu"},
            capabilities=["json"],
        ),
        LLMModelFactory(
            name="medium",
            tier=3,
            input_usd_per_mtok=Decimal("1"),
            output_usd_per_mtok=Decimal("2"),
            tags={"region": "us"},
            capabilities=["json", "tools"],
        ),
        LLMModelFactory(
            name="large",
            tier=5,
            input_usd_per_mtok=Decimal("10"),
            output_usd_per_mtok=Decimal("30"),
            tags={"region": "us"},
            capabilities=["json", "tools", "vision"],
            context_window=128000,
        ),
    ]


def make_policy(slug: str = "default", **values: Any) -> PolicyVersion:
    values.setdefault("created_by", "test")
    return policy_publish(slug=slug, **values)


def make_api_key(name: str = "app", policy: str | None = None, **limits: Any) -> tuple[ApiKey, str]:
    limits.setdefault("actor", "test")
    return api_key_create(name=name, policy_slug=policy, **limits)
