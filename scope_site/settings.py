"""SCOPE settings: one module, driven by environment variables (see README "Configuration").

With nothing set SCOPE runs embedded: SQLite in WAL mode, a local-memory cache and Celery tasks
executed in-process. DATABASE_URL switches to PostgreSQL, REDIS_URL to Redis (cache, rate
limits, circuit state and Celery broker).
"""

from __future__ import annotations

import os
from pathlib import Path

import dj_database_url

from scope_site.env import (
    ConfigurationError,
    env_bool,
    env_choice,
    env_float,
    env_int,
    env_list,
    env_str,
    env_url,
    env_weights,
)
from scope_site.green import gevent_patched

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(env_str("SCOPE_VAR_DIR", str(BASE_DIR / "var")))

DEBUG = env_bool("DJANGO_DEBUG", False)
SECRET_KEY = env_str("DJANGO_SECRET_KEY")
if env_bool("SCOPE_PRODUCTION", False):
    # production must not quietly fall back to debug pages, no HTTPS protections or a guessable key
    if DEBUG:
        raise ConfigurationError("DJANGO_DEBUG must be false when SCOPE_PRODUCTION is true")
    if not SECRET_KEY:
        raise ConfigurationError("DJANGO_SECRET_KEY must be set when SCOPE_PRODUCTION is true")
    if len(SECRET_KEY) < 50 or len(set(SECRET_KEY)) < 5:  # Django's own check --deploy threshold
        raise ConfigurationError(
            "DJANGO_SECRET_KEY must be at least 50 characters with at least 5 different ones when "
            "SCOPE_PRODUCTION is true (e.g. python -c 'import secrets; print(secrets.token_urlsafe(50))')"
        )
if not SECRET_KEY:
    SECRET_KEY = "scope-embedded-insecure-key-change-me-" + "x" * 24

ALLOWED_HOSTS = env_list("DJANGO_ALLOWED_HOSTS", ["127.0.0.1", "localhost", "[::1]", "testserver"])
CSRF_TRUSTED_ORIGINS = env_list("DJANGO_CSRF_TRUSTED_ORIGINS", [])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework_api_key",
    "drf_spectacular",
    "django_htmx",
    "template_partials",
    "django_celery_beat",
    "providers",
    "routing",
    "feedback",
]

MIDDLEWARE = [
    "scope_site.middleware.BodySizeLimitMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "scope_site.static_files.StaticFilesMiddleware",  # WhiteNoise: the web UI's static files, also under gunicorn
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
]

ROOT_URLCONF = "scope_site.urls"
WSGI_APPLICATION = "scope_site.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# --- Database -------------------------------------------------------------------------------
DATABASE_URL = env_url("DATABASE_URL", schemes={"postgres", "postgresql", "pgsql", "sqlite"})
CONN_MAX_AGE = env_int("SCOPE_CONN_MAX_AGE", 600, minimum=0)
# Under gevent (`make serve`'s workers) every greenlet would hold a connection of its own, one per
# client connection: there a process shares a pool instead (psycopg_pool, via Django's "pool" option)
DB_POOL_SIZE = env_int("SCOPE_DB_POOL_SIZE", 8 if gevent_patched() else 0, minimum=0)
if DATABASE_URL:
    DATABASES = {
        "default": dj_database_url.parse(
            DATABASE_URL, conn_max_age=0 if DB_POOL_SIZE else CONN_MAX_AGE, conn_health_checks=True
        )
    }
    if DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
        options = DATABASES["default"].setdefault("OPTIONS", {})
        options["connect_timeout"] = env_int("SCOPE_DB_CONNECT_TIMEOUT", 5, minimum=1)
        if DB_POOL_SIZE:
            # Health-checked on checkout (CONN_HEALTH_CHECKS). A request that gets no connection
            # within `timeout` gets a 503, like one that finds PostgreSQL down: while it is down the
            # pool has none to give, and waits are what a client would otherwise see. The pool
            # retries a failed connect after 1 s, then 2, 4, …; giving up after 2 s ends that series,
            # and the next request starts a new one at once: back within ~1 s of PostgreSQL
            options["pool"] = {
                "min_size": 1,
                "max_size": DB_POOL_SIZE,
                "timeout": env_float("SCOPE_DB_POOL_TIMEOUT", 1.0, minimum=0.1),
                "reconnect_timeout": 2.0,
            }
