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

Encoder = Callable[[Any], str]


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


def _json_encoder(field: Field[Any, Any]) -> Encoder:
    cls = getattr(field, "encoder", None)
    return lambda value: _escape(json.dumps(value, cls=cls))


def _encoder(field: Field[Any, Any]) -> Encoder:
    kind = field.get_internal_type()
    if kind == "JSONField":
        return _json_encoder(field)
    if kind == "BooleanField":
        return lambda value: "t" if value else "f"
    if kind == "FloatField":
        return lambda value: repr(float(value))
    if kind == "DateTimeField":
        return lambda value: value.isoformat()
    if kind in {
        "UUIDField",
        "PositiveIntegerField",
        "SmallIntegerField",
        "IntegerField",
        "BigIntegerField",
        "BigAutoField",
    }:
        return str
    return lambda value: _escape(str(value))  # text, varchar, and the text key of ApiKey


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


def decision_copy_line(row: DecisionLog, json_texts: Mapping[str, str] | None = None) -> bytes:
    """The row as one COPY text line ending in a newline.

    `json_texts` may give a JSON column's text already encoded (routing.audit.canonical_text, the
    text its row hash covers); other columns are encoded here.
    """
    texts = json_texts or {}
    cells = []
    for attname, encode, is_json in _columns():
        value = getattr(row, attname)
        if value is None:
            cells.append("\\N")
        elif is_json and attname in texts:
            cells.append(_escape(texts[attname]))
        else:
            cells.append(encode(value))
    return ("\t".join(cells) + "\n").encode()
