"""The row hash built from per-field canonical texts is the row hash (the write path relies on it)."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from routing.audit import (
    HASHED_FIELDS,
    canonical_text,
    decision_row_hash,
    decision_row_hash_texts,
    row_hash_from_texts,
)

GOLDEN_ROW_HASH = "175f246b77f8c3c704892b139a28da77981b3edef80f34f898a4798897b923f6"
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


_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**80), max_value=2**80),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(),
    st.uuids(),
    st.datetimes(timezones=st.just(UTC)),
)
_VALUES = st.recursive(
    _SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=5),
        st.tuples(inner, inner),
        st.dictionaries(st.text(), inner, max_size=5),
        st.dictionaries(st.integers(), inner, max_size=3),  # keys of one type: sort_keys compares them
    ),
    max_leaves=25,
)


@settings(max_examples=400, deadline=None)
@given(_VALUES)
def test_canonical_text_is_the_standard_encoders_text(value: Any) -> None:
    # canonical_text keeps one C encoder instead of json.dumps' per-call set-up: the text, and so
    # every row hash ever stored, must stay exactly what json.dumps with these options writes
    expected = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str, ensure_ascii=False)
    assert canonical_text(value) == expected


def test_a_known_row_still_hashes_to_its_recorded_hash() -> None:
    # recorded before canonical_text changed how it calls the encoder (2026-11-30): rows sealed
    # since the audit log began must keep verifying
    fields = _fields(alpha=0.3, policy_version=7, cache_hit=False, user=TRICKY, features={"log_chars": 7.5})
    assert decision_row_hash_texts(fields)[0] == GOLDEN_ROW_HASH
