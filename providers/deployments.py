"""Catalog writes for deployments: the places one model is served, each with its own limits.

In the catalog file they form a top-level `deployments:` section, loaded after providers and
models (registered in routing.services.catalog.SECTION_LOADERS):

    deployments:
      - {model: llama-3.1-8b, name: vllm-a, provider: local-vllm, weight: 3, rpm_limit: 600}
      - {model: llama-3.1-8b, name: together, provider: together, upstream_name: meta-llama/..., tpm_limit: 200000}

A model's deployments are the ones the file lists: a deployment of a listed model that the file
no longer names is removed, so the file stays the source of truth.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from django.db import transaction

from providers.models import Deployment, LLMModel, Provider
from routing.models import ControlAction
from routing.services.control_events import control_event_record, control_upsert_record
from scope_site.errors import InvalidRequest
from scope_site.lengths import check_lengths

DEPLOYMENT_KEYS = {
    "model",
    "name",
    "provider",
    "upstream_name",
    "weight",
    "rpm_limit",
    "tpm_limit",
    "enabled",
}


def _limit(value: Any, where: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidRequest(f"{where}: must be a positive integer or null")
    return value


def deployment_upsert(
    *,
    model: str,
    name: str,
    provider: str,
    upstream_name: str = "",
    weight: int = 1,
    rpm_limit: int | None = None,
    tpm_limit: int | None = None,
    enabled: bool = True,
    actor: str,
) -> Deployment:
    where = f"deployments[{model}/{name[:200]}]"
    check_lengths(Deployment, where, name=name, upstream_name=upstream_name)
    model_row = LLMModel.objects.filter(name=model).first()
    if model_row is None:
        raise InvalidRequest(f"{where}.model: unknown model {model!r}")
    provider_row = Provider.objects.filter(name=provider).first()
    if provider_row is None:
        raise InvalidRequest(f"{where}.provider: unknown provider {provider!r}")
    if isinstance(weight, bool) or not isinstance(weight, int) or weight < 0:
        raise InvalidRequest(f"{where}.weight: must be a non-negative integer")
    if not isinstance(enabled, bool):  # bool("no") is True
        raise InvalidRequest(f"{where}.enabled: must be true or false (got {enabled!r})")
    values: dict[str, Any] = {
        "upstream_name": str(upstream_name or ""),
        "weight": weight,
        "rpm_limit": _limit(rpm_limit, f"{where}.rpm_limit"),
        "tpm_limit": _limit(tpm_limit, f"{where}.tpm_limit"),
        "enabled": enabled,
    }
    with transaction.atomic():
        before = (
            Deployment.objects.select_for_update()
            .filter(model=model_row, name=name)
            .values("provider__name", *values)
            .first()
        )
        deployment, _ = Deployment.objects.update_or_create(
            model=model_row, name=name, defaults={"provider": provider_row, **values}
        )
        if before is not None:
            before["provider"] = before.pop("provider__name")
        control_upsert_record(
            actor=actor,
            entity="deployment",
            name=f"{model}/{name}",
            before=before,
            after={"provider": provider, **values},
        )
    return deployment


def deployments_load(items: list[Mapping[str, Any]], *, actor: str) -> int:
    """The catalog's `deployments:` section; returns how many deployments it upserted."""
    listed: dict[str, set[str]] = {}
    with transaction.atomic():
        for index, item in enumerate(items):
            if not isinstance(item, Mapping) or not item.get("model") or not item.get("name"):
                raise InvalidRequest(f"deployments[{index}]: must be a mapping with 'model' and 'name'")
            for key in ("model", "name", "provider", "upstream_name"):
                if key in item and not isinstance(item[key], str):  # name: 5 was a TypeError traceback
                    raise InvalidRequest(f"deployments[{index}].{key}: must be a string (got {item[key]!r})")
            unknown = set(item) - DEPLOYMENT_KEYS
            if unknown:
                raise InvalidRequest(
                    f"deployments[{item['model']}/{item['name']}]: unknown key(s) {', '.join(sorted(unknown))}"
                )
            if "provider" not in item:
                raise InvalidRequest(f"deployments[{item['model']}/{item['name']}].provider: missing")
            names = listed.setdefault(str(item["model"]), set())
            if str(item["name"]) in names:
                raise InvalidRequest(f"deployments[{item['model']}/{item['name']}]: listed twice")
            names.add(str(item["name"]))
            deployment_upsert(**{k: v for k, v in item.items()}, actor=actor)
        for model, names in listed.items():
            dropped = Deployment.objects.filter(model__name=model).exclude(name__in=names)
            for gone in dropped.values_list("name", flat=True):
                control_event_record(
                    actor=actor,
                    action=ControlAction.DEPLOYMENT_DELETE,
                    target=f"deployment:{model}/{gone}",
                    detail={"reason": "no longer listed in the catalog file"},
                )
            dropped.delete()
    return len(items)
