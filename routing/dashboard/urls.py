from __future__ import annotations

from django.urls import path

from routing.dashboard.views import (
    activity,
    audit,
    catalog,
    decisions,
    experiments,
    overview,
    policies,
    predictor,
)

app_name = "dashboard"

urlpatterns = [
    path("", overview.overview, name="overview"),
    path("providers/", catalog.providers, name="providers"),
    path("providers/models/<int:model_id>/enabled", catalog.model_toggle, name="model-toggle"),
    path("policies/", policies.policy_list, name="policies"),
    path("policies/<slug:slug>/", policies.policy_detail, name="policy"),
    path("policies/<slug:slug>/publish", policies.policy_publish_view, name="policy-publish"),
    path("policies/<slug:slug>/replay", policies.policy_replay_view, name="policy-replay"),
    path("experiments/", experiments.experiment_list, name="experiments"),
    path("experiments/<int:experiment_id>/stop", experiments.experiment_stop_view, name="experiment-stop"),
    path(
        "experiments/<int:experiment_id>/promote",
        experiments.experiment_promote_view,
        name="experiment-promote",
    ),
    path("predictor/", predictor.predictor, name="predictor"),
    path("predictor/retrain", predictor.retrain, name="retrain"),
    path("predictor/runs/<int:run_id>/", predictor.training_run, name="training-run"),
    path("predictor/versions/<int:version_id>/activate", predictor.activate, name="predictor-activate"),
    path("decisions/", decisions.explorer, name="decisions"),
    path("decisions/export.<str:fmt>", audit.export, name="export"),
    path("decisions/<str:decision_id>/", decisions.decision, name="decision"),
    path("audit/", audit.audit, name="audit"),
    path("audit/verify", audit.audit_verify, name="audit-verify"),
    path("audit/seal", audit.audit_seal_view, name="audit-seal"),
    path("activity/", activity.activity, name="activity"),
    path("activity.json", activity.activity_json, name="activity-json"),
]
