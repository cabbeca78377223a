from __future__ import annotations

import json
from typing import Any

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from routing.dashboard.replay import policy_replay
from routing.engine.types import PolicySpec, Rule
from routing.models import DecisionLog, PolicyVersion, RoutingPolicy
from routing.services.route import route_decide
from scope_site.errors import NoEligibleModel


def _form(**overrides: Any) -> dict[str, Any]:
    data = {
        "strategy": "hybrid",
        "alpha": "0.5",
        "rules": "[]",
        "required_tags": "{}",
        "options": "{}",
        "replay_limit": "50",
        "replay_scope": "policy",
    }
    data.update(overrides)
    return data


def test_replay_of_a_forcing_rule_moves_every_decision_to_that_model(decisions: list[DecisionLog]) -> None:
    rule = Rule(
        name="all-large",
        when={"feature": "approx_tokens", "op": ">=", "value": 0},
        action="force",
        model="large",
    )
    result = policy_replay(
        policy=PolicySpec(slug="default", version=99, rules=(rule,)), limit=50, source_policy="default"
    )
    assert result.replayed.decisions == 10 and result.skipped == 0
    assert result.replayed.mix == {"large": 10}
    assert result.changed == sum(1 for d in decisions if d.chosen_model != "large")
    assert result.replayed.cost_usd > result.logged.cost_usd
    assert DecisionLog.objects.count() == 10  # nothing written


def test_replay_leaves_out_calls_that_named_their_model(decisions: list[DecisionLog]) -> None:
    DecisionLog.objects.filter(pk__in=[d.pk for d in decisions[:3]]).update(strategy="passthrough")
    result = policy_replay(policy=PolicySpec(slug="default", version=99), limit=50, source_policy="default")
    assert result.replayed.decisions == 7  # the policy made 7 of the 10 decisions


def test_replay_keeps_each_requests_own_limits(catalog: Any) -> None:
    ask = [{"role": "user", "content": "Prove that the square root of 2 is irrational"}]
    only_small = route_decide(messages=ask, api_key=None, models=["small"], alpha=1.0).row
    with pytest.raises(NoEligibleModel):
        route_decide(messages=ask, api_key=None, max_cost_usd=1e-12)
    assert only_small.explanation["request"] == {"alpha": 1.0, "models": ["small"]}
    result = policy_replay(policy=PolicySpec(slug="default", version=99), limit=50, source_policy="default")
    # still only "small" for the first, still nothing within $1e-12 for the second
    assert result.replayed.decisions == 2
    assert result.replayed.mix == {"small": 1} and result.replayed.no_model == 1
    assert result.changed == 0


def test_replay_with_everything_denied_reports_no_model(decisions: list[DecisionLog]) -> None:
    spec = PolicySpec(slug="default", version=99, denied_models=("small", "medium", "large"))
    result = policy_replay(policy=spec, limit=5, source_policy=None)
    assert result.replayed.no_model == 5 and not result.replayed.mix


def test_operator_replays_an_edit_then_publishes_it(persona: Any, decisions: list[DecisionLog]) -> None:
    client = persona("operator")
    edit = _form(alpha="0.0", note="cheaper")
    response = client.post("/policies/default/replay", edit, HTTP_HX_REQUEST="true")
    assert response.status_code == 200
    body = response.content.decode()
    assert "With this edit" in body and "10 decisions re-decided" in body
    assert PolicyVersion.objects.filter(policy__slug="default").count() == 1
    response = client.post("/policies/default/publish", edit, HTTP_HX_REQUEST="true")
    assert response.status_code == 200 and response["HX-Redirect"] == "/policies/default/?published=2"
    current = RoutingPolicy.objects.get(slug="default").current
    assert current is not None and current.version == 2 and current.alpha == 0.0
    assert current.created_by == "operator" and current.note == "cheaper"


def test_asking_for_a_new_policy_with_a_taken_slug_says_it_edits_the_existing_one(
    persona: Any, decisions: list[DecisionLog]
) -> None:
    client = persona("operator")
    response = client.get("/policies/", {"new": "default"}, follow=True)
    assert response.status_code == 200 and "already exists: you are editing it" in response.content.decode()
    fresh = client.get("/policies/", {"new": "brand-new"}, follow=True).content.decode()
    assert "already exists" not in fresh and "<small>new</small>" in fresh


def test_a_new_policy_slug_longer_than_its_column_is_refused_not_a_500(
    persona: Any, decisions: list[DecisionLog]
) -> None:
    response = persona("operator").post(f"/policies/{'a' * 200}/publish", _form(), HTTP_HX_REQUEST="true")
    assert response.status_code == 400
    assert "slug: at most 100 characters" in response.content.decode()
    assert not RoutingPolicy.objects.filter(slug__startswith="aaaa").exists()