else:
    VAR_DIR.mkdir(parents=True, exist_ok=True)
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": env_str("SCOPE_SQLITE_PATH", str(VAR_DIR / "scope.sqlite3")),
            "OPTIONS": {
                "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA busy_timeout=5000;",
                "transaction_mode": "IMMEDIATE",
            },
        }
    }
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Cache and Celery -----------------------------------------------------------------------
REDIS_URL = env_url("REDIS_URL", schemes={"redis", "rediss", "unix"})
if REDIS_URL:
    CACHES = {
        "default": {
            "BACKEND": "scope_site.cache.RedisCache",  # Django's, reusing its Redis client objects
            "LOCATION": REDIS_URL,
            "KEY_PREFIX": env_str("SCOPE_CACHE_PREFIX", "scope"),
            "OPTIONS": {"socket_connect_timeout": 0.5, "socket_timeout": 0.5},
        }
    }
    CELERY_BROKER_URL = REDIS_URL
    CELERY_TASK_ALWAYS_EAGER = False
    # acks_late: a message a dead worker held comes back after the visibility timeout (async jobs
    # are claimed idempotently, so an early redelivery of a running job is harmless)
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "visibility_timeout": env_int("SCOPE_BROKER_VISIBILITY_TIMEOUT_S", 3600, minimum=1),
        "unacked_restore_interval": env_int("SCOPE_BROKER_RESTORE_INTERVAL_S", 60, minimum=1),
        "unacked_restore_throttle": 1,
    }
else:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache", "LOCATION": "scope"}}
    CELERY_BROKER_URL = "memory://localhost/"  # with a host: kombu warns about a bare memory://
    CELERY_TASK_ALWAYS_EAGER = True
CELERY_TASK_EAGER_PROPAGATES = True
CELERY_RESULT_BACKEND = None
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_TIME_LIMIT = env_int("SCOPE_TASK_TIME_LIMIT", 3600, minimum=10)
CELERY_TASK_SOFT_TIME_LIMIT = CELERY_TASK_TIME_LIMIT - 5
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_BEAT_SCHEDULER = "django_celery_beat.schedulers:DatabaseScheduler"
# Periodic tasks live in django-celery-beat's tables (created once by routing/services/schedules.py
# from `seed_demo` / `ensure_schedules`, then editable in the admin); these are their first intervals.
SCOPE_AUDIT_SEAL_S = env_int("SCOPE_AUDIT_SEAL_S", 60, minimum=1)
SCOPE_ROLLUP_S = env_int("SCOPE_ROLLUP_S", 20, minimum=1)
CELERY_TIMEZONE = "UTC"

# --- Auth, i18n, static ---------------------------------------------------------------------
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
]
LOGIN_URL = "/login/"
LOGIN_REDIRECT_URL = "/"
LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = False
USE_TZ = True
STATIC_URL = "/static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = Path(env_str("SCOPE_STATIC_ROOT", str(BASE_DIR / "staticfiles")))
# serve straight from static/ as well, so `make run` needs no collectstatic
WHITENOISE_USE_FINDERS = True

# --- Security -------------------------------------------------------------------------------
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"
SESSION_COOKIE_HTTPONLY = True
# SCOPE_PRODUCTION turns the HTTPS protections on by default (each can still be switched off), so
# `manage.py check --deploy` is clean with production settings.
PRODUCTION = env_bool("SCOPE_PRODUCTION", False)  # never with DEBUG: refused above
SECURE_SSL_REDIRECT = env_bool("SCOPE_SSL_REDIRECT", PRODUCTION)
# load balancers and Prometheus probe the workers over plain HTTP: a 301 there reads as "down"
SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^metrics$"]
SESSION_COOKIE_SECURE = env_bool("SCOPE_SECURE_COOKIES", PRODUCTION)
CSRF_COOKIE_SECURE = SESSION_COOKIE_SECURE
SECURE_HSTS_SECONDS = env_int("SCOPE_HSTS_SECONDS", 31536000 if PRODUCTION else 0, minimum=0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = SECURE_HSTS_SECONDS > 0
SECURE_HSTS_PRELOAD = SECURE_HSTS_SECONDS > 0
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https") if env_bool("SCOPE_BEHIND_PROXY") else None

# --- REST framework -------------------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": ["routing.auth.BearerApiKeyAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_PARSER_CLASSES": ["scope_site.parsers.JSONParser"],
    "DEFAULT_RENDERER_CLASSES": ["scope_site.renderers.OrjsonRenderer"],
    "EXCEPTION_HANDLER": "scope_site.errors.api_exception_handler",
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "UNAUTHENTICATED_USER": None,
}
SPECTACULAR_SETTINGS = {
    "TITLE": "SCOPE API",
    "DESCRIPTION": "Pre-inference LLM routing: decisions, execution, feedback.",
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    "COMPONENT_SPLIT_REQUEST": True,
}
SCOPE_MAX_BODY_BYTES = env_int("SCOPE_MAX_BODY_BYTES", 1024 * 1024, minimum=1024)
# Django's own cap follows ours: fixed at 1 MB it answered a raised SCOPE_MAX_BODY_BYTES's larger
# bodies with an HTML 400 (the 413 middleware is the one limit clients should meet)
DATA_UPLOAD_MAX_MEMORY_SIZE = SCOPE_MAX_BODY_BYTES

