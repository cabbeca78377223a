"""load_catalog: providers, models, policies (and experiments) from one YAML/JSON file, idempotently."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import yaml
from django.db import transaction

from providers.models import LLMModel, Provider
from providers.services import model_upsert, provider_upsert
from routing.models import ControlAction, RoutingPolicy
from routing.selectors import catalog_invalidate
from routing.services.control_events import control_event_record
from routing.services.experiments import experiments_load
from routing.services.policies import policy_publish
from scope_site.errors import InvalidRequest

PROVIDER_KEYS = {"name", "kind", "base_url", "api_key_env", "connect_timeout_s", "read_timeout_s", "enabled"}
MODEL_KEYS = {
    "name",
    "provider",
    "input_usd_per_mtok",
    "output_usd_per_mtok",
    "context_window",
    "tier",
    "capabilities",
    "tags",
    "upstream_name",
    "sim_profile",
    "load_balancing",
    "enabled",
}
POLICY_KEYS = {
    "slug",
    "name",
    "description",
    "strategy",
    "alpha",
    "max_cost_usd",
    "max_latency_ms",
    "models",
    "allowed_models",
    "denied_models",
    "required_capabilities",
    "required_tags",
    "rules",
    "options",
}


class SectionLoader(Protocol):
    def __call__(self, items: list[Mapping[str, Any]], *, actor: str) -> int: ...


# Extra catalog sections ("experiments", ...) register a loader here: fn(items, actor=…) -> count
SECTION_LOADERS: dict[str, SectionLoader] = {}
SECTION_LOADERS["experiments"] = experiments_load


@dataclass
class CatalogResult:
    counts: dict[str, int] = field(default_factory=dict)
    new_policy_versions: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)  # existing entries left as they are (only_missing)


def catalog_parse(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except OSError as exc:
        raise InvalidRequest(f"cannot read {path}: {exc.strerror}") from None
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise InvalidRequest(
            f"{path} is not valid {'JSON' if path.suffix == '.json' else 'YAML'}: {exc}"
        ) from None
    if not isinstance(data, Mapping):
        raise InvalidRequest(f"{path}: the top level must be a mapping with providers/models/policies")
    return dict(data)


def _items(data: Mapping[str, Any], section: str, allowed: set[str], id_key: str) -> list[dict[str, Any]]:
    items = data.get(section) or []
    if not isinstance(items, list):
        raise InvalidRequest(f"{section}: must be a list")
    for index, item in enumerate(items):
        if not isinstance(item, Mapping) or not item.get(id_key):
            raise InvalidRequest(f"{section}[{index}]: must be a mapping with {id_key!r}")
        if not isinstance(item[id_key], str):  # `name: 5` was a TypeError traceback further on
            raise InvalidRequest(f"{section}[{index}].{id_key}: must be a string (got {item[id_key]!r})")
        unknown = set(item) - allowed
        if unknown:
            raise InvalidRequest(f"{section}[{item[id_key]}]: unknown key(s) {', '.join(sorted(unknown))}")
    seen: set[str] = set()
    for item in items:  # a second entry used to replace the first silently (deployments refuse it too)
        if item[id_key] in seen:
            raise InvalidRequest(f"{section}[{item[id_key]}]: listed twice")
        seen.add(item[id_key])
    return [dict(i) for i in items]


def catalog_load(
    *, data: Mapping[str, Any], actor: str, source: str = "", only_missing: bool = False
) -> CatalogResult:
    """Upsert the file's providers, models and policies (and registered sections) in one transaction.

    only_missing: create what does not exist yet and leave existing providers, models and policies
    exactly as operators left them (seed_demo); other sections are then not loaded at all.
    `actor` is recorded on every change and on the `catalog.load` event (with `source`, the file)."""
    known_sections = {"providers", "models", "policies"} | set(SECTION_LOADERS)
    unknown = set(data) - known_sections
    if unknown:
        raise InvalidRequest(f"unknown top-level key(s): {', '.join(sorted(unknown))}")
    providers = _items(data, "providers", PROVIDER_KEYS, "name")
    models = _items(data, "models", MODEL_KEYS, "name")
    policies = _items(data, "policies", POLICY_KEYS, "slug")
    result = CatalogResult()
    if only_missing:
        providers = _missing(providers, "name", Provider, result)
        models = _missing(models, "name", LLMModel, result)
        policies = _missing(policies, "slug", RoutingPolicy, result)
        data = {}
    with transaction.atomic():
        for item in providers:
            provider_upsert(**item, actor=actor)
        for item in models:
            for required in ("provider", "input_usd_per_mtok", "output_usd_per_mtok"):
                if required not in item:
                    raise InvalidRequest(f"models[{item['name']}].{required}: missing")
            model_upsert(**item, actor=actor)
        known_models = set(LLMModel.objects.values_list("name", flat=True))
        for item in policies:
            if "models" in item:
                item["allowed_models"] = item.pop("models")
            slug = item.pop("slug")
            before = _current_version(slug)
            try:
                version = policy_publish(slug=slug, created_by=actor, known_models=known_models, **item)
            except InvalidRequest as exc:
                raise InvalidRequest(f"policies[{slug}].{exc.message}") from None
            if version.version != before:
                result.new_policy_versions.append(f"{slug} v{version.version}")
        for section, loader in SECTION_LOADERS.items():
            if data.get(section):
                if not isinstance(data[section], list):
                    raise InvalidRequest(f"{section}: must be a list")
                result.counts[section] = loader(list(data[section]), actor=actor)
        result.counts.update(providers=len(providers), models=len(models), policies=len(policies))
        if providers or models or policies or not only_missing:  # seed_demo on a seeded db: nothing
            control_event_record(
                actor=actor,
                action=ControlAction.CATALOG_LOAD,
                target=f"catalog:{source}" if source else "catalog",
                detail={
                    "counts": result.counts,
                    "new_policy_versions": result.new_policy_versions,
                    "only_missing": only_missing,
                    "kept": len(result.kept),
                },
            )
        transaction.on_commit(catalog_invalidate)
    return result


def _missing(
    items: list[dict[str, Any]], key: str, model: Any, result: CatalogResult
) -> list[dict[str, Any]]:
    existing = set(
        model.objects.filter(**{f"{key}__in": [i[key] for i in items]}).values_list(key, flat=True)
    )
    result.kept += [f"{model._meta.verbose_name} {i[key]}" for i in items if i[key] in existing]
    return [i for i in items if i[key] not in existing]


def _current_version(slug: str) -> int | None:
    policy = RoutingPolicy.objects.select_related("current").filter(slug=slug).first()
    return policy.current.version if policy and policy.current else None
