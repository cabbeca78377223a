"""A DecisionLog row as one line of PostgreSQL's COPY text format (what the group-commit writer takes).

The line is built in the web worker from the same column list the direct INSERT uses, so both
paths store identical values; the writer only concatenates lines and never parses them.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from functools import lru_cache
from typing import Any

from django.db import connection
from django.db.models import Field

from routing.models import DecisionLog

Encoder = Callable[[Any], bytes]


def _escape(text: bytes) -> bytes:
    # COPY text format: backslash, newline, carriage return and tab are the only specials (a
    # bytes.replace that finds nothing returns its input without copying it)
    return text.replace(b"\\", b"\\\\").replace(b"\n", b"\\n").replace(b"\r", b"\\r").replace(b"\t", b"\\t")


def _escape_json(text: bytes) -> bytes:
    # compact JSON holds no raw newline, carriage return or tab (inside strings JSON escapes them,
    # and these encoders put no whitespace between tokens): only its backslashes need escaping
    return text.replace(b"\\", b"\\\\")


def _json_encoder(field: Field[Any, Any]) -> Encoder:
    cls = getattr(field, "encoder", None)
    return lambda value: _escape_json(json.dumps(value, cls=cls).encode())


def _encoder(field: Field[Any, Any]) -> Encoder:
    kind = field.get_internal_type()
    if kind == "JSONField":
        return _json_encoder(field)
    if kind == "BooleanField":
        return lambda value: b"t" if value else b"f"
    if kind == "FloatField":
        return lambda value: repr(float(value)).encode()
    if kind == "DateTimeField":
        return lambda value: value.isoformat().encode()
    if kind in {
        "UUIDField",
        "PositiveIntegerField",
        "SmallIntegerField",
        "IntegerField",
        "BigIntegerField",
        "BigAutoField",
    }:
        return lambda value: str(value).encode()
    return lambda value: _escape(str(value).encode())  # text, varchar, and the text key of ApiKey


@lru_cache(maxsize=1)
def _columns() -> tuple[tuple[str, Encoder, bool], ...]:
    """(attname, encoder, is a JSON column) per concrete field, in table order."""
    fields = DecisionLog._meta.concrete_fields
    return tuple((str(f.attname), _encoder(f), f.get_internal_type() == "JSONField") for f in fields)


@lru_cache(maxsize=1)
def decision_copy_sql() -> str:
    columns = ", ".join(connection.ops.quote_name(str(f.column)) for f in DecisionLog._meta.concrete_fields)
    return f"COPY {connection.ops.quote_name(DecisionLog._meta.db_table)} ({columns}) FROM STDIN"


def decision_copy_column_count() -> int:
    return len(_columns())


def decision_copy_line(row: DecisionLog, json_utf8: Mapping[str, bytes] | None = None) -> bytes:
    """The row as one COPY text line ending in a newline (see decision_copy_values_line)."""
    return decision_copy_values_line(
        {attname: getattr(row, attname) for attname, _, _ in _columns()}, json_utf8
    )


def decision_copy_values_line(
    values: Mapping[str, Any], json_utf8: Mapping[str, bytes] | None = None
) -> bytes:
    """A row given as its column values (by attname, as a DecisionLog holds them) as one COPY text
    line ending in a newline.

    `json_utf8` may give a JSON column's text already encoded (routing.audit's canonical JSON, the
    text its row hash covers, UTF-8); other columns are encoded here. The line is built as bytes:
    one non-ASCII character anywhere made encoding a joined str cost more than building it.
    """
    texts = json_utf8 or {}
    cells = []
    for attname, encode, is_json in _columns():
        value = values[attname]
        if value is None:
            cells.append(b"\\N")
        elif is_json and attname in texts:
            cells.append(_escape_json(texts[attname]))
        else:
            cells.append(encode(value))
    return b"\t".join(cells) + b"\n"
