"""Row hashes: the per-field texts the write path hashes give the row hash of either format, format
1's text is json.dumps' and never changes, and values read back from their own JSON hash alike."""

from __future__ import annotations

import decimal
import io
import json
import math
import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from routing.audit import (
    HASH_FORMAT_JSON,
    HASH_FORMAT_ORJSON,
    HASHED_FIELDS,
    JSON_FIELDS,
    canonical_orjson,
    canonical_text,
    decision_row_hash,
    decision_row_hash_texts,
    jsonb_float,
    row_hash_from_texts,
)

GOLDEN_ROW_HASH = "175f246b77f8c3c704892b139a28da77981b3edef80f34f898a4798897b923f6"  # format 1
GOLDEN_ROW_HASH_ORJSON = "a35c43f2be330a14c5e353876388569999da7bcf74db9855e0f9a7ce14387606"  # format 2
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
    hash_format, row_hash, texts, _ = decision_row_hash_texts(fields)
    assert hash_format == HASH_FORMAT_ORJSON
    assert row_hash == decision_row_hash(fields, HASH_FORMAT_ORJSON)
    assert texts == {name: canonical_orjson(fields[name]) for name in JSON_FIELDS}
    # format 1, for rows written before format 2 and rows orjson refuses
    json_texts = {name: canonical_text(fields[name]) for name in HASHED_FIELDS}
    assert row_hash_from_texts(json_texts) == decision_row_hash(fields, HASH_FORMAT_JSON) != row_hash


def test_any_field_change_changes_the_hash() -> None:
    base = decision_row_hash_texts(_fields()).row_hash
    for name, value in (("alpha", 0.31), ("metadata", {"team": "x"}), ("cache_hit", True)):
        assert decision_row_hash_texts(_fields(**{name: value}))[1] != base


@pytest.mark.parametrize(
    ("metadata", "text"),
    [
        ({"big": 2**70}, '{"big":1180591620717411303424}'),  # orjson stops at 64 bits; JSON has no limit
        ({"n": {2: "b", 1: "a"}}, '{"n":{"1":"a","2":"b"}}'),  # keys that are not strings
    ],
)
def test_a_row_orjson_cannot_encode_is_hashed_in_format_1(metadata: dict[str, Any], text: str) -> None:
    fields = _fields(metadata=metadata)
    hash_format, row_hash, texts, _ = decision_row_hash_texts(fields)
    assert hash_format == HASH_FORMAT_JSON
    assert row_hash == decision_row_hash(fields, HASH_FORMAT_JSON)
    assert texts["metadata"] == text.encode()
    with pytest.raises(TypeError):
        decision_row_hash(fields, HASH_FORMAT_ORJSON)


def test_numpy_numbers_are_hashed_and_stored_as_numbers() -> None:
    fields = _fields(metadata={"f": np.float64(0.25), "i": np.int64(3), "flag": True})
    _, row_hash, texts, _ = decision_row_hash_texts(fields)
    assert texts["metadata"] == b'{"f":0.25,"flag":true,"i":3}'
    assert row_hash == decision_row_hash(_fields(metadata={"f": 0.25, "i": 3, "flag": True}), 2)


def test_json_fields_are_the_hashed_json_columns() -> None:
    from routing.models import DecisionLog

    columns = {f.name for f in DecisionLog._meta.concrete_fields if f.get_internal_type() == "JSONField"}
    assert set(JSON_FIELDS) == columns & set(HASHED_FIELDS) == columns


def test_an_unknown_hash_format_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown row hash format 3"):
        decision_row_hash(_fields(), 3)


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
    # format 1's was recorded before canonical_text changed how it calls the encoder (2026-11-30),
    # format 2's when it was introduced: rows sealed since the audit log began must keep verifying
    fields = _fields(alpha=0.3, policy_version=7, cache_hit=False, user=TRICKY, features={"log_chars": 7.5})
    assert decision_row_hash(fields, HASH_FORMAT_JSON) == GOLDEN_ROW_HASH
    assert decision_row_hash(fields, HASH_FORMAT_ORJSON) == GOLDEN_ROW_HASH_ORJSON
    assert decision_row_hash_texts(fields)[:2] == (HASH_FORMAT_ORJSON, GOLDEN_ROW_HASH_ORJSON)


