from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest

from routing.experiment_assignment import assignment_bucket, pick_arm
from routing.models import DecisionLog, Experiment, ExperimentStatus, RoutingPolicy
from routing.services.catalog import catalog_load
from routing.services.experiments import (
    experiment_assign,
    experiment_promote,
    experiment_stop,
    experiment_upsert,
)
from scope_site.errors import Conflict, InvalidRequest
from tests.conftest import USER_MESSAGE
from tests.factories import make_policy

ARMS: list[dict[str, Any]] = [{"policy": "default", "weight": 50}, {"policy": "cheap", "weight": 50}]


def test_assignment_splits_ten_thousand_users_fifty_fifty() -> None:
    arms = [("control", 50), ("treatment", 50)]
    counts = Counter(pick_arm(arms, assignment_bucket("exp", f"user-{i}")) for i in range(10_000))
    # binomial sd is 50 requests: ±150 is three sd
    assert abs(counts["control"] - 5_000) <= 150, counts


def test_assignment_follows_unequal_weights_and_never_picks_a_zero_weight_arm() -> None:
    arms = [("a", 70), ("b", 30), ("off", 0)]
    counts = Counter(pick_arm(arms, assignment_bucket("exp2", f"u{i}")) for i in range(10_000))
    assert abs(counts["a"] - 7_000) <= 140, counts  # 3 sd ≈ 137
    assert counts["off"] == 0


def test_assignment_is_sticky_per_user_and_independent_across_experiments() -> None:
    arms = [("a", 50), ("b", 50)]
    first = [pick_arm(arms, assignment_bucket("exp", f"u{i}")) for i in range(2_000)]
    again = [pick_arm(arms, assignment_bucket("exp", f"u{i}")) for i in range(2_000)]
    other = [pick_arm(arms, assignment_bucket("other-exp", f"u{i}")) for i in range(2_000)]
    assert first == again
    agreement = sum(x == y for x, y in zip(first, other, strict=True)) / 2_000
    assert 0.45 < agreement < 0.55  # salted by experiment name: unrelated splits


@pytest.fixture
def two_policies(catalog: Any) -> None:
    make_policy("cheap", strategy="pre_inference", alpha=0.05)


@pytest.mark.django_db
def test_an_experiment_declared_in_the_catalog_splits_route_traffic_sticky_per_user(
    two_policies: None, api: Callable[..., Any]
) -> None:
    result = catalog_load(
        actor="test", data={"experiments": [{"name": "alpha-test", "policy": "default", "arms": ARMS}]}
    )
    assert result.counts["experiments"] == 1
    arms_by_user: dict[str, str] = {}
    for i in range(60):
        body = api(
            "/api/v1/route", {"messages": USER_MESSAGE("Explain TCP slow start."), "user": f"u{i}"}
        ).json()
        assert body["experiment"]["name"] == "alpha-test"
        assert body["policy"]["slug"] == body["experiment"]["arm"]  # arms are named after their policy
        arms_by_user[f"u{i}"] = body["experiment"]["arm"]
    for i in range(0, 60, 7):  # the same user always lands in the same arm
        body = api("/api/v1/route", {"messages": USER_MESSAGE("Another question"), "user": f"u{i}"}).json()
        assert body["experiment"]["arm"] == arms_by_user[f"u{i}"]
    counts = Counter(arms_by_user.values())
    assert set(counts) == {"default", "cheap"} and min(counts.values()) >= 18  # 60 users: sd ≈ 3.9
    logged = Counter(DecisionLog.objects.filter(experiment="alpha-test").values_list("arm", flat=True))
    assert sum(logged.values()) == 60 + len(range(0, 60, 7))


@pytest.mark.django_db
def test_without_user_the_api_key_is_the_sticky_unit(two_policies: None, api: Callable[..., Any]) -> None:
    experiment_upsert(actor="test", name="by-key", policy="default", arms=ARMS)
    arms = {
        api("/api/v1/route", {"messages": USER_MESSAGE(f"q{i}")}).json()["experiment"]["arm"]
        for i in range(10)
    }
    assert len(arms) == 1


