from __future__ import annotations

from django.conf import settings
from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView

from feedback.api import FeedbackApi
from providers.openai_api import ChatCompletionsApi, ModelDetailApi, ModelsApi
from routing.api import RouteApi
from routing.decisions_api import DecisionDetailApi, DecisionListApi
from routing.jobs_api import JobCreateApi, JobDetailApi
from routing.usage_api import UsageApi
from scope_site.health import healthz
from scope_site.metrics import metrics_view

handler403 = "scope_site.errors.handler403"
handler404 = "scope_site.errors.handler404"
handler500 = "scope_site.errors.handler500"

urlpatterns = [
    path("admin/", admin.site.urls),
    path("healthz", healthz, name="healthz"),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/v1/route", RouteApi.as_view(), name="route"),
    path("api/v1/feedback", FeedbackApi.as_view(), name="feedback"),
    path("api/v1/jobs", JobCreateApi.as_view(), name="job-create"),
    path("api/v1/jobs/<uuid:job_id>", JobDetailApi.as_view(), name="job-detail"),
    path("api/v1/usage", UsageApi.as_view(), name="usage"),
    path("api/v1/decisions", DecisionListApi.as_view(), name="decision-list"),
    path("api/v1/decisions/<uuid:decision_id>", DecisionDetailApi.as_view(), name="decision-detail"),
    path("v1/chat/completions", ChatCompletionsApi.as_view(), name="chat-completions"),
    path("v1/models", ModelsApi.as_view(), name="models"),
    path("v1/models/<path:model_id>", ModelDetailApi.as_view(), name="model-detail"),
    path("metrics", metrics_view, name="metrics"),
    # web UI (routing.dashboard): Django's session login, then the HTMX pages
    path("login/", auth_views.LoginView.as_view(redirect_authenticated_user=True), name="login"),
    path("logout/", auth_views.LogoutView.as_view(next_page="/login/"), name="logout"),
    path("", include("routing.dashboard.urls")),
]

if settings.SCOPE_ENABLE_NOOP_ENDPOINT:  # benchmark only (bench/overhead.py)
    from scope_site.noop import noop_urlpatterns

    urlpatterns += noop_urlpatterns()