# --- SCOPE ----------------------------------------------------------------------------------
# Extra strategy classes, "name=dotted.path.Class" separated by commas.
SCOPE_EXTRA_STRATEGIES = env_list("SCOPE_EXTRA_STRATEGIES", [])
SCOPE_DEFAULT_POLICY = env_str("SCOPE_DEFAULT_POLICY", "default")
SCOPE_MAX_FALLBACKS = env_int("SCOPE_MAX_FALLBACKS", 3, minimum=0)
# Store prompts in the decision log ("full") or only their hash and features ("redacted").
SCOPE_PROMPT_STORAGE = env_choice("SCOPE_PROMPT_STORAGE", "full", {"full", "redacted"})
SCOPE_CATALOG_TTL_SECONDS = env_float("SCOPE_CATALOG_TTL_SECONDS", 2.0, minimum=0.0)
# How often a process looks up which predictor version is active (routing/predictor/registry.py).
SCOPE_PREDICTOR_CHECK_SECONDS = env_float("SCOPE_PREDICTOR_CHECK_SECONDS", 2.0, minimum=0.0)
# Compile the active predictor's trees to C (routing/predictor/compiled.py; libraries cached under
# SCOPE_VAR_DIR/forests); off, or without a C compiler, the numpy evaluator serves.
SCOPE_PREDICTOR_COMPILE = env_bool("SCOPE_PREDICTOR_COMPILE", True)
SCOPE_ENABLE_NOOP_ENDPOINT = env_bool("SCOPE_ENABLE_NOOP_ENDPOINT", False)
# Group commit of decision rows (routing/services/decision_writer.py): `make serve` starts one
# writer beside its workers and sets the socket; empty = every worker commits its own rows.
SCOPE_GROUP_COMMIT = env_bool("SCOPE_GROUP_COMMIT", True)
SCOPE_DECISION_WRITER_SOCKET = env_str("SCOPE_DECISION_WRITER_SOCKET")
# How long the writer may hold a first row for the rows of workers that have not sent yet.
SCOPE_GROUP_COMMIT_DELAY_MS = env_float("SCOPE_GROUP_COMMIT_DELAY_MS", 0.0, minimum=0.0)
# An API key row is remembered per process this long (the secret is still hashed and checked on
# every request); a revoked key stops working everywhere within it. 0 = look it up every time.
SCOPE_API_KEY_CACHE_SECONDS = env_float("SCOPE_API_KEY_CACHE_SECONDS", 2.0, minimum=0.0)
SCOPE_DATA_DIR = Path(env_str("SCOPE_DATA_DIR", str(BASE_DIR.parent / "shared" / "data")))
# Learning loop (feedback/services/live_data.py, retraining.py, calibration.py; routing/services/pacing.py)
# Per-source weights of training examples: "feedback=3,outcome=1,eval=1".
SCOPE_TRAINING_SOURCE_WEIGHTS = env_weights(
    "SCOPE_TRAINING_SOURCE_WEIGHTS", {"feedback": 3.0, "outcome": 1.0, "eval": 1.0}
)
SCOPE_RETRAIN_MIN_IMPROVEMENT = env_float("SCOPE_RETRAIN_MIN_IMPROVEMENT", 0.002, minimum=0.0)  # Brier margin
SCOPE_RETRAIN_HOLDOUT_FRACTION = env_float("SCOPE_RETRAIN_HOLDOUT_FRACTION", 0.2, minimum=0.05, maximum=0.95)
SCOPE_RETRAIN_MIN_HELDOUT = env_int("SCOPE_RETRAIN_MIN_HELDOUT", 20, minimum=1)  # examples a verdict needs
# a running training run silent this long (no progress write) lost its worker: a new run may start
SCOPE_RETRAIN_STALE_AFTER_S = env_int("SCOPE_RETRAIN_STALE_AFTER_S", 900, minimum=10)
SCOPE_RETRAIN_LIVE_DAYS = env_int("SCOPE_RETRAIN_LIVE_DAYS", 90, minimum=1)  # live decisions used
SCOPE_EXPLORATION_CAP = env_float(
    "SCOPE_EXPLORATION_CAP", 0.1, minimum=0.0, maximum=1.0
)  # new models: share of requests
SCOPE_EXPLORATION_MIN_OUTCOMES = env_int("SCOPE_EXPLORATION_MIN_OUTCOMES", 50, minimum=1)
SCOPE_JUDGE_MODEL = env_str("SCOPE_JUDGE_MODEL")  # calibrate_model scores free-form answers with it
SCOPE_PACING_LOOKBACK_SECONDS = env_int("SCOPE_PACING_LOOKBACK_SECONDS", 3600, minimum=60)
SCOPE_PACING_MIN_INTERVAL_SECONDS = env_int("SCOPE_PACING_MIN_INTERVAL_SECONDS", 300, minimum=0)
SCOPE_PACING_MAX_DECISIONS = env_int("SCOPE_PACING_MAX_DECISIONS", 5000, minimum=10)
CELERY_IMPORTS = ("routing.periodic_tasks", "feedback.learning_tasks")
# Budgets, async jobs, deployments (routing/services/limits.py, routing/services/jobs.py, providers/balancing.py)
SCOPE_BUDGET_HOLD_TTL_S = env_int("SCOPE_BUDGET_HOLD_TTL_S", 900, minimum=60)
SCOPE_BUDGET_INFLIGHT_RETRY_S = env_int("SCOPE_BUDGET_INFLIGHT_RETRY_S", 5, minimum=1)
SCOPE_JOB_STALE_AFTER_S = env_int("SCOPE_JOB_STALE_AFTER_S", 900, minimum=1)
SCOPE_JOB_MAX_ATTEMPTS = env_int("SCOPE_JOB_MAX_ATTEMPTS", 3, minimum=1)
SCOPE_JOB_RESULT_MAX_BYTES = env_int("SCOPE_JOB_RESULT_MAX_BYTES", 1024 * 1024, minimum=1024)
# Execution (providers/execution.py, providers/circuit.py, providers/adapters/simulated.py)
SCOPE_RETRIES_PER_MODEL = env_int("SCOPE_RETRIES_PER_MODEL", 1, minimum=0)  # extra tries on 429/5xx
SCOPE_RETRY_BACKOFF_S = env_float("SCOPE_RETRY_BACKOFF_S", 0.25, minimum=0.0)  # doubles per retry
SCOPE_RETRY_MAX_WAIT_S = env_float("SCOPE_RETRY_MAX_WAIT_S", 5.0, minimum=0.0)  # longest Retry-After honoured
SCOPE_EXECUTION_BUDGET_S = env_float(
    "SCOPE_EXECUTION_BUDGET_S", 90.0, minimum=0.1
)  # all attempts together (< gunicorn --timeout)
SCOPE_CIRCUIT_FAILURES = env_int("SCOPE_CIRCUIT_FAILURES", 5, minimum=1)
SCOPE_CIRCUIT_WINDOW_S = env_float("SCOPE_CIRCUIT_WINDOW_S", 60.0, minimum=1.0)
SCOPE_CIRCUIT_COOLDOWN_S = env_float("SCOPE_CIRCUIT_COOLDOWN_S", 30.0, minimum=0.1)
# How long a process reuses its read of every circuit when routing (provider calls always re-read).
SCOPE_CIRCUIT_SNAPSHOT_SECONDS = env_float("SCOPE_CIRCUIT_SNAPSHOT_SECONDS", 1.0, minimum=0.0)
SCOPE_SIMULATED_SPEEDUP = env_float("SCOPE_SIMULATED_SPEEDUP", 1.0, minimum=0.001)
SCOPE_METRICS_TOKEN = env_str("SCOPE_METRICS_TOKEN")  # when set, /metrics wants "Authorization: Bearer <it>"
# a Celery worker started with `-A scope_site.worker` serves its task metrics here (port 0: off)
SCOPE_WORKER_METRICS_PORT = env_int("SCOPE_WORKER_METRICS_PORT", 9540, minimum=0, maximum=65535)
SCOPE_WORKER_METRICS_ADDR = env_str("SCOPE_WORKER_METRICS_ADDR", "127.0.0.1")

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {
        "handlers": ["console"],
        "level": env_choice(
            "SCOPE_LOG_LEVEL", "INFO", {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}, any_case=True
        ),
    },
    "loggers": {"django.db.backends": {"level": "WARNING"}},
}

if os.environ.get("SCOPE_TESTING") == "1":
    PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