@pytest.mark.django_db
def test_loading_the_same_catalog_twice_changes_nothing(two_policies: None) -> None:
    data = {"experiments": [{"name": "alpha-test", "policy": "default", "arms": ARMS}]}
    catalog_load(actor="test", data=data)
    arm_ids = sorted(Experiment.objects.get().arms.values_list("pk", flat=True))
    catalog_load(actor="test", data=data)
    assert sorted(Experiment.objects.get().arms.values_list("pk", flat=True)) == arm_ids
    data["experiments"][0]["arms"] = [{"policy": "default", "weight": 80}, {"policy": "cheap", "weight": 20}]
    catalog_load(actor="test", data=data)
    assert dict(Experiment.objects.get().arms.values_list("name", "weight")) == {"default": 80, "cheap": 20}


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("item", "message"),
    [
        ({"name": "x", "policy": "default", "arms": [{"policy": "default"}]}, "at least two arms"),
        (
            {"name": "x", "policy": "default", "arms": [{"policy": "default"}, {"policy": "nope"}]},
            "unknown policy",
        ),
        (
            {"name": "x", "policy": "default", "arms": [{"policy": "default"}, {"policy": "default"}]},
            "unique",
        ),
        (
            {
                "name": "x",
                "policy": "default",
                "arms": [{"policy": "default", "weight": -1}, {"policy": "cheap"}],
            },
            "weight",
        ),
        ({"name": "x", "policy": "default", "arms": ARMS, "colour": "red"}, "unknown key"),
        ({"policy": "default", "arms": ARMS}, "must be a mapping with 'name'"),
        # names are refused as written, never changed into another name (str(), stripped, lowered)
        ({"name": 2024, "policy": "default", "arms": ARMS}, r"experiments\[0\]\.name: must be a string"),
        ({"name": True, "policy": "default", "arms": ARMS}, r"experiments\[0\]\.name: must be a string"),
        ({"name": " spring ", "policy": "default", "arms": ARMS}, r"name: ' spring ' is not a slug"),
        ({"name": "Spring test", "policy": "default", "arms": ARMS}, r"name: 'Spring test' is not a slug"),
        ({"name": "x", "policy": ["default"], "arms": ARMS}, r"experiments\[x\]\.policy: must be a string"),
        (
            {"name": "x", "policy": "default", "arms": ARMS, "description": 5},
            r"description: must be a string",
        ),
        (
            {
                "name": "x",
                "policy": "default",
                "arms": [{"policy": "default", "name": 1}, {"policy": "cheap"}],
            },
            r"experiments\[x\]\.arms\[0\]\.name: must be a string",
        ),
        (
            {
                "name": "x",
                "policy": "default",
                "arms": [{"policy": "default", "name": "arm A"}, {"policy": "cheap"}],
            },
            r"experiments\[x\]\.arms\[0\]\.name: 'arm A' is not a slug",
        ),
    ],
)
def test_the_catalog_rejects_a_bad_experiment(two_policies: None, item: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidRequest, match=message):
        catalog_load(actor="test", data={"experiments": [item]})
    assert not Experiment.objects.exists()


@pytest.mark.django_db
def test_the_catalog_refuses_an_experiment_listed_twice(two_policies: None) -> None:
    item = {"name": "x", "policy": "default", "arms": ARMS}
    with pytest.raises(InvalidRequest, match=r"experiments\[x\]: listed twice"):
        catalog_load(actor="test", data={"experiments": [item, {**item, "status": "stopped"}]})
    assert not Experiment.objects.exists()


@pytest.mark.django_db
def test_the_service_refuses_a_name_that_is_not_a_slug(two_policies: None) -> None:
    with pytest.raises(InvalidRequest, match="is not a slug"):
        experiment_upsert(actor="test", name="alpha test", policy="default", arms=ARMS)
    assert not Experiment.objects.exists()


@pytest.mark.django_db
def test_an_experiment_stored_before_names_were_checked_stays_editable(two_policies: None) -> None:
    legacy = Experiment.objects.create(name="Spring test", policy=RoutingPolicy.objects.get(slug="default"))
    item = {"name": "Spring test", "policy": "default", "arms": ARMS, "status": "stopped"}
    catalog_load(actor="test", data={"experiments": [item]})
    legacy.refresh_from_db()
    assert legacy.status == ExperimentStatus.STOPPED and legacy.arms.count() == 2


@pytest.mark.django_db
def test_only_one_experiment_may_split_a_policy(two_policies: None) -> None:
    experiment_upsert(actor="test", name="first", policy="default", arms=ARMS)
    with pytest.raises(Conflict):
        experiment_upsert(actor="test", name="second", policy="default", arms=ARMS)
    with pytest.raises(InvalidRequest, match="already splits"):
        catalog_load(
            actor="test", data={"experiments": [{"name": "second", "policy": "default", "arms": ARMS}]}
        )


@pytest.mark.django_db
def test_a_stopped_experiment_no_longer_assigns(two_policies: None, api: Callable[..., Any]) -> None:
    experiment = experiment_upsert(actor="test", name="alpha-test", policy="default", arms=ARMS)
    assert experiment_assign(policy_slug="default", unit="user:u1") is not None
    experiment_stop(actor="test", experiment_id=experiment.pk)
    assert experiment_assign(policy_slug="default", unit="user:u1") is None
    body = api("/api/v1/route", {"messages": USER_MESSAGE("hello"), "user": "u1"}).json()
    assert body["experiment"] is None and body["policy"]["slug"] == "default"
    with pytest.raises(Conflict):
        experiment_stop(actor="test", experiment_id=experiment.pk)


@pytest.mark.django_db
def test_promoting_an_arm_gives_the_split_policy_the_arms_settings(two_policies: None) -> None:
    experiment = experiment_upsert(actor="test", name="alpha-test", policy="default", arms=ARMS)
    before = RoutingPolicy.objects.get(slug="default").current
    assert before is not None and before.alpha == 0.5
    promoted = experiment_promote(experiment_id=experiment.pk, arm="cheap", actor="ops")
    assert (promoted.status, promoted.winner) == (ExperimentStatus.PROMOTED, "cheap")
    after = RoutingPolicy.objects.get(slug="default").current
    assert after is not None and after.version == before.version + 1
    assert (after.alpha, after.strategy) == (0.05, "pre_inference")
    assert "alpha-test" in after.note
    assert experiment_assign(policy_slug="default", unit="user:u1") is None


