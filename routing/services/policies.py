"""Policy writes: every change publishes a new immutable PolicyVersion."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import validate_slug
from django.db import transaction

from routing.engine.conditions import ConditionError, validate_condition
from routing.engine.decide import tag_mismatch
from routing.engine.strategies import load_strategies
from routing.models import ControlAction, PolicyVersion, RoutingPolicy
from routing.selectors import catalog_invalidate
from routing.services.control_events import changes, control_event_record
from scope_site.errors import Conflict, InvalidRequest
from scope_site.lengths import check_lengths

RULE_ACTIONS = ("force", "exclude", "set_alpha")
VERSIONED_FIELDS = (
    "strategy",
    "alpha",
    "max_cost_usd",
    "max_latency_ms",
    "allowed_models",
    "denied_models",
    "required_capabilities",
    "required_tags",
    "rules",
    "options",
)


def validate_rules(rules: Any, known_models: set[str] | None = None) -> list[dict[str, Any]]:
    if not isinstance(rules, list):
        raise InvalidRequest("rules: must be a list")
    cleaned = []
    for index, rule in enumerate(rules):
        where = f"rules[{index}]"
        if not isinstance(rule, Mapping):
            raise InvalidRequest(f"{where}: must be an object with 'when' and 'then'")
        try:
            validate_condition(rule.get("when"), f"{where}.when")
        except ConditionError as exc:
            raise InvalidRequest(str(exc)) from None
        then = rule.get("then")
        if not isinstance(then, Mapping) or then.get("action") not in RULE_ACTIONS:
            raise InvalidRequest(f"{where}.then.action: must be one of {', '.join(RULE_ACTIONS)}")
        if then["action"] in {"force", "exclude"}:
            model = then.get("model")
            if not isinstance(model, str) or not model:
                raise InvalidRequest(f"{where}.then.model: required for {then['action']}")
            if known_models is not None and model not in known_models:
                raise InvalidRequest(f"{where}.then.model: unknown model {model!r}")
        else:
            alpha = then.get("alpha")
            if not isinstance(alpha, int | float) or not 0 <= alpha <= 1:
                raise InvalidRequest(f"{where}.then.alpha: must be a number in [0, 1]")
        cleaned.append(
            {"name": str(rule.get("name") or f"rule-{index + 1}"), "when": rule["when"], "then": dict(then)}
        )
    return cleaned


def _validate_options(options: Any, known_models: set[str] | None) -> None:
    """The options serving reads: refused at publish time rather than ignored when routing."""
    from routing.response_cache import cache_option_error
    from routing.services.pacing import spend_target_parse  # pacing publishes through this module

    if not isinstance(options, Mapping):
        raise InvalidRequest("options: must be an object")
    error = cache_option_error(options.get("cache"))
    if error:
        raise InvalidRequest(error)
    spend_target_parse(dict(options))  # raises InvalidRequest naming the key
    default = options.get("default_model")
    if default is not None:
        if not isinstance(default, str) or not default:
            raise InvalidRequest("options.default_model: must be a model name")
        if known_models is not None and default not in known_models:
            raise InvalidRequest(f"options.default_model: unknown model {default!r}")


def _check_some_model_fits(values: Mapping[str, Any]) -> None:
    """A policy no catalog model can satisfy would answer every request with 422: refuse it now."""
    from providers.models import LLMModel

    allowed, denied = set(values["allowed_models"]), set(values["denied_models"])
    both = sorted(allowed & denied)
    if both:
        raise InvalidRequest(f"denied_models: {', '.join(both)} also in allowed_models")
    rows = list(LLMModel.objects.values_list("name", "capabilities", "tags"))
    have = {c for _, caps, _ in rows for c in caps or ()}
    unknown = [c for c in values["required_capabilities"] if c not in have]
    if unknown:
        known = ", ".join(sorted(have)) or "none"
        raise InvalidRequest(
            f"required_capabilities: no model has {', '.join(unknown)} (models have: {known})"
        )

    def fits(name: str, caps: list[str], tags: Mapping[str, Any]) -> bool:
        if (allowed and name not in allowed) or name in denied:
            return False
        if any(c not in (caps or ()) for c in values["required_capabilities"]):
            return False
        return not tag_mismatch(tags or {}, values["required_tags"])  # the rule routing applies

    if rows and not any(fits(*row) for row in rows):
        raise InvalidRequest(
            "no model satisfies the allowed/denied models, required capabilities and tags together: "
            "every request would be refused (422)"
        )


# Copy lists and objects, but leave any other value as it came for _validate to refuse by name:
# list("gpt-4o") made six unknown one-letter models, dict(["eu"]) the tag {"e": "u"}.
def _list_or_as_is(value: Any) -> Any:
    return list(value) if isinstance(value, list | tuple) else value


def _dict_or_as_is(value: Any) -> Any:
    return {} if value is None else dict(value) if isinstance(value, Mapping) else value


def _check_finite(value: Any, where: str) -> None:
    """The versioned fields are stored (and hashed) as JSON, which has no NaN or Infinity: a YAML
    .nan in a rule's value failed the insert with an IntegrityError instead of naming the key."""
    if isinstance(value, float) and not math.isfinite(value):
        raise InvalidRequest(f"{where}: must be a finite number (got {value})")
    if isinstance(value, Mapping):
        for key, item in value.items():
            _check_finite(item, f"{where}.{key}")
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            _check_finite(item, f"{where}[{index}]")


