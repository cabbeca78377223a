"""Forms: the policy editor (publish / what-if replay) and the decisions explorer filters."""

from __future__ import annotations

import json
from typing import Any

from django import forms
from django.utils import timezone

from routing.dashboard.decisions import OUTCOME_CHOICES, DecisionFilters
from routing.dashboard.replay import MAX_REPLAY
from routing.engine.conditions import ConditionError, validate_condition
from routing.engine.types import PolicySpec, Rule
from routing.field_names import unknown_fields, unknown_fields_message
from routing.models import PolicyVersion
from routing.services.policies import validate_rules
from routing.services.route import strategies
from scope_site.errors import InvalidRequest

JSON_WIDGET = forms.Textarea(attrs={"rows": 8, "spellcheck": "false", "class": "code"})


class JSONText(forms.CharField):
    def __init__(self, *, kind: type, **kwargs: Any) -> None:
        self.kind = kind
        super().__init__(required=False, widget=JSON_WIDGET, **kwargs)

    def to_python(self, value: Any) -> Any:
        text = (super().to_python(value) or "").strip()
        if not text:
            return self.kind()
        try:
            parsed = json.loads(text)
        except json.JSONDecodeError as exc:
            raise forms.ValidationError(
                f"not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})"
            ) from None
        if not isinstance(parsed, self.kind):
            raise forms.ValidationError(f"must be a JSON {'list' if self.kind is list else 'object'}")
        return parsed

    def prepare_value(self, value: Any) -> Any:
        if isinstance(value, list | dict):
            return json.dumps(value, indent=2)
        return value


def _names(text: str) -> list[str]:
    return [part.strip() for part in text.replace("\n", ",").split(",") if part.strip()]


