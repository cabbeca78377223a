"""The Activity page's filters (the control-plane activity log)."""

from __future__ import annotations

from typing import Any

from django import forms
from django.utils import timezone

from routing.activity import MAX_LIMIT, ActivityFilters, action_choices
from routing.field_names import unknown_fields, unknown_fields_message


def _aware(value: Any) -> Any:
    if value is not None and timezone.is_naive(value):
        return timezone.make_aware(value)
    return value


class ActivityForm(forms.Form):
    action = forms.ChoiceField(required=False, choices=action_choices)
    actor = forms.CharField(required=False, max_length=150)
    target = forms.CharField(required=False, max_length=300)
    start = forms.DateTimeField(required=False, widget=forms.DateTimeInput(attrs={"type": "datetime-local"}))
    end = forms.DateTimeField(required=False, widget=forms.DateTimeInput(attrs={"type": "datetime-local"}))
    after = forms.RegexField(required=False, regex=r"^\d{1,18}$", widget=forms.HiddenInput)
    limit = forms.IntegerField(required=False, min_value=1, max_value=MAX_LIMIT, widget=forms.HiddenInput)

    def clean(self) -> dict[str, Any]:
        # a misspelt filter (?acter=…) would otherwise list every event
        unknown = unknown_fields(self.data, self.fields)
        if unknown:
            raise forms.ValidationError(unknown_fields_message(unknown, list(self.fields)))
        return super().clean() or {}

    def error_message(self) -> str:
        parts = []
        for name, errors in self.errors.items():
            text = " ".join(str(e) for e in errors)
            parts.append(text if name == "__all__" else f"{name}: {text}")
        return "; ".join(parts)

    def filters(self) -> ActivityFilters:
        data = self.cleaned_data
        return ActivityFilters(
            action=data.get("action") or "",
            actor=data.get("actor") or "",
            target=data.get("target") or "",
            start=_aware(data.get("start")),
            end=_aware(data.get("end")),
        )
