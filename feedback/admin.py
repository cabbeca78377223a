from __future__ import annotations

from django.contrib import admin

from feedback.models import (
    EvalOutcome,
    EvalPrompt,
    Feedback,
    ModelCalibration,
    Outcome,
    PredictorVersion,
    TrainingRun,
)
from routing.admin import ReadOnlyAdmin
from routing.admin_activity import ControlEventAdmin


@admin.register(EvalPrompt)
class EvalPromptAdmin(admin.ModelAdmin):
    list_display = ("source", "external_id", "task", "imported_at")
    list_filter = ("source",)
    search_fields = ("external_id", "task")


@admin.register(EvalOutcome)
class EvalOutcomeAdmin(admin.ModelAdmin):
    list_display = ("prompt", "model_name", "score", "output_tokens")
    list_filter = ("model_name",)


@admin.register(PredictorVersion)
class PredictorVersionAdmin(ReadOnlyAdmin):
    list_display = ("name", "is_active", "feature_schema", "training_seconds", "created_at")
    exclude = ("artifact",)


@admin.register(Outcome)
class OutcomeAdmin(ReadOnlyAdmin):
    list_display = (
        "decision",
        "model_name",
        "status",
        "output_tokens",
        "latency_ms",
        "cost_usd",
        "created_at",
    )
    list_filter = ("status", "model_name")


@admin.register(Feedback)
class FeedbackAdmin(ReadOnlyAdmin):
    list_display = ("decision", "score", "label", "created_at")


@admin.register(TrainingRun)
class TrainingRunAdmin(ReadOnlyAdmin):
    list_display = ("id", "status", "trigger", "progress", "created_at", "finished_at")
    list_filter = ("status", "trigger")


@admin.register(ModelCalibration)
class ModelCalibrationAdmin(ControlEventAdmin):
    """Operators may change a new model's exploration cap or end exploration (status)."""

    control_entity = "calibration"

    list_display = (
        "model_name",
        "status",
        "anchors",
        "anchor_score",
        "exploration_cap",
        "live_outcomes",
        "created_at",
    )
    list_filter = ("status",)
    readonly_fields = (
        "anchors",
        "anchor_score",
        "scoring",
        "live_outcomes",
        "details",
        "created_at",
        "graduated_at",
    )