class PolicyForm(forms.Form):
    strategy = forms.ChoiceField()
    alpha = forms.FloatField(min_value=0.0, max_value=1.0, help_text="0 = cheapest … 1 = best quality")
    max_cost_usd = forms.FloatField(required=False, min_value=0.0, label="Max cost per request (USD)")
    max_latency_ms = forms.FloatField(required=False, min_value=0.0, label="Max latency (ms)")
    allowed_models = forms.MultipleChoiceField(required=False, widget=forms.CheckboxSelectMultiple)
    denied_models = forms.MultipleChoiceField(required=False, widget=forms.CheckboxSelectMultiple)
    required_capabilities = forms.CharField(required=False, help_text="comma separated, e.g. json, tools")
    required_tags = JSONText(kind=dict, help_text='e.g. {"region": "eu"} or {"region": ["eu", "ch"]}')
    rules = JSONText(
        kind=list,
        help_text='[{"name": "…", "when": {"feature": "code_signal", "op": ">=", "value": 3}, '
        '"then": {"action": "force|exclude|set_alpha", "model": "…"}}]',
    )
    options = JSONText(kind=dict)
    note = forms.CharField(required=False, max_length=300)
    # the version the editor started from: publishing refuses when another one went live meanwhile
    base_version = forms.IntegerField(required=False, min_value=0, widget=forms.HiddenInput)
    replay_limit = forms.IntegerField(min_value=1, max_value=MAX_REPLAY, initial=500, label="Replay the last")
    replay_scope = forms.ChoiceField(
        choices=[("policy", "decisions of this policy"), ("all", "decisions of every policy")],
        initial="policy",
    )

    def __init__(self, *args: Any, models: list[str], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.known_models = set(models)
        choices = [(m, m) for m in models]
        self.fields["allowed_models"].choices = choices  # type: ignore[attr-defined]
        self.fields["denied_models"].choices = choices  # type: ignore[attr-defined]
        self.fields["strategy"].choices = [(s, s) for s in sorted(strategies())]  # type: ignore[attr-defined]
        for name, rows in (("rules", 14), ("required_tags", 2), ("options", 3)):
            self.fields[name].widget.attrs["rows"] = rows

    @staticmethod
    def initial_from(version: PolicyVersion | None) -> dict[str, Any]:
        if version is None:
            return {"strategy": "hybrid", "alpha": 0.5, "replay_limit": 500, "replay_scope": "policy"}
        return {
            "strategy": version.strategy,
            "alpha": version.alpha,
            "max_cost_usd": version.max_cost_usd,
            "max_latency_ms": version.max_latency_ms,
            "allowed_models": version.allowed_models,
            "denied_models": version.denied_models,
            "required_capabilities": ", ".join(version.required_capabilities or []),
            "required_tags": version.required_tags,
            "rules": version.rules,
            "options": version.options,
            "base_version": version.version,
            "replay_limit": 500,
            "replay_scope": "policy",
        }

    def clean_required_capabilities(self) -> list[str]:
        return _names(self.cleaned_data.get("required_capabilities") or "")

    def clean_rules(self) -> list[dict[str, Any]]:
        try:
            return validate_rules(self.cleaned_data.get("rules") or [], self.known_models)
        except InvalidRequest as exc:
            raise forms.ValidationError(exc.message) from None

    def policy_values(self) -> dict[str, Any]:
        """The versioned fields, as policy_publish takes them."""
        data = self.cleaned_data
        return {
            "strategy": data["strategy"],
            "alpha": data["alpha"],
            "max_cost_usd": data.get("max_cost_usd"),
            "max_latency_ms": data.get("max_latency_ms"),
            "allowed_models": list(data.get("allowed_models") or []),
            "denied_models": list(data.get("denied_models") or []),
            "required_capabilities": data.get("required_capabilities") or [],
            "required_tags": data.get("required_tags") or {},
            "rules": data.get("rules") or [],
            "options": data.get("options") or {},
        }

    def spec(self, *, slug: str, version: int) -> PolicySpec:
        """The edited, unpublished policy as the engine sees it (for what-if replay)."""
        v = self.policy_values()
        rules = []
        for i, r in enumerate(v["rules"]):
            try:
                validate_condition(r["when"])
            except ConditionError as exc:  # already validated; kept as a guard
                raise InvalidRequest(str(exc)) from None
            then = r.get("then", {})
            rules.append(
                Rule(
                    name=str(r.get("name", f"rule-{i + 1}")),
                    when=r["when"],
                    action=then.get("action", ""),
                    model=then.get("model", ""),
                    alpha=then.get("alpha"),
                )
            )
        return PolicySpec(
            slug=slug,
            version=version,
            strategy=v["strategy"],
            alpha=float(v["alpha"]),
            max_cost_usd=v["max_cost_usd"],
            max_latency_ms=v["max_latency_ms"],
            allowed_models=tuple(v["allowed_models"]),
            denied_models=tuple(v["denied_models"]),
            required_capabilities=tuple(v["required_capabilities"]),
            required_tags=dict(v["required_tags"]),
            rules=tuple(rules),
            options=dict(v["options"]),
        )


class ExplorerForm(forms.Form):
    start = forms.DateTimeField(required=False, widget=forms.DateTimeInput(attrs={"type": "datetime-local"}))
    end = forms.DateTimeField(required=False, widget=forms.DateTimeInput(attrs={"type": "datetime-local"}))
    key = forms.CharField(required=False, max_length=50, label="API key")
    model = forms.CharField(required=False, max_length=200)
    policy = forms.CharField(required=False, max_length=100)
    experiment = forms.CharField(required=False, max_length=100)
    outcome = forms.ChoiceField(
        required=False, choices=[(c, c or "any") for c in OUTCOME_CHOICES[:-1]] + [("none", "no outcome")]
    )
    after = forms.CharField(required=False, max_length=120, widget=forms.HiddenInput)

    def clean(self) -> dict[str, Any]:
        # a misspelt filter (?modle=…) would otherwise list, or export, every decision
        unknown = unknown_fields(self.data, self.fields)
        if unknown:
            raise forms.ValidationError(unknown_fields_message(unknown, list(self.fields)))
        return super().clean() or {}

    def filters(self) -> DecisionFilters:
        data = self.cleaned_data

        def aware(value: Any) -> Any:
            if value is not None and timezone.is_naive(value):
                return timezone.make_aware(value)
            return value

        return DecisionFilters(
            start=aware(data.get("start")),
            end=aware(data.get("end")),
            key=data.get("key") or "",
            model=data.get("model") or "",
            policy=data.get("policy") or "",
            experiment=data.get("experiment") or "",
            outcome=data.get("outcome") or "",
        )
