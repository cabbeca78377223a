"""Experiments: A/B splits of a policy's traffic between arms (each a policy + weight).

Writes (upsert from the catalog, stop, promote) own their transactions. Assignment runs on the
route path: it reads a per-process snapshot of running experiments (refreshed like the catalog,
every SCOPE_CATALOG_TTL_SECONDS) and hashes the unit, so it costs no query per request.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import validate_slug
from django.db import transaction
from django.utils import timezone

from routing.engine.types import PolicySpec
from routing.experiment_assignment import assignment_bucket, pick_arm
from routing.models import ControlAction, Experiment, ExperimentArm, ExperimentStatus, RoutingPolicy
from routing.selectors import policy_spec
from routing.services.control_events import changes, control_event_record
from routing.services.policies import VERSIONED_FIELDS, policy_publish
from scope_site.errors import Conflict, InvalidRequest, NotFound
from scope_site.lengths import check_lengths

EXPERIMENT_KEYS = {"name", "policy", "arms", "status", "description"}
ARM_KEYS = {"name", "policy", "weight"}


@dataclass(frozen=True, slots=True)
class Assignment:
    experiment: str
    arm: str
    policy_slug: str


@dataclass(frozen=True, slots=True)
class _Running:
    name: str
    arms: tuple[tuple[str, int], ...]
    arm_policies: Mapping[str, str]


@dataclass
class _Snapshot:
    loaded_at: float = 0.0
    by_policy: dict[str, _Running] | None = None


_snapshot = _Snapshot()


def experiments_invalidate() -> None:
    global _snapshot
    _snapshot = _Snapshot()


def _running_by_policy() -> dict[str, _Running]:
    global _snapshot
    ttl = float(settings.SCOPE_CATALOG_TTL_SECONDS)
    if _snapshot.by_policy is None or ttl <= 0 or time.monotonic() - _snapshot.loaded_at > ttl:
        by_policy: dict[str, _Running] = {}
        rows = (
            Experiment.objects.filter(status=ExperimentStatus.RUNNING)
            .select_related("policy")
            .prefetch_related("arms__policy")
        )
        for exp in rows:
            arms = sorted(exp.arms.all(), key=lambda a: a.name)
            if sum(a.weight for a in arms) > 0:
                by_policy[exp.policy.slug] = _Running(
                    name=exp.name,
                    arms=tuple((a.name, a.weight) for a in arms),
                    arm_policies={a.name: a.policy.slug for a in arms},
                )
        _snapshot = _Snapshot(loaded_at=time.monotonic(), by_policy=by_policy)
    assert _snapshot.by_policy is not None
    return _snapshot.by_policy


def experiment_assign(*, policy_slug: str, unit: str) -> Assignment | None:
    """The arm a request that would use `policy_slug` gets, sticky per unit; None when no experiment runs."""
    running = _running_by_policy().get(policy_slug)
    if running is None:
        return None
    arm = pick_arm(running.arms, assignment_bucket(running.name, unit))
    return Assignment(experiment=running.name, arm=arm, policy_slug=running.arm_policies[arm])


def assignment_unit(*, user: str, api_key_id: Any) -> str:
    """Sticky by the request's `user`, else by the API key; anonymous calls share one unit."""
    if user:
        return f"user:{user}"
    return f"key:{api_key_id}" if api_key_id is not None else "anonymous"


def _check_slug(field: str, value: Any) -> None:
    """Names are refused as written, never turned into another name: they salt the assignment hash
    and are what decisions, statistics and the activity log record."""
    if not isinstance(value, str):
        raise InvalidRequest(f"{field}: must be a string (got {value!r})")
    try:
        validate_slug(value)
    except ValidationError:
        raise InvalidRequest(
            f"{field}: {value!r} is not a slug (letters, digits, hyphens and underscores)"
        ) from None


