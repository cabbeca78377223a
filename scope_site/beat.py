"""Celery beat's entry point: `celery -A scope_site.beat beat` (what `make beat` runs).

Without REDIS_URL the app is eager: a beat would run every due task itself, in its own process,
beside the `make run` server that already runs the same schedule in a thread
(scope_site/embedded.py), so each periodic task would run twice. It refuses instead, as the worker
does (scope_site/worker.py). The check runs when Celery imports this module, before beat opens its
schedule: only `-A scope_site.beat` imports it (the embedded thread uses scope_site.celery).
"""

from __future__ import annotations

from django.conf import settings

from scope_site.celery import app

__all__ = ["app"]

if not settings.REDIS_URL:
    raise SystemExit(
        "Celery beat needs REDIS_URL (its broker); without it the `make run` server runs the "
        "periodic tasks itself, and this beat would run each of them a second time"
    )
