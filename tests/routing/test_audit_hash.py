"""The row hash built from per-field canonical texts is the row hash (the write path relies on it)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import pytest

from routing.audit import HASHED_FIELDS, decision_row_hash, decision_row_hash_texts, row_hash_from_texts

TRICKY = 'tab\t, newline\n, quote " backslash \\ é ✓ 😀 \u2028'


def _fields(**values: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {name: None for name in HASHED_FIELDS}
    fields.update(
        id=uuid.UUID("01900000-0000-7000-8000-000000000001"),
        created_at=datetime(2026, 11, 30, 1, 2, 3, 456789, tzinfo=UTC),
        candidates=[{"z": 1, "a": [0.1, 1e-07, 12345678.9, None, True]}],
        explanation={"b": {"é": TRICKY, "a": {}}, "a": []},
        metadata={"team": TRICKY},
    )
    fields.update(values)
    return fields


@pytest.mark.parametrize(
    "values",
    [
        {},
        {"alpha": 0.3, "policy_version": 7, "cache_hit": False, "user": TRICKY},
        {"features": {"ngrams": {"packed": "QUJD"}, "log_chars": 7.5}, "fallbacks": ["a", TRICKY]},
        {"metadata": {"nested": {"k2": 1, "k1": [{"y": 2, "x": 1}]}}, "kind": "chat"},
    ],
)
def test_hash_from_texts_equals_the_row_hash(values: dict[str, Any]) -> None:
    fields = _fields(**values)
    row_hash, texts = decision_row_hash_texts(fields)
    assert row_hash == decision_row_hash(fields)
    assert row_hash_from_texts(texts) == row_hash
    assert set(texts) == set(HASHED_FIELDS)


def test_any_field_change_changes_the_hash() -> None:
    base, _ = decision_row_hash_texts(_fields())
    for name, value in (("alpha", 0.31), ("metadata", {"team": "x"}), ("cache_hit", True)):
        assert decision_row_hash_texts(_fields(**{name: value}))[0] != base
