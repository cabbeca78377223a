from __future__ import annotations

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "scope_site.settings")

app = Celery("scope")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
app.autodiscover_tasks(["routing.dashboard"])  # routing.dashboard.tasks (audit seal, rollups)