@settings(max_examples=1000, deadline=None)
@given(st.datetimes(timezones=st.just(UTC)), st.datetimes())
def test_a_datetime_is_hashed_as_its_str_in_format_2(utc: datetime, naive: datetime) -> None:
    # a UTC datetime's text comes from orjson's RFC 3339 writer instead of str(): it must stay str's
    for value in (utc, naive, utc.astimezone(timezone(timedelta(hours=-3, seconds=7)))):
        assert canonical_orjson(value) == canonical_orjson([value])[1:-1] == json.dumps(str(value)).encode()


def jsonb_float_value(value: float) -> float | int:
    return jsonb_float(repr(value))


_UTF8_TEXT = st.text(st.characters(codec="utf-8"))  # no lone surrogates: UTF-8 cannot hold them
_STORABLE = st.recursive(  # what a JSON column can hold: no NaN, infinities or lone surrogates
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(min_value=-(2**63), max_value=2**64 - 1),
        st.integers(min_value=-(2**80), max_value=2**80),  # beyond orjson: the row goes to format 1
        # numbers as a row gets them: the caller's read by the API's parser (jsonb_float), SCOPE's
        # own below 1e16, -0.0 included (a product with a zero)
        st.floats(allow_nan=False, allow_infinity=False).map(jsonb_float_value),
        st.floats(allow_nan=False, allow_infinity=False, min_value=-1e15, max_value=1e15),
        st.sampled_from([-0.0, 1e-7, 100.0, 2.5e-07, 1e15]),
        _UTF8_TEXT,
    ),
    lambda inner: st.one_of(st.lists(inner, max_size=5), st.dictionaries(_UTF8_TEXT, inner, max_size=5)),
    max_leaves=25,
)


def test_the_api_reads_numbers_as_jsonb_gives_them_back() -> None:
    from scope_site.parsers import JSONParser

    body = b'{"a": [-0.0, 1e16, -1.5e300, 0.1, 2.5e-7, 100.0, -0, 7], "b": 1.2345678901234568e+17}'
    parsed = JSONParser().parse(io.BytesIO(body))
    assert parsed == _through_jsonb(body.decode())
    assert [type(v) for v in parsed["a"]] == [float, int, int, float, float, float, int, int]
    assert math.copysign(1.0, parsed["a"][0]) == 1.0


def _jsonb_number(literal: str) -> float | int:
    """What PostgreSQL's jsonb gives back for a JSON number, once parsed: it keeps numeric, printed
    with the literal's scale (so 1e16 has none and reads back as an integer) and no negative zero."""
    number = decimal.Decimal(literal)
    exponent = number.as_tuple().exponent
    assert isinstance(exponent, int)
    return int(number) if exponent >= 0 else float(number) + 0.0  # + 0.0: -0.0 becomes 0.0


def _through_jsonb(text: str) -> Any:
    return json.loads(text, parse_float=_jsonb_number, parse_int=int)


def test_the_jsonb_model_matches_postgresql_on_the_cases_it_was_checked_against() -> None:
    # psql: SELECT '[1e16, -0.0, 1e-7, 100.0, 1.5e300]'::jsonb printed these
    checked = "[10000000000000000, 0.0, 0.0000001, 100.0, 15" + "0" * 299 + "]"
    assert _through_jsonb("[1e16, -0.0, 1e-7, 100.0, 1.5e300]") == json.loads(checked)


@settings(max_examples=500, deadline=None)
@given(_STORABLE, st.datetimes(timezones=st.just(UTC)), st.uuids())
def test_values_read_back_from_jsonb_verify(value: Any, created: datetime, row_id: uuid.UUID) -> None:
    # what verification relies on: a JSON column stores the hashed text, and the value PostgreSQL
    # gives back (jsonb's numbers, tuples as lists) encodes to the same bytes in the row's format
    fields = _fields(id=row_id, created_at=created, metadata={"v": value}, candidates=[value])
    hash_format, row_hash, texts, _ = decision_row_hash_texts(fields)
    read_back = {**fields, **{name: _through_jsonb(texts[name].decode()) for name in JSON_FIELDS}}
    assert decision_row_hash(read_back, hash_format) == row_hash


@pytest.mark.parametrize(
    ("value", "walked"),
    [
        (-0.0, True),
        ([1, -0.0], True),
        ({"a": -0.0}, True),
        ({"u": -0.033, "v": [-0.05]}, False),
        ("x", False),
    ],
)
def test_only_a_negative_zero_makes_the_field_walked(value: Any, walked: bool) -> None:
    row = decision_row_hash_texts(_fields(metadata={"v": value}, candidates=value))
    assert bool(row.jsonb_values) == walked
    assert b"-0.0," not in row.json_utf8["metadata"] and b"-0.0}" not in row.json_utf8["metadata"]
