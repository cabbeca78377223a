"""Text the database could not store: a NUL character (PostgreSQL text and jsonb) or a lone
surrogate (not encodable as UTF-8). Requests and imported data holding one are refused up front,
naming where, instead of failing on write."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

UNSTORABLE_TEXT = "NUL characters (\\u0000) and lone surrogates (\\ud800-\\udfff) are not accepted"


def unstorable_path(value: Any, path: str) -> str:
    """Where in a JSON-like value a string (or key) holds a NUL character or a lone surrogate, or
    "". `path` names the value ("metadata"); what is found under it is named from there."""
    if isinstance(value, str):
        return path if unstorable_text(value) else ""
    if isinstance(value, Mapping):
        for key, item in value.items():
            if isinstance(key, str) and unstorable_text(key):
                return path
            found = unstorable_path(item, f"{path}.{key}")
            if found:
                return found
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            found = unstorable_path(item, f"{path}[{i}]")
            if found:
                return found
    return ""


def unstorable_text(text: str) -> bool:
    """Whether PostgreSQL (NUL) or UTF-8 (a lone surrogate) could not store `text`."""
    return storable_utf8(text) is None


def storable_utf8(text: str) -> bytes | None:
    """`text` encoded as UTF-8, or None where PostgreSQL (NUL) or UTF-8 (a lone surrogate) could not
    store it: one encoding serves the check and whoever needs the bytes (the prompt's hash)."""
    if "\x00" in text:
        return None
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        return None
