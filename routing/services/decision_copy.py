"""A DecisionLog row as one line of PostgreSQL's COPY text format (what the group-commit writer takes).

The line is built in the web worker from the same column list the direct INSERT uses, so both
paths store identical values. The writer splits it back into its cells' texts
(decision_writer.copy_line_values) and binds them as a prepared INSERT's parameters, which
PostgreSQL reads with the same input functions as COPY's text format.
"""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

import orjson
from django.db import connection
from django.db.models import Field

from routing.models import DecisionLog

Encoder = Callable[[Any], bytes]


def _escape(text: str) -> str:
    # COPY text format: backslash, newline, carriage return and tab are the only specials
    if "\\" in text:
        text = text.replace("\\", "\\\\")
    if "\n" in text:
        text = text.replace("\n", "\\n")
    if "\r" in text:
        text = text.replace("\r", "\\r")
    if "\t" in text:
        text = text.replace("\t", "\\t")
    return text


def _escape_json(text: bytes) -> bytes:
    # compact JSON holds no raw newline, carriage return or tab (inside strings JSON escapes them,
    # and these encoders put no whitespace between tokens): only its backslashes need escaping
    return text.replace(b"\\", b"\\\\")


def _json_encoder(field: Field[Any, Any]) -> Encoder:
    cls = getattr(field, "encoder", None)
    return lambda value: _escape_json(json.dumps(value, cls=cls).encode())


# orjson writes a UUID as str() does, a UTC datetime as isoformat() does and a finite float as the
# shortest text that reads back as it (as repr, with other exponents: 1e-7 for 1e-07), in under half
# the instructions of those formatters (in a loop: isoformat 20k → 8k, str of a UUID 13k → 7k,
# three floats' repr 22k → 9k); anything else takes them


def _uuid(value: Any) -> bytes:
    return orjson.dumps(value)[1:-1] if type(value) is uuid.UUID else str(value).encode()


def _time(value: Any) -> bytes:
    if type(value) is datetime and value.tzinfo is UTC:
        return orjson.dumps(value)[1:-1]
    return value.isoformat().encode()  # type: ignore[no-any-return]


def _float(value: Any) -> bytes:
    if type(value) is float and math.isfinite(value):
        return orjson.dumps(value)
    return repr(float(value)).encode()  # nan, inf (which orjson writes as null) and float subclasses


def _encoder(field: Field[Any, Any]) -> Encoder:
    kind = field.get_internal_type()
    if kind == "JSONField":
        return _json_encoder(field)
    if kind == "BooleanField":
        return lambda value: b"t" if value else b"f"
    if kind == "FloatField":
        return _float
    if kind == "DateTimeField":
        return _time
    if kind == "UUIDField":
        return _uuid
    if kind in {
        "PositiveIntegerField",
        "SmallIntegerField",
        "IntegerField",
        "BigIntegerField",
        "BigAutoField",
    }:
        return lambda value: b"%d" % value
    return lambda value: _escape(str(value)).encode()  # text, varchar, and the text key of ApiKey


@lru_cache(maxsize=1)
def _columns() -> tuple[tuple[str, Encoder, bool], ...]:
    """(attname, encoder, is a JSON column) per concrete field, in table order."""
    fields = DecisionLog._meta.concrete_fields
    return tuple((str(f.attname), _encoder(f), f.get_internal_type() == "JSONField") for f in fields)


@lru_cache(maxsize=1)
def decision_insert_sql() -> str:
    """The writer's prepared INSERT of one row: COPY's columns, one parameter each."""
    fields = DecisionLog._meta.concrete_fields
    columns = ", ".join(connection.ops.quote_name(str(f.column)) for f in fields)
    placeholders = ", ".join(f"${i}" for i in range(1, len(fields) + 1))
    return f"INSERT INTO {connection.ops.quote_name(DecisionLog._meta.db_table)} ({columns}) VALUES ({placeholders})"


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