def test_invalid_rules_are_refused_with_the_reason_and_nothing_published(
    persona: Any, decisions: list[DecisionLog]
) -> None:
    client = persona("operator")
    bad_rule = json.dumps(
        [
            {
                "when": {"feature": "no_such_feature", "op": ">", "value": 1},
                "then": {"action": "force", "model": "large"},
            }
        ]
    )
    for url in ("/policies/default/publish", "/policies/default/replay"):
        response = client.post(url, _form(rules=bad_rule), HTTP_HX_REQUEST="true")
        assert response.status_code == 400
        assert "unknown feature" in response.content.decode()
    response = client.post("/policies/default/publish", _form(rules="[not json"), HTTP_HX_REQUEST="true")
    assert response.status_code == 400 and "not valid JSON" in response.content.decode()
    response = client.post(
        "/policies/default/publish",
        _form(
            rules=json.dumps(
                [
                    {
                        "when": {"feature": "code_signal", "op": ">", "value": 1},
                        "then": {"action": "force", "model": "ghost"},
                    }
                ]
            )
        ),
    )
    assert response.status_code == 400 and "unknown model" in response.content.decode()
    assert PolicyVersion.objects.filter(policy__slug="default").count() == 1


def test_operator_creates_a_new_policy_from_the_editor(persona: Any, decisions: list[DecisionLog]) -> None:
    client = persona("operator")
    assert client.get("/policies/", {"new": "EU Only"}).url == "/policies/eu-only/?new=1"
    assert client.get("/policies/eu-only/?new=1").status_code == 200
    assert client.get("/policies/eu-only/").status_code == 404
    response = client.post("/policies/eu-only/publish", _form(required_tags='{"region": "eu"}'))
    assert response.status_code == 302
    assert RoutingPolicy.objects.get(slug="eu-only").current.required_tags == {"region": "eu"}  # type: ignore[union-attr]


def test_create_user_reads_the_password_from_the_environment(
    db: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from django.contrib.auth import authenticate

    monkeypatch.setenv("SCOPE_USER_PASSWORD", "a-long-password")
    call_command("create_user", "alice", "--role", "auditor")
    user = authenticate(username="alice", password="a-long-password")
    assert user is not None and list(user.groups.values_list("name", flat=True)) == ["auditor"]
    call_command("create_user", "alice", "--role", "viewer")  # role change replaces the group
    assert list(user.groups.values_list("name", flat=True)) == ["viewer"]
    monkeypatch.setenv("SCOPE_USER_PASSWORD", "short")
    with pytest.raises(CommandError, match="password"):
        call_command("create_user", "bob", "--role", "operator")
    with pytest.raises(CommandError):
        call_command("create_user", "carol", "--role", "admin")


def test_replay_keeps_what_each_logged_request_needed(decisions: list[DecisionLog]) -> None:
    needy = decisions[:4]
    for row in needy:
        DecisionLog.objects.filter(pk=row.pk).update(
            explanation={**row.explanation, "request": {"required_capabilities": ["vision"]}}
        )
    result = policy_replay(
        policy=PolicySpec(slug="default", version=99, alpha=0.0), limit=50, source_policy="default"
    )
    assert result.replayed.mix.get("large", 0) >= 4  # the only vision model, whatever the alpha


def test_publishing_from_a_stale_editor_does_not_undo_a_version_published_meanwhile(
    persona: Any, decisions: list[DecisionLog]
) -> None:
    from routing.services.policies import policy_publish

    operator = persona("operator")
    page = operator.get("/policies/default/").content.decode()
    base = RoutingPolicy.objects.get(slug="default").current
    assert base is not None
    assert f'name="base_version" value="{base.version}"' in page  # the editor remembers where it started
    # while the operator edits, the pacing controller lowers α (the worker publishes a new version)
    paced = policy_publish(
        slug="default", strategy="hybrid", alpha=0.2, created_by="pacing", note="lowered α"
    )
    response = operator.post(
        "/policies/default/publish", _form(alpha="0.9", base_version=str(base.version), publish="1")
    )
    assert response.status_code == 400
    body = response.content.decode()
    assert f"v{paced.version} was published by pacing (lowered α) after the v{base.version}" in body
    current = RoutingPolicy.objects.get(slug="default").current
    assert current is not None and current.pk == paced.pk and current.alpha == 0.2

    # from the live version the edit goes through
    response = operator.post(
        "/policies/default/publish", _form(alpha="0.9", base_version=str(paced.version), publish="1")
    )
    assert response.status_code == 302
    current = RoutingPolicy.objects.get(slug="default").current
    assert current is not None and current.version == paced.version + 1 and current.alpha == 0.9


def test_an_editor_base_version_the_policy_never_had_is_a_400_not_a_500(
    persona: Any, decisions: list[DecisionLog]
) -> None:
    operator = persona("operator")
    live = RoutingPolicy.objects.get(slug="default").current
    assert live is not None
    response = operator.post(
        "/policies/default/publish", _form(alpha="0.9", base_version=str(live.version + 5), publish="1")
    )
    assert response.status_code == 400
    assert f"has no v{live.version + 5} to edit from" in response.content.decode()
    response = operator.post("/policies/brand-new/publish", _form(alpha="0.9", base_version="3", publish="1"))
    assert response.status_code == 400 and "has no v3 to edit from" in response.content.decode()
    assert not RoutingPolicy.objects.filter(slug="brand-new", current__isnull=False).exists()
