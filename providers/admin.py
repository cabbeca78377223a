from __future__ import annotations

from django.contrib import admin
from django.db import models

from providers.models import Deployment, LLMModel, Provider


@admin.register(Provider)
class ProviderAdmin(admin.ModelAdmin):
    list_display = ("name", "kind", "base_url", "api_key_env", "enabled")
    list_filter = ("kind", "enabled")
    search_fields = ("name",)
    # a base URL typed without a scheme means https (Django 6's default; said now, without its warning)
    formfield_overrides = {models.URLField: {"assume_scheme": "https"}}


@admin.register(LLMModel)
class LLMModelAdmin(admin.ModelAdmin):
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
class DeploymentAdmin(admin.ModelAdmin):
    list_display = ("name", "model", "provider", "weight", "rpm_limit", "tpm_limit", "enabled")
    list_filter = ("provider", "enabled")
