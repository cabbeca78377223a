from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.db import models

from providers.models import Deployment, LLMModel, Provider
from routing.admin_activity import ControlEventAdmin


@admin.register(Provider)
class ProviderAdmin(ControlEventAdmin):
    control_entity = "provider"
    list_display = ("name", "kind", "base_url", "api_key_env", "enabled")
    list_filter = ("kind", "enabled")
    search_fields = ("name",)
    # a base URL typed without a scheme means https (Django 6's default; said now, without its warning)
    formfield_overrides = {models.URLField: {"assume_scheme": "https"}}


@admin.register(LLMModel)
class LLMModelAdmin(ControlEventAdmin):
    control_entity = "model"
    list_display = (
        "name",
        "provider",
        "tier",
        "input_usd_per_mtok",
        "output_usd_per_mtok",
        "context_window",
        "enabled",
    )
    list_filter = ("provider", "tier", "enabled")
    search_fields = ("name",)


@admin.register(Deployment)
class DeploymentAdmin(ControlEventAdmin):
    control_entity = "deployment"
    list_display = ("name", "model", "provider", "weight", "rpm_limit", "tpm_limit", "enabled")
    list_filter = ("provider", "enabled")

    def control_name(self, obj: Any) -> str:
        return f"{obj.model.name}/{obj.name}"  # as the catalog's deployment events name it