@pytest.mark.django_db
def test_operators_stop_an_experiment_and_refresh_its_stats_from_the_admin(
    two_policies: None, admin_client: Any
) -> None:
    experiment = experiment_upsert(actor="test", name="alpha-test", policy="default", arms=ARMS)
    url = "/admin/routing/experiment/"
    response = admin_client.post(url, {"action": "refresh_statistics", "_selected_action": [experiment.pk]})
    assert response.status_code == 302
    experiment.refresh_from_db()
    assert experiment.stats["total_requests"] == 0 and experiment.stats_updated_at is not None
    admin_client.post(url, {"action": "stop_experiments", "_selected_action": [experiment.pk]})
    experiment.refresh_from_db()
    assert experiment.status == ExperimentStatus.STOPPED


@pytest.mark.django_db
def test_a_promoted_experiment_is_final_even_when_the_catalog_says_running(two_policies: None) -> None:
    data = {"experiments": [{"name": "alpha-test", "policy": "default", "status": "running", "arms": ARMS}]}
    catalog_load(actor="test", data=data)
    experiment = Experiment.objects.get()
    experiment_promote(actor="test", experiment_id=experiment.pk, arm="cheap")
    # the next deploy loads the same catalog file
    with pytest.raises(InvalidRequest, match="promoted and cannot be running again"):
        catalog_load(actor="test", data=data)
    experiment.refresh_from_db()
    assert (experiment.status, experiment.winner) == (ExperimentStatus.PROMOTED, "cheap")
    assert experiment.ended_at is not None
    assert experiment_assign(policy_slug="default", unit="user:u1") is None
    # the catalog may say what happened, or say nothing about the status
    data["experiments"][0]["status"] = "promoted"
    catalog_load(actor="test", data=data)
    del data["experiments"][0]["status"]
    catalog_load(actor="test", data=data)
    assert Experiment.objects.get().status == ExperimentStatus.PROMOTED


@pytest.mark.django_db
def test_a_stopped_experiment_may_run_again_from_the_catalog(two_policies: None) -> None:
    experiment = experiment_upsert(actor="test", name="alpha-test", policy="default", arms=ARMS)
    experiment_stop(actor="test", experiment_id=experiment.pk)
    experiment_upsert(actor="test", name="alpha-test", policy="default", arms=ARMS, status="running")
    experiment.refresh_from_db()
    assert experiment.status == ExperimentStatus.RUNNING and experiment.ended_at is None


@pytest.mark.django_db
def test_the_catalog_cannot_mark_an_experiment_promoted_without_a_winner(two_policies: None) -> None:
    experiment_upsert(actor="test", name="alpha-test", policy="default", arms=ARMS)
    with pytest.raises(InvalidRequest, match="choosing its winning arm"):
        experiment_upsert(actor="test", name="alpha-test", policy="default", arms=ARMS, status="promoted")
    with pytest.raises(InvalidRequest, match="choosing its winning arm"):
        experiment_upsert(actor="test", name="beta-test", policy="cheap", arms=ARMS, status="promoted")
    assert Experiment.objects.get().status == ExperimentStatus.RUNNING
    assert RoutingPolicy.objects.get(slug="default").current.version == 1  # type: ignore[union-attr]


@pytest.mark.django_db
def test_the_admin_cannot_change_an_experiments_state_or_arms(two_policies: None, admin_client: Any) -> None:
    experiment = experiment_upsert(actor="test", name="alpha-test", policy="default", arms=ARMS)
    change = f"/admin/routing/experiment/{experiment.pk}/change/"
    page = admin_client.get(change).content.decode()
    assert 'name="status"' not in page and 'name="winner"' not in page and 'name="arms-0-weight"' not in page
    response = admin_client.post(
        change,
        {
            "status": "promoted",
            "winner": "cheap",
            "description": "noted",
            "arms-TOTAL_FORMS": "2",
            "arms-INITIAL_FORMS": "2",
            "arms-MIN_NUM_FORMS": "0",
            "arms-MAX_NUM_FORMS": "1000",
        },
    )
    assert response.status_code in {200, 302}
    experiment.refresh_from_db()
    assert (experiment.status, experiment.winner) == (ExperimentStatus.RUNNING, "")
    assert admin_client.get("/admin/routing/experiment/add/").status_code == 403


@pytest.mark.django_db
def test_an_arm_whose_policy_was_never_published_cannot_be_promoted(two_policies: None) -> None:
    RoutingPolicy.objects.create(slug="draft", name="draft")
    experiment = experiment_upsert(
        actor="test", name="draft-test", policy="default", arms=[{"policy": "default"}, {"policy": "draft"}]
    )
    with pytest.raises(Conflict, match="no published version"):
        experiment_promote(actor="test", experiment_id=experiment.pk, arm="draft")
    experiment.refresh_from_db()
    assert experiment.status == ExperimentStatus.RUNNING and experiment.winner == ""
