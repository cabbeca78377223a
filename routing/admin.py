from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest
from rest_framework_api_key.admin import APIKeyModelAdmin
from rest_framework_api_key.models import APIKey as LibraryAPIKey

from routing import admin_accounts, admin_schedules  # noqa: F401  # they register users, groups, schedules
from routing.admin_activity import ControlEventAdmin
from routing.models import (
    ApiKey,
    AuditCheckpoint,
    BudgetHold,
    ControlAction,
    ControlEvent,
    DecisionLog,
    DecisionRollup,
    Experiment,
    ExperimentArm,
    Job,
    PolicyAdjustment,
    PolicyVersion,
    RollupState,
    RoutingPolicy,
    SpendLedger,
)
from routing.services.api_keys import api_key_target


class ReadOnlyAdmin(admin.ModelAdmin):
    """Rows written only by services (append-only logs, immutable versions)."""

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class PolicyVersionInline(admin.TabularInline):
    model = PolicyVersion
    extra = 0
    fields = ("version", "strategy", "alpha", "max_cost_usd", "max_latency_ms", "created_at", "created_by")
    readonly_fields = fields
    can_delete = False

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(RoutingPolicy)
class RoutingPolicyAdmin(ControlEventAdmin):
    control_entity = "policy"
    list_display = ("slug", "name", "current")
    readonly_fields = ("current",)
    inlines = [PolicyVersionInline]


@admin.register(PolicyVersion)
class PolicyVersionAdmin(ReadOnlyAdmin):
    list_display = ("policy", "version", "strategy", "alpha", "created_at")
    list_filter = ("policy",)


# the library's own APIKey model is unused (SCOPE's keys are routing.ApiKey): one "API keys" entry
if admin.site.is_registered(LibraryAPIKey):
    admin.site.unregister(LibraryAPIKey)


@admin.register(ApiKey)
class ApiKeyAdmin(ControlEventAdmin, APIKeyModelAdmin):  # type: ignore[misc]  # save_model: same call
    control_entity = "api_key"
    list_display = (*APIKeyModelAdmin.list_display, "default_policy", "is_active")  # type: ignore[assignment]

    def control_name(self, obj: Any) -> str:
        return api_key_target(obj).removeprefix("api_key:")  # never the id: it holds the key's prefix

    def control_action(self, obj: Any, changed: dict[str, list[Any]]) -> str | None:
        return ControlAction.API_KEY_REVOKE if changed.get("revoked") == [False, True] else None


@admin.register(DecisionLog)
class DecisionLogAdmin(ReadOnlyAdmin):
    list_display = (
        "id",
        "created_at",
        "kind",
        "policy_slug",
        "chosen_model",
        "strategy",
        "predictor_version",
    )
    list_filter = ("kind", "strategy", "chosen_model")
    search_fields = ("id", "user", "api_key_name")
    date_hierarchy = "created_at"
    show_full_result_count = False  # counting a million rows per page view is what makes admins slow


@admin.register(Job)
class JobAdmin(ReadOnlyAdmin):
    list_display = ("id", "status", "api_key", "attempts", "created_at", "finished_at")
    list_filter = ("status",)


class ExperimentArmInline(admin.TabularInline):
    """Arms as they run: a weight changed mid-experiment would mix two splits in one analysis."""

    model = ExperimentArm
    extra = 0
    can_delete = False
    readonly_fields = ("name", "policy", "weight")

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(Experiment)
class ExperimentAdmin(ControlEventAdmin):
    """Experiments are created by the catalog, stopped here or in the UI, promoted in the UI: the
    state changes go through the services' rules (a promoted experiment is final, one running
    experiment per policy), so the admin cannot edit them directly."""

    control_entity = "experiment"
    control_inlines = {ExperimentArm: ("experiment_arm", lambda arm: f"{arm.experiment.name}/{arm.name}")}
    list_display = ("name", "policy", "status", "winner", "stats_updated_at")
    list_filter = ("status",)
    inlines = [ExperimentArmInline]
    readonly_fields = (
        "name",
        "policy",
        "status",
        "winner",
        "created_at",
        "ended_at",
        "stats",
        "stats_updated_at",
    )
    actions = ["stop_experiments", "refresh_statistics"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    @admin.action(description="Stop the selected experiments (traffic returns to their policy)")
    def stop_experiments(self, request: HttpRequest, queryset: QuerySet[Experiment]) -> None:
        from routing.services.experiments import experiment_stop
        from scope_site.errors import ApplicationError

        for experiment in queryset:
            try:
                experiment_stop(experiment_id=experiment.pk, actor=request.user.get_username())
            except ApplicationError as exc:
                self.message_user(request, exc.message, level="warning")

    @admin.action(description="Recompute the selected experiments' statistics now")
    def refresh_statistics(self, request: HttpRequest, queryset: QuerySet[Experiment]) -> None:
        from routing.services.experiment_stats import experiment_stats_refresh

        for experiment in queryset:
            experiment_stats_refresh(experiment_id=experiment.pk, force=True)


@admin.register(PolicyAdjustment)
class PolicyAdjustmentAdmin(ReadOnlyAdmin):
    list_display = ("policy", "old_alpha", "new_alpha", "spend_usd", "target_usd", "created_at")


@admin.register(AuditCheckpoint)
class AuditCheckpointAdmin(ReadOnlyAdmin):
    list_display = ("sequence", "row_count", "first_created_at", "last_created_at", "sealed_at")


@admin.register(ExperimentArm)
class ExperimentArmAdmin(ControlEventAdmin):
    control_entity = "experiment_arm"
    list_display = ("experiment", "name", "policy", "weight")


@admin.register(SpendLedger)
class SpendLedgerAdmin(ReadOnlyAdmin):
    """Per-key spend per day and month (written only by routing.services.limits)."""

    list_display = (
        "api_key",
        "period",
        "period_start",
        "spent_usd",
        "reserved_usd",
        "requests",
        "updated_at",
    )
    list_filter = ("period",)


@admin.register(BudgetHold)
class BudgetHoldAdmin(ReadOnlyAdmin):
    list_display = ("id", "api_key", "amount_usd", "actual_usd", "created_at", "settled_at")


@admin.register(DecisionRollup)
class DecisionRollupAdmin(ReadOnlyAdmin):
    list_display = ("hour", "model", "requests", "predicted_cost_usd", "outcomes", "feedback_n")
    list_filter = ("model",)
    show_full_result_count = False


@admin.register(RollupState)
class RollupStateAdmin(ReadOnlyAdmin):
    list_display = ("source", "watermark", "last_id", "updated_at")


@admin.register(ControlEvent)
class ControlEventLogAdmin(ReadOnlyAdmin):
    """The control-plane activity log: append-only, so read-only here too."""

    list_display = ("created_at", "actor", "action", "target")
    list_filter = ("action",)
    search_fields = ("actor", "target")
    date_hierarchy = "created_at"
