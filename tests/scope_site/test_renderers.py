"""The orjson renderer answers what DRF's JSONRenderer would, byte for byte where it matters."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from decimal import Decimal

from django.utils.translation import gettext_lazy
from rest_framework.renderers import JSONRenderer

from scope_site.renderers import OrjsonRenderer

DATA = {
    "when": datetime(2026, 11, 30, 1, 2, 3, 456789, tzinfo=UTC),
    "id": uuid.UUID("01900000-0000-7000-8000-000000000001"),
    "price": Decimal("0.125"),
    "lazy": gettext_lazy("This field is required."),
    "text": 'é ✓ 😀 "quoted" \n',
    "nested": {"b": [1, 2.5, None, True], "a": {}},
    "small": 2.7e-05,
}


def test_it_matches_drf_json_renderer() -> None:
    ours = OrjsonRenderer().render(DATA)
    theirs = JSONRenderer().render(DATA)
    assert json.loads(ours) == json.loads(theirs)
    assert json.loads(ours)["when"] == "2026-11-30T01:02:03.456789Z"  # DRF's format, not orjson's +00:00
    assert "é ✓ 😀".encode() in ours  # UTF-8, not \\u escapes, as DRF's default


def test_none_renders_empty_and_indent_is_honoured() -> None:
    assert OrjsonRenderer().render(None) == b""
    indented = OrjsonRenderer().render({"a": 1}, "application/json; indent=2")
    assert indented == JSONRenderer().render({"a": 1}, "application/json; indent=2")
    assert b"\n" in indented