def _validate(values: dict[str, Any], known_models: set[str] | None) -> dict[str, Any]:
    strategies = load_strategies(settings.SCOPE_EXTRA_STRATEGIES)
    if values["strategy"] not in strategies:
        raise InvalidRequest(
            f"strategy: unknown {values['strategy']!r} (known: {', '.join(sorted(strategies))})"
        )
    alpha = values["alpha"]
    if not isinstance(alpha, int | float) or isinstance(alpha, bool) or not 0 <= alpha <= 1:
        raise InvalidRequest("alpha: must be a number in [0, 1]")
    for limit in ("max_cost_usd", "max_latency_ms"):
        value = values[limit]
        if value is not None and (
            not isinstance(value, int | float) or isinstance(value, bool) or not 0 <= value < math.inf
        ):
            raise InvalidRequest(f"{limit}: must be a non-negative number")
    for field in ("required_tags", "rules", "options"):
        _check_finite(values[field], field)
    for name in ("allowed_models", "denied_models"):
        listed = values[name]
        if not isinstance(listed, list) or not all(isinstance(m, str) for m in listed):
            raise InvalidRequest(f"{name}: must be a list of model names")
        if known_models is not None:
            unknown = [m for m in listed if m not in known_models]
            if unknown:
                raise InvalidRequest(f"{name}: unknown model(s) {', '.join(unknown)}")
    if not isinstance(values["required_capabilities"], list) or not all(
        isinstance(c, str) for c in values["required_capabilities"]
    ):
        raise InvalidRequest("required_capabilities: must be a list of capability names")
    if not isinstance(values["required_tags"], Mapping):
        raise InvalidRequest("required_tags: must be an object")
    if known_models is not None:  # publishing against a catalog (UI, load_catalog)
        _check_some_model_fits(values)
    _validate_options(values["options"], known_models)
    values["rules"] = validate_rules(values["rules"], known_models)
    values["alpha"] = float(alpha)
    return values


def policy_publish(
    *,
    slug: str,
    name: str = "",
    description: str = "",
    strategy: str = "hybrid",
    alpha: float = 0.5,
    max_cost_usd: float | None = None,
    max_latency_ms: float | None = None,
    allowed_models: Sequence[str] = (),
    denied_models: Sequence[str] = (),
    required_capabilities: Sequence[str] = (),
    required_tags: Mapping[str, Any] | None = None,
    rules: Sequence[Mapping[str, Any]] = (),
    options: Mapping[str, Any] | None = None,
    created_by: str,
    note: str = "",
    known_models: set[str] | None = None,
    expected_version: int | None = None,
) -> PolicyVersion:
    """Create the policy if new; publish a new version if anything versioned changed; else no-op.

    `expected_version` is the version an editor started from: when another version went live
    meanwhile (the pacing controller, a promoted experiment, another operator), publishing would
    silently undo it, so it is a Conflict instead.

    `created_by` is the actor recorded on the version and in the control-plane activity log."""
    check_lengths(RoutingPolicy, "", slug=slug, name=name)  # load_catalog prefixes policies[<slug>]
    check_lengths(PolicyVersion, "", strategy=strategy, created_by=created_by, note=note)
    try:
        validate_slug(slug)
    except ValidationError:
        raise InvalidRequest(
            f"slug: {slug!r} is not a slug (letters, digits, hyphens and underscores)"
        ) from None
    values = _validate(
        {
            "strategy": strategy,
            "alpha": alpha,
            "max_cost_usd": max_cost_usd,
            "max_latency_ms": max_latency_ms,
            "allowed_models": _list_or_as_is(allowed_models),
            "denied_models": _list_or_as_is(denied_models),
            "required_capabilities": _list_or_as_is(required_capabilities),
            "required_tags": _dict_or_as_is(required_tags),
            "rules": _list_or_as_is(rules),
            "options": _dict_or_as_is(options),
        },
        known_models,
    )
    with transaction.atomic():
        policy, _ = RoutingPolicy.objects.get_or_create(slug=slug, defaults={"name": name or slug})
        # lock the policy row: two publishers must not both create version N+1
        policy = RoutingPolicy.objects.select_for_update().get(pk=policy.pk)
        if (name and policy.name != name) or (description and policy.description != description):
            policy.name = name or policy.name
            policy.description = description or policy.description
            policy.save(update_fields=["name", "description"])
        current = policy.current
        live = current.version if current is not None else 0
        if expected_version is not None and live != expected_version:
            if current is None or live < expected_version:  # not a version this policy ever had
                raise Conflict(
                    f"policy {slug!r} has no v{expected_version} to edit from (its live version is "
                    f"v{live}). Reload to edit the live version."
                )
            by = f" by {current.created_by}" if current.created_by else ""
            why = f" ({current.note})" if current.note else ""
            raise Conflict(
                f"policy {slug!r} changed while you edited it: v{live} was published{by}{why} after "
                f"the v{expected_version} you started from. Reload to edit the live version."
            )
        if current is not None and all(getattr(current, f) == values[f] for f in VERSIONED_FIELDS):
            return current
        version = PolicyVersion.objects.create(
            policy=policy,
            version=(current.version + 1) if current else 1,
            created_by=created_by,
            note=note,
            **values,
        )
        policy.current = version
        policy.save(update_fields=["current"])
        old = {f: getattr(current, f) for f in VERSIONED_FIELDS} if current is not None else {}
        control_event_record(
            actor=created_by,
            action=ControlAction.POLICY_PUBLISH,
            target=f"policy:{slug}",
            detail={
                "version": version.version,
                "previous_version": live or None,
                "changes": changes(old, values),
                "note": note,
            },
        )
        transaction.on_commit(catalog_invalidate)
    return version
