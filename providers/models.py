from __future__ import annotations

from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models


class ProviderKind(models.TextChoices):
    OPENAI_COMPATIBLE = "openai_compatible", "OpenAI-compatible"
    ANTHROPIC = "anthropic", "Anthropic Messages API"
    SIMULATED = "simulated", "Simulated (demo)"


class Provider(models.Model):
    """An upstream API. Its secret is never stored: only the name of the env var holding it."""

    name = models.SlugField(max_length=100, unique=True)
    kind = models.CharField(max_length=32, choices=ProviderKind.choices)
    base_url = models.URLField(max_length=500, blank=True)
    api_key_env = models.CharField(
        max_length=100, blank=True, help_text="Name of the environment variable holding the API key"
    )
    connect_timeout_s = models.FloatField(default=3.0, validators=[MinValueValidator(0.1)])
    read_timeout_s = models.FloatField(default=60.0, validators=[MinValueValidator(0.1)])
    enabled = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(kind__in=[k.value for k in ProviderKind]), name="provider_kind_valid"
            ),
        ]

    def __str__(self) -> str:
        return self.name


class LoadBalancing(models.TextChoices):
    WEIGHTED = "weighted", "Weighted random"
    LEAST_BUSY = "least_busy", "Least busy"
    LATENCY = "latency", "Lowest latency"


class LLMModel(models.Model):
    """A routable model. Prices are USD per million tokens; `tier` is the operator's prior (1–5)."""

    name = models.CharField(max_length=200, unique=True)
    provider = models.ForeignKey(Provider, on_delete=models.PROTECT, related_name="models")
    upstream_name = models.CharField(
        max_length=200, blank=True, help_text="Model id at the provider, when it differs from `name`"
    )
    input_usd_per_mtok = models.DecimalField(max_digits=12, decimal_places=6)
    output_usd_per_mtok = models.DecimalField(max_digits=12, decimal_places=6)
    context_window = models.PositiveIntegerField(default=8192)
    capabilities = models.JSONField(default=list, blank=True)
    tags = models.JSONField(default=dict, blank=True)
    tier = models.PositiveSmallIntegerField(
        default=3, validators=[MinValueValidator(1), MaxValueValidator(5)]
    )
    # Simulated provider only: latency_ms, tokens_per_s, failure_rate, quality.
    sim_profile = models.JSONField(default=dict, blank=True)
    load_balancing = models.CharField(
        max_length=16, choices=LoadBalancing.choices, default=LoadBalancing.WEIGHTED
    )
    enabled = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]
        verbose_name = "LLM model"
        constraints = [
            models.CheckConstraint(condition=models.Q(tier__gte=1, tier__lte=5), name="llmmodel_tier_1_5"),
            models.CheckConstraint(
                condition=models.Q(input_usd_per_mtok__gte=0, output_usd_per_mtok__gte=0),
                name="llmmodel_prices_non_negative",
            ),
        ]

    def __str__(self) -> str:
        return self.name


class Deployment(models.Model):
    """One place a model is served (a provider endpoint) with its own rate limits."""

    model = models.ForeignKey(LLMModel, on_delete=models.CASCADE, related_name="deployments")
    provider = models.ForeignKey(Provider, on_delete=models.PROTECT, related_name="deployments")
    name = models.CharField(max_length=200)
    upstream_name = models.CharField(max_length=200, blank=True)
    weight = models.PositiveIntegerField(default=1)
    rpm_limit = models.PositiveIntegerField(null=True, blank=True)
    tpm_limit = models.PositiveIntegerField(null=True, blank=True)
    enabled = models.BooleanField(default=True)

    class Meta:
        ordering = ["model", "name"]
        constraints = [models.UniqueConstraint(fields=["model", "name"], name="deployment_unique_name")]

    def __str__(self) -> str:
        return f"{self.model.name}@{self.name}"