def _clean_arms(name: str, arms: Any) -> list[dict[str, Any]]:
    if not isinstance(arms, list) or len(arms) < 2:
        raise InvalidRequest(f"experiments[{name}].arms: needs at least two arms")
    cleaned: list[dict[str, Any]] = []
    for index, arm in enumerate(arms):
        where = f"experiments[{name}].arms[{index}]"
        if not isinstance(arm, Mapping) or not isinstance(arm.get("policy"), str) or not arm["policy"]:
            raise InvalidRequest(f"{where}: must be a mapping with 'policy'")
        unknown = set(arm) - ARM_KEYS
        if unknown:
            raise InvalidRequest(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
        weight = arm.get("weight", 50)
        if not isinstance(weight, int) or isinstance(weight, bool) or weight < 0:
            raise InvalidRequest(f"{where}.weight: must be a non-negative integer")
        arm_name = arm["policy"] if arm.get("name") is None else arm["name"]  # unnamed: its policy's slug
        _check_slug(f"{where}.name", arm_name)
        check_lengths(ExperimentArm, where, name=arm_name)
        cleaned.append({"name": arm_name, "policy": arm["policy"], "weight": weight})
    names = [a["name"] for a in cleaned]
    if len(set(names)) != len(names):
        raise InvalidRequest(
            f"experiments[{name}].arms: arm names must be unique (name arms that share a policy)"
        )
    if sum(a["weight"] for a in cleaned) <= 0:
        raise InvalidRequest(f"experiments[{name}].arms: at least one weight must be positive")
    return cleaned


def experiment_upsert(
    *,
    name: str,
    policy: str,
    arms: Sequence[Mapping[str, Any]],
    status: str | None = None,
    description: str = "",
    actor: str,
) -> Experiment:
    """Create or update an experiment by name; arms are replaced when they differ. Idempotent."""
    if not isinstance(name, str):
        raise InvalidRequest(f"experiments.name: must be a string (got {name!r})")
    check_lengths(Experiment, f"experiments[{name[:100]}]", name=name)
    if not Experiment.objects.filter(
        name=name
    ).exists():  # one stored before names were checked stays editable
        _check_slug(f"experiments[{name}].name", name)
    cleaned = _clean_arms(name, arms)
    if status is not None and status not in ExperimentStatus.values:
        raise InvalidRequest(
            f"experiments[{name}].status: must be one of {', '.join(ExperimentStatus.values)}"
        )
    if (
        status == ExperimentStatus.PROMOTED
        and not Experiment.objects.filter(name=name, status=status).exists()
    ):
        # promoting picks a winner and publishes its settings: a bare status would do neither
        raise InvalidRequest(
            f"experiments[{name}].status: an experiment is promoted by choosing its winning arm "
            "(Promote on the experiments page), not by setting its status"
        )
    slugs = {policy} | {a["policy"] for a in cleaned}
    policies = {p.slug: p for p in RoutingPolicy.objects.filter(slug__in=slugs)}
    missing = sorted(slugs - set(policies))
    if missing:
        raise InvalidRequest(f"experiments[{name}]: unknown policy {', '.join(missing)}")
    with transaction.atomic():
        # the policy row lock orders concurrent upserts that could both start an experiment on it
        RoutingPolicy.objects.select_for_update().filter(pk=policies[policy].pk).first()
        if (status or "running") == ExperimentStatus.RUNNING and (
            Experiment.objects.filter(policy=policies[policy], status=ExperimentStatus.RUNNING)
            .exclude(name=name)
            .exists()
        ):
            raise Conflict(f"experiments[{name}]: another experiment already splits policy {policy!r}")
        experiment, created = Experiment.objects.select_for_update().get_or_create(
            name=name,
            defaults={"policy": policies[policy], "description": description, "status": status or "running"},
        )
        changed = created
        before = {"policy": experiment.policy.slug, "status": experiment.status}
        if not created:
            if experiment.policy_id != policies[policy].pk:
                experiment.policy = policies[policy]
                changed = True
            if description and experiment.description != description:
                experiment.description = description
                changed = True
            if status is not None and experiment.status != status:
                _check_status_change(experiment, status)
                experiment.status = status
                experiment.ended_at = None if status == ExperimentStatus.RUNNING else timezone.now()
                changed = True
        if changed:
            experiment.save()
        wanted = {(a["name"], policies[a["policy"]].pk, a["weight"]) for a in cleaned}
        have = set(experiment.arms.values_list("name", "policy_id", "weight"))
        arms_now = [
            f"{a['name']}={a['policy']}:{a['weight']}" for a in sorted(cleaned, key=lambda a: a["name"])
        ]
        if created:
            control_event_record(
                actor=actor,
                action=ControlAction.EXPERIMENT_CREATE,
                target=f"experiment:{name}",
                detail={"policy": policy, "status": experiment.status, "arms": arms_now},
            )
        elif changed or wanted != have:
            after = {"policy": policy, "status": experiment.status}
            detail: dict[str, Any] = {"changes": changes(before, after)}
            if wanted != have:
                detail["arms"] = arms_now
            control_event_record(
                actor=actor,
                action=ControlAction.EXPERIMENT_UPDATE,
                target=f"experiment:{name}",
                detail=detail,
            )
        if wanted != have:
            experiment.arms.all().delete()
            ExperimentArm.objects.bulk_create(
                ExperimentArm(experiment=experiment, name=n, policy_id=p, weight=w)
                for n, p, w in sorted(wanted)
            )
        transaction.on_commit(experiments_invalidate)
    return experiment


def _check_status_change(experiment: Experiment, status: str) -> None:
    """A stopped experiment may run again (its statistics continue); a promoted one is final: its
    winner's settings were published to the split policy, so re-running it would compare that
    policy with itself under the old arm names (and still show the old winner)."""
    if experiment.status == ExperimentStatus.PROMOTED:
        raise InvalidRequest(
            f"experiments[{experiment.name}].status: the experiment ended with arm "
            f"{experiment.winner!r} promoted and cannot be {status} again; declare a new "
            "experiment (another name), or drop 'status' / set it to promoted in the catalog"
        )


def experiments_load(items: list[Mapping[str, Any]], *, actor: str) -> int:
    """The catalog's `experiments:` section (registered in routing.services.catalog.SECTION_LOADERS)."""
    seen: set[str] = set()
    for index, item in enumerate(items):
        if not isinstance(item, Mapping) or not item.get("name") or not item.get("policy"):
            raise InvalidRequest(f"experiments[{index}]: must be a mapping with 'name', 'policy' and 'arms'")
        # checked, never str()-ed: YAML reads `name: 2024` as a number and `name: yes` as True
        if not isinstance(item["name"], str):
            raise InvalidRequest(f"experiments[{index}].name: must be a string (got {item['name']!r})")
        where = f"experiments[{item['name']}]"
        unknown = set(item) - EXPERIMENT_KEYS
        if unknown:
            raise InvalidRequest(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
        for key in ("policy", "description"):
            if item.get(key) is not None and not isinstance(item[key], str):
                raise InvalidRequest(f"{where}.{key}: must be a string (got {item[key]!r})")
        if item["name"] in seen:  # the second entry would silently overwrite the first
            raise InvalidRequest(f"{where}: listed twice")
        seen.add(item["name"])
        try:
            experiment_upsert(
                name=item["name"],
                policy=item["policy"],
                arms=item.get("arms") or [],
                status=item.get("status"),
                description=item.get("description") or "",
                actor=actor,
            )
        except Conflict as exc:
            raise InvalidRequest(exc.message) from None
    return len(items)


def _locked(experiment_id: int) -> Experiment:
    experiment = (
        Experiment.objects.select_for_update().select_related("policy").filter(pk=experiment_id).first()
    )
    if experiment is None:
        raise NotFound(f"Unknown experiment {experiment_id}", code="unknown_experiment")
    return experiment


def experiment_stop(*, experiment_id: int, actor: str) -> Experiment:
    """Stop splitting traffic: every request goes back to the experiment's own policy."""
    with transaction.atomic():
        experiment = _locked(experiment_id)
        if experiment.status != ExperimentStatus.RUNNING:
            raise Conflict(f"experiment {experiment.name!r} is already {experiment.status}")
        experiment.status = ExperimentStatus.STOPPED
        experiment.ended_at = timezone.now()
        experiment.save(update_fields=["status", "ended_at"])
        control_event_record(
            actor=actor,
            action=ControlAction.EXPERIMENT_STOP,
            target=f"experiment:{experiment.name}",
            detail={"policy": experiment.policy.slug, "status": ["running", "stopped"]},
        )
        transaction.on_commit(experiments_invalidate)
    return experiment


def experiment_promote(*, experiment_id: int, arm: str, actor: str) -> Experiment:
    """End the experiment with `arm` as the winner: the split policy takes the arm policy's settings."""
    with transaction.atomic():
        experiment = _locked(experiment_id)
        if experiment.status != ExperimentStatus.RUNNING:
            raise Conflict(f"experiment {experiment.name!r} is already {experiment.status}")
        winner = experiment.arms.select_related("policy__current").filter(name=arm).first()
        if winner is None:
            raise NotFound(f"experiment {experiment.name!r} has no arm {arm!r}", code="unknown_arm")
        source = winner.policy.current
        published = None
        if winner.policy_id != experiment.policy_id:
            if source is None:
                # its requests were served by the split policy (an unpublished arm policy cannot
                # route): promoting it would end the experiment with nothing published
                raise Conflict(
                    f"arm {arm!r} uses policy {winner.policy.slug!r}, which has no published version: "
                    "there are no settings to promote (publish the policy first, or stop the experiment)"
                )
            published = policy_publish(
                slug=experiment.policy.slug,
                created_by=actor,
                note=f"promoted arm {arm!r} of experiment {experiment.name!r} (policy {winner.policy.slug})",
                **{f: getattr(source, f) for f in VERSIONED_FIELDS},
            )
        experiment.status = ExperimentStatus.PROMOTED
        experiment.winner = arm
        experiment.ended_at = timezone.now()
        experiment.save(update_fields=["status", "winner", "ended_at"])
        control_event_record(
            actor=actor,
            action=ControlAction.EXPERIMENT_PROMOTE,
            target=f"experiment:{experiment.name}",
            detail={
                "arm": arm,
                "arm_policy": winner.policy.slug,
                "policy": experiment.policy.slug,
                "published_version": published.version if published is not None else None,
            },
        )
        transaction.on_commit(experiments_invalidate)
    return experiment


def experiment_policy(
    *, policy: PolicySpec, user: str, api_key_id: Any
) -> tuple[PolicySpec, Assignment | None]:
    """Route-path hook: the policy an experiment arm substitutes for `policy`, with the assignment."""
    assignment = experiment_assign(
        policy_slug=policy.slug, unit=assignment_unit(user=user, api_key_id=api_key_id)
    )
    if assignment is None:
        return policy, None
    arm_policy = policy if assignment.policy_slug == policy.slug else policy_spec(assignment.policy_slug)
    if arm_policy is None:  # the arm's policy vanished: serve the original, still record the arm
        return policy, assignment
    return arm_policy, assignment
