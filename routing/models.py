from __future__ import annotations

import uuid

from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from rest_framework_api_key.models import AbstractAPIKey


class Strategy(models.TextChoices):
    RULE = "rule", "Rules only"
    FEATURE = "feature", "Difficulty → tier"
    PRE_INFERENCE = "pre_inference", "Pre-inference (predicted quality vs cost)"
    HYBRID = "hybrid", "Rules + pre-inference"


class RoutingPolicy(models.Model):
    """A named policy. Its settings live in immutable PolicyVersion rows; `current` is the live one."""

    slug = models.SlugField(max_length=100, unique=True)
    name = models.CharField(max_length=200, blank=True)
    description = models.TextField(blank=True)
    current = models.ForeignKey(
        "PolicyVersion", on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["slug"]
        verbose_name_plural = "routing policies"

    def __str__(self) -> str:
        return self.slug


class PolicyVersion(models.Model):
    """One immutable version of a policy: written once by policy services, never updated."""

    policy = models.ForeignKey(RoutingPolicy, on_delete=models.CASCADE, related_name="versions")
    version = models.PositiveIntegerField()
    strategy = models.CharField(max_length=64, default=Strategy.HYBRID)
    alpha = models.FloatField(default=0.5, validators=[MinValueValidator(0.0), MaxValueValidator(1.0)])
    max_cost_usd = models.FloatField(null=True, blank=True, validators=[MinValueValidator(0.0)])
    max_latency_ms = models.FloatField(null=True, blank=True, validators=[MinValueValidator(0.0)])
    allowed_models = models.JSONField(default=list, blank=True)
    denied_models = models.JSONField(default=list, blank=True)
    required_capabilities = models.JSONField(default=list, blank=True)
    required_tags = models.JSONField(default=dict, blank=True)
    # Rules are part of the version (so a version is a complete, replayable snapshot):
    # [{"name", "when": <condition>, "then": {"action": force|exclude|set_alpha, "model"/"alpha"}}]
    rules = models.JSONField(default=list, blank=True)
    # Extra knobs that later features read (response cache, spend targets, exploration).
    options = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    created_by = models.CharField(max_length=150, blank=True)
    note = models.CharField(max_length=300, blank=True)

    class Meta:
        ordering = ["policy", "-version"]
        constraints = [
            models.UniqueConstraint(fields=["policy", "version"], name="policyversion_unique"),
            models.CheckConstraint(
                condition=models.Q(alpha__gte=0.0, alpha__lte=1.0), name="policyversion_alpha_0_1"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.policy.slug} v{self.version}"


class ApiKey(AbstractAPIKey):
    """An app's key, stored hashed (SHA-512 by djangorestframework-api-key); shown once at creation."""

    default_policy = models.ForeignKey(
        RoutingPolicy, on_delete=models.SET_NULL, null=True, blank=True, related_name="api_keys"
    )
    is_active = models.BooleanField(default=True)
    daily_budget_usd = models.DecimalField(max_digits=12, decimal_places=4, null=True, blank=True)
    monthly_budget_usd = models.DecimalField(max_digits=12, decimal_places=4, null=True, blank=True)
    rpm_limit = models.PositiveIntegerField(null=True, blank=True)

    class Meta(AbstractAPIKey.Meta):
        verbose_name = "API key"
        constraints = [
            # a name is how decisions, budgets and the activity log tell apps apart: two live keys
            # with one name could not be told apart there. A revoked key's name may be reused.
            models.UniqueConstraint(
                fields=["name"],
                condition=models.Q(revoked=False),
                name="apikey_name_unique_unrevoked",
                violation_error_message="An API key with this name already exists (revoke it first).",
            ),
        ]


class DecisionKind(models.TextChoices):
    ROUTE = "route", "Route only"
    CHAT = "chat", "Chat completion"
    JOB = "job", "Async job"


class DecisionLog(models.Model):
    """Append-only record of one routing decision. Written only by routing.services.decision_log."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    created_at = models.DateTimeField()  # indexed by decision_time_id, which leads with it
    kind = models.CharField(max_length=8, choices=DecisionKind.choices, default=DecisionKind.ROUTE)
    api_key = models.ForeignKey(
        ApiKey, on_delete=models.SET_NULL, null=True, blank=True, related_name="+", db_index=False
    )
    api_key_name = models.CharField(max_length=50, blank=True)
    policy_slug = models.CharField(max_length=100, blank=True)
    policy_version = models.PositiveIntegerField(null=True, blank=True)
    strategy = models.CharField(max_length=64)
    predictor_version = models.CharField(max_length=64)
    alpha = models.FloatField(null=True, blank=True)
    chosen_model = models.CharField(max_length=200, blank=True)
    chosen_provider = models.CharField(max_length=100, blank=True)
    fallbacks = models.JSONField(default=list)
    candidates = models.JSONField(default=list)
    explanation = models.JSONField(default=dict)
    features = models.JSONField(default=dict)
    feature_schema = models.PositiveIntegerField()
    prompt = models.TextField(blank=True, help_text="Empty when prompts are stored redacted")
    prompt_sha256 = models.CharField(max_length=64)
    user = models.CharField(max_length=200, blank=True)
    metadata = models.JSONField(default=dict, blank=True)
    experiment = models.CharField(max_length=100, blank=True)
    arm = models.CharField(max_length=100, blank=True)
    cache_hit = models.BooleanField(default=False)
    predicted_cost_usd = models.FloatField(null=True, blank=True)
    predicted_quality = models.FloatField(null=True, blank=True)
    row_hash = models.CharField(max_length=64, blank=True)
    # how row_hash encoded the hashed fields (routing.audit): 1 json, 2 orjson (new rows since
    # 2026-12-01); a plain smallint, since adding a CHECK would scan every existing row
    hash_format = models.SmallIntegerField(default=1, db_default=1)
    checkpoint = models.ForeignKey(
        "AuditCheckpoint", on_delete=models.PROTECT, null=True, blank=True, related_name="rows"
    )

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            # decisions explorer: newest first, filtered by model / policy
            models.Index(fields=["chosen_model", "-created_at"], name="decision_model_time"),
            models.Index(fields=["policy_slug", "-created_at"], name="decision_policy_time"),
            # decisions explorer / export keyset pagination: ORDER BY created_at DESC, id DESC
            # WHERE (created_at, id) < (:t, :id)
            models.Index(fields=["created_at", "id"], name="decision_time_id"),
            # decisions explorer filtered by API key
            models.Index(fields=["api_key_name", "-created_at"], name="decision_key_time"),
            # deleting a key sets its rows' api_key to NULL (one plain index: the default FK index on
            # a text key adds a second, LIKE-only one that every decision INSERT would maintain)
            models.Index(fields=["api_key"], name="decision_api_key"),
            # explorer filtered by experiment; experiment statistics per arm (covering: the per-arm
            # aggregates and the joins to outcomes/feedback read only this index; trailing key
            # columns rather than INCLUDE, which SQLite lacks)
            models.Index(
                fields=["experiment", "arm", "created_at", "id", "predicted_cost_usd", "predicted_quality"],
                name="decision_experiment_time",
                condition=~models.Q(experiment=""),
            ),
            # audit sealer: the rows not yet in a checkpoint, oldest first (stays small)
            models.Index(
                fields=["created_at", "id"],
                name="decision_unsealed",
                condition=models.Q(checkpoint__isnull=True),
            ),
        ]

    def __str__(self) -> str:
        return f"{self.id} → {self.chosen_model}"


class JobStatus(models.TextChoices):
    QUEUED = "queued", "Queued"
    RUNNING = "running", "Running"
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"


class Job(models.Model):
    """An async chat completion. Claimed idempotently (conditional UPDATE), so it never runs twice."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    api_key = models.ForeignKey(ApiKey, on_delete=models.PROTECT, related_name="jobs")
    idempotency_key = models.CharField(max_length=200, blank=True)
    body = models.JSONField()
    status = models.CharField(max_length=12, choices=JobStatus.choices, default=JobStatus.QUEUED)
    decision = models.ForeignKey(
        DecisionLog, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    result = models.JSONField(null=True, blank=True)
    error = models.JSONField(null=True, blank=True)
    attempts = models.PositiveIntegerField(default=0)
    # a retry's earliest start: a message that arrives sooner (a sweep's, a duplicate) cannot claim it
    not_before = models.DateTimeField(null=True, blank=True)
    claimed_by = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            # the same Idempotency-Key from the same API key never creates a second job
            models.UniqueConstraint(
                fields=["api_key", "idempotency_key"],
                condition=~models.Q(idempotency_key=""),
                name="job_unique_idempotency_key",
            )
        ]
        indexes = [models.Index(fields=["status", "created_at"], name="job_status_time")]  # stuck-job sweeps

    def __str__(self) -> str:
        return f"job {self.id} ({self.status})"


class ExperimentStatus(models.TextChoices):
    RUNNING = "running", "Running"
    STOPPED = "stopped", "Stopped"
    PROMOTED = "promoted", "Promoted"


class Experiment(models.Model):
    """An A/B split of the traffic that would use `policy` between arms (each a policy + weight)."""

    name = models.SlugField(max_length=100, unique=True)
    policy = models.ForeignKey(RoutingPolicy, on_delete=models.PROTECT, related_name="experiments")
    status = models.CharField(
        max_length=10, choices=ExperimentStatus.choices, default=ExperimentStatus.RUNNING
    )
    description = models.TextField(blank=True)
    stats = models.JSONField(default=dict, blank=True)  # last aggregation: per arm metrics with intervals
    stats_updated_at = models.DateTimeField(null=True, blank=True)
    winner = models.CharField(max_length=100, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    ended_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            # at most one running experiment splits a policy's traffic
            models.UniqueConstraint(
                fields=["policy"],
                condition=models.Q(status="running"),
                name="experiment_one_running_per_policy",
            )
        ]

    def __str__(self) -> str:
        return self.name


class ExperimentArm(models.Model):
    experiment = models.ForeignKey(Experiment, on_delete=models.CASCADE, related_name="arms")
    name = models.SlugField(max_length=100)
    policy = models.ForeignKey(RoutingPolicy, on_delete=models.PROTECT, related_name="+")
    weight = models.PositiveIntegerField(default=50)

    class Meta:
        ordering = ["experiment", "name"]
        constraints = [models.UniqueConstraint(fields=["experiment", "name"], name="arm_unique_name")]

    def __str__(self) -> str:
        return f"{self.experiment_id}/{self.name}"


class PolicyAdjustment(models.Model):
    """A change the budget-pacing controller made to a policy's α, with its reason."""

    policy = models.ForeignKey(RoutingPolicy, on_delete=models.CASCADE, related_name="adjustments")
    from_version = models.PositiveIntegerField()
    to_version = models.PositiveIntegerField()
    old_alpha = models.FloatField()
    new_alpha = models.FloatField()
    spend_usd = models.FloatField()
    target_usd = models.FloatField()
    reason = models.TextField()
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"{self.policy_id}: α {self.old_alpha:.2f} → {self.new_alpha:.2f}"


class AuditCheckpoint(models.Model):
    """A sealed batch of decision rows: its hash covers their row hashes and the previous checkpoint."""

    sequence = models.PositiveBigIntegerField(unique=True)
    first_created_at = models.DateTimeField()
    last_created_at = models.DateTimeField()
    row_count = models.PositiveIntegerField()
    rows_digest = models.CharField(max_length=64)
    previous_hash = models.CharField(max_length=64)
    checkpoint_hash = models.CharField(max_length=64)
    sealed_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-sequence"]

    def __str__(self) -> str:
        return f"checkpoint {self.sequence}"


class SpendPeriod(models.TextChoices):
    DAY = "day", "Day (UTC)"
    MONTH = "month", "Month (UTC)"


class SpendLedger(models.Model):
    """An API key's spend in one budget period: settled cost plus cost reserved by calls in flight.

    Written only by routing.services.limits, under a row lock, so concurrent admissions see each
    other's reservations (spent + reserved never passes the budget at admission).
    """

    api_key = models.ForeignKey(ApiKey, on_delete=models.CASCADE, related_name="spend")
    period = models.CharField(max_length=5, choices=SpendPeriod.choices)
    period_start = models.DateField()
    spent_usd = models.DecimalField(max_digits=16, decimal_places=8, default=0)
    reserved_usd = models.DecimalField(max_digits=16, decimal_places=8, default=0)
    requests = models.PositiveIntegerField(default=0)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            # one row per key and period: admission locks exactly this row
            models.UniqueConstraint(
                fields=["api_key", "period", "period_start"], name="spendledger_unique_period"
            ),
            models.CheckConstraint(
                condition=models.Q(reserved_usd__gte=0), name="spendledger_reserved_non_negative"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.api_key_id} {self.period} {self.period_start}: ${self.spent_usd} spent"


class BudgetHold(models.Model):
    """One admitted call's reservation; settled with the actual cost, or expired if never settled."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    api_key = models.ForeignKey(ApiKey, on_delete=models.CASCADE, related_name="+")
    amount_usd = models.DecimalField(max_digits=16, decimal_places=8)
    day = models.DateField()
    month = models.DateField()
    created_at = models.DateTimeField()
    settled_at = models.DateTimeField(null=True, blank=True)
    actual_usd = models.DecimalField(max_digits=16, decimal_places=8, null=True, blank=True)

    class Meta:
        indexes = [
            # expiry sweep: unsettled holds of one key, oldest first
            models.Index(fields=["api_key", "settled_at", "created_at"], name="budgethold_open"),
        ]

    def __str__(self) -> str:
        return f"hold {self.id}: ${self.amount_usd}"


class DecisionRollup(models.Model):
    """Hourly aggregates per chosen model for the overview page, maintained incrementally.

    Written only by routing.services.rollup (a periodic task and a catch-up before each overview
    read), so the overview never scans the decision log. Latencies are kept as fixed log-spaced
    histograms (routing.services.rollup.LATENCY_EDGES_MS) so percentiles can be merged.
    """

    hour = models.DateTimeField()
    model = models.CharField(max_length=200, blank=True)
    # from decisions (bucketed by DecisionLog.created_at)
    requests = models.PositiveBigIntegerField(default=0)
    predicted_cost_usd = models.FloatField(default=0.0)
    baseline_cost_usd = models.FloatField(default=0.0)  # same requests sent to the best model
    savings_sq = models.FloatField(default=0.0)  # Σ saving², for the savings error band
    predicted_quality_sum = models.FloatField(default=0.0)
    predicted_quality_n = models.PositiveBigIntegerField(default=0)
    predicted_latency_hist = models.JSONField(default=list)
    # from outcomes (bucketed by Outcome.created_at)
    outcomes = models.PositiveBigIntegerField(default=0)
    outcome_errors = models.PositiveBigIntegerField(default=0)
    # upstream calls to this model (every attempt of every outcome, fallbacks included) and failures
    calls = models.PositiveBigIntegerField(default=0)
    call_errors = models.PositiveBigIntegerField(default=0)
    outcome_cost_usd = models.FloatField(default=0.0)
    latency_hist = models.JSONField(default=list)
    # from feedback (bucketed by Feedback.created_at, attributed to the decision's model)
    feedback_n = models.PositiveBigIntegerField(default=0)
    feedback_sum = models.FloatField(default=0.0)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["hour", "model"], name="decisionrollup_unique_hour_model")
        ]

    def __str__(self) -> str:
        return f"{self.hour:%Y-%m-%d %H:00} {self.model or '(all)'}"
        # overview: WHERE hour BETWEEN :from AND :to (the unique index's leading column serves it)


class RollupState(models.Model):
    """How far each rollup source has been aggregated (row lock = the one rollup writer at a time)."""

    source = models.CharField(max_length=20, unique=True)  # decisions | outcomes | feedback
    watermark = models.DateTimeField(null=True, blank=True)
    last_id = models.BigIntegerField(default=0)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"rollup {self.source} at {self.watermark}"


class ControlAction(models.TextChoices):
    """What a control-plane change did. `<entity>.create|update|delete` also covers Django admin edits."""

    POLICY_PUBLISH = "policy.publish", "Policy version published"
    POLICY_CREATE = "policy.create", "Policy created without a version (admin)"
    POLICY_UPDATE = "policy.update", "Policy name/description changed (admin)"
    POLICY_DELETE = "policy.delete", "Policy deleted (admin)"
    MODEL_ENABLE = "model.enable", "Model enabled"
    MODEL_DISABLE = "model.disable", "Model disabled"
    MODEL_CREATE = "model.create", "Model created"
    MODEL_UPDATE = "model.update", "Model settings changed"
    MODEL_DELETE = "model.delete", "Model deleted"
    PROVIDER_CREATE = "provider.create", "Provider created"
    PROVIDER_UPDATE = "provider.update", "Provider settings changed"
    PROVIDER_DELETE = "provider.delete", "Provider deleted"
    DEPLOYMENT_CREATE = "deployment.create", "Deployment created"
    DEPLOYMENT_UPDATE = "deployment.update", "Deployment settings changed"
    DEPLOYMENT_DELETE = "deployment.delete", "Deployment deleted"
    PREDICTOR_ACTIVATE = "predictor.activate", "Predictor version activated"
    SHADOW_START = "shadow.start", "Shadow predictor started"
    SHADOW_STOP = "shadow.stop", "Shadow predictor stopped"
    RETRAIN_REQUEST = "retrain.request", "Retraining requested"
    EXPERIMENT_CREATE = "experiment.create", "Experiment created"
    EXPERIMENT_UPDATE = "experiment.update", "Experiment changed"
    EXPERIMENT_DELETE = "experiment.delete", "Experiment deleted (admin)"
    EXPERIMENT_STOP = "experiment.stop", "Experiment stopped"
    EXPERIMENT_ARM_CREATE = "experiment_arm.create", "Experiment arm added (admin)"
    EXPERIMENT_ARM_UPDATE = "experiment_arm.update", "Experiment arm changed (admin)"
    EXPERIMENT_ARM_DELETE = "experiment_arm.delete", "Experiment arm removed (admin)"
    EXPERIMENT_PROMOTE = "experiment.promote", "Experiment arm promoted"
    API_KEY_CREATE = "api_key.create", "API key created"
    API_KEY_UPDATE = "api_key.update", "API key limits/budgets changed"
    API_KEY_REVOKE = "api_key.revoke", "API key revoked"
    API_KEY_DELETE = "api_key.delete", "API key deleted (admin)"
    CATALOG_LOAD = "catalog.load", "Catalog file loaded"
    CALIBRATION_STORE = "calibration.store", "New model calibrated (exploration cap set)"
    CALIBRATION_CREATE = "calibration.create", "Calibration added (admin)"
    CALIBRATION_UPDATE = "calibration.update", "Calibration changed (admin)"
    CALIBRATION_DELETE = "calibration.delete", "Calibration deleted (admin)"
    CALIBRATION_GRADUATE = "calibration.graduate", "Model graduated from exploration"
    SCHEDULE_CREATE = "schedule.create", "Periodic task created"
    SCHEDULE_UPDATE = "schedule.update", "Periodic task changed (admin)"
    SCHEDULE_DELETE = "schedule.delete", "Periodic task deleted (admin)"
    SCHEDULE_TIMING_CREATE = "schedule_timing.create", "Schedule interval/crontab added (admin)"
    SCHEDULE_TIMING_UPDATE = "schedule_timing.update", "Schedule interval/crontab changed (admin)"
    SCHEDULE_TIMING_DELETE = "schedule_timing.delete", "Schedule interval/crontab deleted (admin)"
    USER_SAVE = "user.save", "Dashboard user created or role changed"
    USER_CREATE = "user.create", "User created (admin)"
    USER_UPDATE = "user.update", "User changed: groups, flags or password (admin)"
    USER_DELETE = "user.delete", "User deleted (admin)"
    GROUP_CREATE = "group.create", "Group created (admin)"
    GROUP_UPDATE = "group.update", "Group changed (admin)"
    GROUP_DELETE = "group.delete", "Group deleted (admin)"
    RETRAIN_ABANDON = "retrain.abandon", "Lost retraining run marked failed"


class ControlEvent(models.Model):
    """Who changed the control plane, what, and when. Append-only: written only by
    routing.services.control_events, inside the transaction of the change it records; no code
    path updates or deletes a row (the admin is read-only)."""

    created_at = models.DateTimeField(auto_now_add=True)
    # a username; "system:<component>" for workers and schedules; "cli:<command>" for commands
    actor = models.CharField(max_length=150)
    action = models.CharField(max_length=40, choices=ControlAction.choices)
    target = models.CharField(max_length=300)  # "<entity>:<name>", e.g. "model:gpt-4o"
    detail = models.JSONField(default=dict, blank=True)  # old → new values, versions; never secrets

    class Meta:
        ordering = ["-id"]
        indexes = [
            # activity page / API: newest first by id (keyset), filtered by time
            models.Index(fields=["created_at"], name="controlevent_time"),
            # activity filtered by action or actor, newest first (WHERE action = … ORDER BY id DESC)
            models.Index(fields=["action", "-id"], name="controlevent_action"),
            models.Index(fields=["actor", "-id"], name="controlevent_actor"),
        ]

    def __str__(self) -> str:
        return f"{self.created_at:%Y-%m-%d %H:%M:%S} {self.actor} {self.action} {self.target}"
