from __future__ import annotations

from django.conf import settings
from django.contrib import admin
from django.urls import path
from drf_spectacular.views import SpectacularAPIView

from feedback.api import FeedbackApi
from routing.api import RouteApi
from scope_site.health import healthz

handler404 = "scope_site.errors.handler404"
handler500 = "scope_site.errors.handler500"

urlpatterns = [
    path("admin/", admin.site.urls),
    path("healthz", healthz, name="healthz"),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/v1/route", RouteApi.as_view(), name="route"),
    path("api/v1/feedback", FeedbackApi.as_view(), name="feedback"),
]

if settings.SCOPE_ENABLE_NOOP_ENDPOINT:  # benchmark only (bench/overhead.py)
    from scope_site.noop import NoopApi

    urlpatterns.append(path("api/v1/noop", NoopApi.as_view(), name="noop"))
