from __future__ import annotations

from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models


class EvalPrompt(models.Model):
    """A prompt from an imported evaluation set (BENCHMARK.md format), unique per (source, external_id)."""

    source = models.CharField(max_length=100)
    external_id = models.CharField(max_length=200)
    prompt = models.TextField()
    task = models.CharField(max_length=200, blank=True)
    input_tokens = models.PositiveIntegerField(null=True, blank=True)
    imported_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["source", "external_id"], name="evalprompt_unique_source_id")
        ]

    def __str__(self) -> str:
        return f"{self.source}:{self.external_id}"


class EvalOutcome(models.Model):
    """How one model did on one imported prompt."""

    prompt = models.ForeignKey(EvalPrompt, on_delete=models.CASCADE, related_name="outcomes")
    model_name = models.CharField(max_length=200)
    score = models.FloatField(validators=[MinValueValidator(0.0), MaxValueValidator(1.0)])
    output_tokens = models.FloatField(null=True, blank=True)
    latency_ms = models.FloatField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["prompt", "model_name"], name="evaloutcome_unique_prompt_model"),
            models.CheckConstraint(
                condition=models.Q(score__gte=0.0, score__lte=1.0), name="evaloutcome_score_0_1"
            ),
        ]
        indexes = [models.Index(fields=["model_name"], name="evaloutcome_model")]  # anchor stats per model

    def __str__(self) -> str:
        return f"{self.model_name} on {self.prompt_id}: {self.score}"


class PredictorVersion(models.Model):
    """A trained predictor: XGBoost UBJSON bytes plus the metadata needed to refuse a mismatch."""

    name = models.CharField(max_length=64, unique=True)
    artifact = models.BinaryField()
    feature_schema = models.PositiveIntegerField()
    metadata = models.JSONField(default=dict)  # feature names, metrics, lineage, anchors
    metrics = models.JSONField(default=dict)
    training_seconds = models.FloatField(default=0.0)
    is_active = models.BooleanField(default=False)
    created_at = models.DateTimeField(auto_now_add=True)
    activated_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            # exactly one active predictor at a time
            models.UniqueConstraint(
                fields=["is_active"], condition=models.Q(is_active=True), name="predictor_single_active"
            )
        ]

    def __str__(self) -> str:
        return self.name


class Outcome(models.Model):
    """What happened when a decision was executed: tokens, latency, cost, error, attempts."""

    class Status(models.TextChoices):
        OK = "ok", "OK"
        PARTIAL = "partial", "Partial (stream cut)"
        ERROR = "error", "Error"
        # the call was never made: the key's budget refused it after the decision was logged
        REFUSED = "refused", "Refused (budget)"

    decision = models.ForeignKey("routing.DecisionLog", on_delete=models.PROTECT, related_name="outcomes")
    model_name = models.CharField(max_length=200)
    status = models.CharField(max_length=8, choices=Status.choices)
    input_tokens = models.PositiveIntegerField(default=0)
    output_tokens = models.PositiveIntegerField(default=0)
    tokens_estimated = models.BooleanField(default=False)
    latency_ms = models.FloatField(null=True, blank=True)
    ttft_ms = models.FloatField(null=True, blank=True)
    # what the client waited for the call: every attempt, retry and fallback (latency_ms is the
    # answering attempt's own time, what the latency predictor learns per model)
    total_ms = models.FloatField(null=True, blank=True)
    cost_usd = models.DecimalField(max_digits=14, decimal_places=8, default=0)
    error_class = models.CharField(max_length=100, blank=True)
    attempts = models.JSONField(default=list)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    def __str__(self) -> str:
        return f"{self.model_name} {self.status} for {self.decision_id}"


class Feedback(models.Model):
    """A score for a decision; all are kept, the latest per decision counts for training."""

    decision = models.ForeignKey("routing.DecisionLog", on_delete=models.PROTECT, related_name="feedback")
    score = models.FloatField(validators=[MinValueValidator(0.0), MaxValueValidator(1.0)])
    label = models.CharField(max_length=100, blank=True)
    comment = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["decision", "-created_at"], name="feedback_latest")]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(score__gte=0.0, score__lte=1.0), name="feedback_score_0_1"
            )
        ]

    def __str__(self) -> str:
        return f"{self.score} for {self.decision_id}"


class TrainingRunStatus(models.TextChoices):
    QUEUED = "queued", "Queued"
    RUNNING = "running", "Running"
    PROMOTED = "promoted", "Promoted"
    REJECTED = "rejected", "Trained, not promoted"
    FAILED = "failed", "Failed"


class TrainingRun(models.Model):
    """One (re)training: data counts, champion vs challenger metrics, duration, outcome, progress."""

    status = models.CharField(
        max_length=10, choices=TrainingRunStatus.choices, default=TrainingRunStatus.QUEUED
    )
    trigger = models.CharField(max_length=50, default="manual")  # manual | schedule | command
    params = models.JSONField(default=dict, blank=True)
    progress = models.FloatField(default=0.0)  # 0–1, for the UI's live progress bar
    progress_message = models.CharField(max_length=200, blank=True)
    data_counts = models.JSONField(default=dict, blank=True)
    metrics = models.JSONField(default=dict, blank=True)
    challenger = models.ForeignKey(
        PredictorVersion, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    champion = models.ForeignKey(
        PredictorVersion, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    error = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    # last sign of life of the process running it (each progress write): a running run that has
    # been silent for SCOPE_RETRAIN_STALE_AFTER_S lost its worker and no longer blocks a new one
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            # one open run at a time, enforced by the database: two starts at the same moment both
            # find no open run to lock (select_for_update on nothing), and the second insert fails
            models.UniqueConstraint(
                models.Value(True),
                condition=models.Q(status__in=("queued", "running")),
                name="one_open_training_run",
            )
        ]

    def __str__(self) -> str:
        return f"training run {self.pk} ({self.status})"


class CalibrationStatus(models.TextChoices):
    EXPLORING = "exploring", "Exploring (capped share of traffic)"
    GRADUATED = "graduated", "Graduated (enough live outcomes)"
    FAILED = "failed", "Failed"


class ModelCalibration(models.Model):
    """A new model's anchor evaluation and its exploration cap until enough live outcomes exist."""

    model_name = models.CharField(max_length=200, unique=True)
    status = models.CharField(
        max_length=10, choices=CalibrationStatus.choices, default=CalibrationStatus.EXPLORING
    )
    anchors = models.PositiveIntegerField(default=0)
    anchor_score = models.FloatField(null=True, blank=True)  # mean score on the anchor prompts
    scoring = models.CharField(max_length=200, blank=True)  # exact_match | judge:<model> | imported:<file>
    exploration_cap = models.FloatField(
        default=0.1, validators=[MinValueValidator(0.0), MaxValueValidator(1.0)]
    )  # the share of requests in which the model may be a candidate
    min_live_outcomes = models.PositiveIntegerField(default=50)
    live_outcomes = models.PositiveIntegerField(default=0)
    details = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    graduated_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(exploration_cap__gte=0.0, exploration_cap__lte=1.0),
                name="calibration_cap_0_1",
            )
        ]

    def __str__(self) -> str:
        return f"{self.model_name} ({self.status})"
