"""Content hashes of decision rows (pure). A row's hash covers everything an auditor relies on.

A row's hash is the SHA-256 of its hashed fields' canonical JSON, in one of two encodings; the
row's `hash_format` column says which:

1. `json.dumps(fields, sort_keys=True, separators=(",", ":"), default=str, ensure_ascii=False)`,
   UTF-8 (every row written before 2026-12-01, and since then a row orjson refuses, see 2);
2. `orjson.dumps(fields, option=OPT_SORT_KEYS | OPT_PASSTHROUGH_DATETIME, default=...)`, where the default turns a float or integer subclass (numpy's) into the plain
   number and anything else into `str(value)` (datetimes as format 1 writes them). It is about
   five times cheaper to encode (a shortest-digits float printer instead of repr, which was most of
   the cost); floats print differently (0.00001, 1e-7 against 1e-05, 1e-07), so the format is
   recorded per row. orjson refuses integers beyond 64 bits, lone surrogates and keys that are
   not strings: such a row (caller metadata can hold any JSON number) is written in format 1.

Both encodings are deterministic functions of the values, and the values read back from the
database (JSON columns parsed, datetimes and UUIDs as such) encode to the same bytes, so
`decision_row_hash(values, row.hash_format)` verifies a stored row. For that, a row's JSON fields
must hold numbers as jsonb gives them back (jsonb_stable): PostgreSQL keeps a JSON number as
numeric, which has no negative zero and writes 1e16 as 10000000000000000, an integer once parsed.
The caller's numbers are read that way when the request body is parsed (jsonb_float), so only
SCOPE's own arithmetic is left: its -0.0 (from a product with a zero) is found in the encoded
text, a cheap search, and the field hashed and stored as 0.0. Its floats stay far below 1e16
(predicted costs, qualities, latencies, features); a catalog price that made a predicted cost
reach 1e16 USD would store a row that verification then reports as changed.
"""

from __future__ import annotations

import decimal
import hashlib
import json
import math
import numbers
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from json.encoder import c_make_encoder, encode_basestring  # type: ignore[attr-defined]
from typing import Any, NamedTuple

import orjson

HASHED_FIELDS = (
    "id",
    "created_at",
    "kind",
    "api_key_name",
    "policy_slug",
    "policy_version",
    "strategy",
    "predictor_version",
    "alpha",
    "chosen_model",
    "chosen_provider",
    "fallbacks",
    "candidates",
    "explanation",
    "features",
    "feature_schema",
    "prompt_sha256",
    "user",
    "metadata",
    "experiment",
    "arm",
    "cache_hit",
)


_SORTED_FIELDS = tuple(sorted(HASHED_FIELDS))
_KEY_PREFIX = {name: json.dumps(name) + ":" for name in HASHED_FIELDS}


# json.dumps with these options would build a new encoder per call; a row hashes 22 values
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), default=str, ensure_ascii=False)


def _canonical_encoder() -> Callable[[Any], str]:
    """_CANONICAL.encode, with its C encoder built once instead of on every call (the per-call
    set-up was most of the cost of encoding a row's 22 mostly small values). The output is the
    same text; only the circular-reference check is left out, which a row's values (trees built
    by the route path) never need: a cycle would end in RecursionError instead of ValueError."""
    if c_make_encoder is None:  # a Python without the C accelerator: the encoder object itself
        return _CANONICAL.encode
    iterencode = c_make_encoder(None, str, encode_basestring, None, ":", ",", True, False, True)

    def encode(value: Any) -> str:
        if isinstance(value, str):
            return encode_basestring(value)  # what JSONEncoder.encode does for a str
        return "".join(iterencode(value, 0))

    return encode


canonical_text: Callable[[Any], str] = _canonical_encoder()


def canonical_json(value: Any) -> bytes:
    return canonical_text(value).encode()


HASH_FORMAT_JSON = 1
HASH_FORMAT_ORJSON = 2
HASH_FORMATS = (HASH_FORMAT_JSON, HASH_FORMAT_ORJSON)
# OPT_NON_STR_KEYS would cost a third more on every row for keys no row has (JSON's are strings)
_ORJSON_OPTIONS = orjson.OPT_SORT_KEYS | orjson.OPT_PASSTHROUGH_DATETIME


def _orjson_default(value: Any) -> Any:
    if type(value) is datetime and value.tzinfo is UTC:  # a row's created_at
        # str(value) from orjson's RFC 3339 text, which for UTC is isoformat's (a test compares them):
        # canonical_orjson of a created_at measured 25k instructions in a loop with str(), 10k with this
        return orjson.dumps(value)[1:-1].decode().replace("T", " ", 1)
    if isinstance(value, float):  # numpy.float64 and other float subclasses: the number itself
        return float(value)
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):  # numpy integers
        return int(value)
    return str(value)


def canonical_orjson(value: Any) -> bytes:
    """Format 2's canonical JSON of one value (raises TypeError where orjson cannot encode it)."""
    return orjson.dumps(value, default=_orjson_default, option=_ORJSON_OPTIONS)


def decision_row_hash(fields: Mapping[str, Any], hash_format: int = HASH_FORMAT_JSON) -> str:
    """The row hash of `fields` in `hash_format` (a stored row's `hash_format` column)."""
    hashed = {name: fields.get(name) for name in HASHED_FIELDS}
    if hash_format == HASH_FORMAT_ORJSON:
        return hashlib.sha256(canonical_orjson(hashed)).hexdigest()
    if hash_format != HASH_FORMAT_JSON:
        raise ValueError(f"unknown row hash format {hash_format!r} (known: {HASH_FORMATS})")
    return hashlib.sha256(canonical_json(hashed)).hexdigest()


def row_hash_from_texts(texts: Mapping[str, str]) -> str:
    """Format 1's decision_row_hash from each hashed field's canonical_text (byte-identical: the
    object's canonical JSON is its sorted `"name":text` pairs joined by commas inside braces)."""
    body = ",".join([_KEY_PREFIX[name] + texts[name] for name in _SORTED_FIELDS])
    return hashlib.sha256(("{" + body + "}").encode()).hexdigest()


_KEY_PREFIX_BYTES = {name: prefix.encode() for name, prefix in _KEY_PREFIX.items()}

# the hashed fields stored in JSON columns: the writer stores these from the text that was hashed
JSON_FIELDS = ("fallbacks", "candidates", "explanation", "features", "metadata")


def _negative_zero(text: bytes) -> bool:
    """Whether a compact JSON text holds -0.0: as a number it ends the text or comes before , ] or
    }; -0.03 does not count. A string with those characters in it counts too, which only costs a
    needless walk of the field.

    Searched with find: `in` on bytes first tries the needle as an integer and raises and clears
    a TypeError for it, which cost more than the search itself. Most texts have no -0.0 at all."""
    if text.find(b"-0.0") < 0:
        return False
    return (
        text.find(b"-0.0,") >= 0
        or text.find(b"-0.0]") >= 0
        or text.find(b"-0.0}") >= 0
        or text.endswith(b"-0.0")
    )


def jsonb_float(literal: str) -> float | int:
    """A JSON float literal read as jsonb_stable has it: the API's JSON parser reads request bodies
    with this (scope_site.parsers), so a caller's -0.0 or 1e16 never reaches a row as such. A
    literal beyond a double's range (1e400) is refused: neither jsonb nor the predictor can hold it."""
    value = float(literal)
    if not math.isfinite(value):
        raise ValueError(f"number out of range: {literal[:40]}")
    return jsonb_stable(value)


def jsonb_stable(value: Any) -> Any:
    """`value` as a jsonb column gives it back (see the module's docstring): -0.0 as 0.0, a float
    of 1e16 or more (all of them are integers) as the exact integer of its shortest digits."""
    if isinstance(value, float):
        if value == 0.0:
            return 0.0
        if abs(value) >= 1e16 and math.isfinite(value):
            return int(decimal.Decimal(repr(value)))
        return value
    if isinstance(value, dict):
        return {k: jsonb_stable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonb_stable(v) for v in value]
    return value


class RowHash(NamedTuple):
    hash_format: int
    row_hash: str
    json_utf8: dict[str, bytes]  # the canonical JSON text of each of JSON_FIELDS, UTF-8 encoded
    jsonb_values: dict[str, Any]  # the JSON fields that jsonb_stable changed, as hashed (usually none)


def decision_row_hash_texts(fields: Mapping[str, Any]) -> RowHash:
    """The hash of a new row, in format 2 unless orjson refuses a value (then format 1), with the
    canonical text of each JSON field (UTF-8, as the COPY line takes it): a writer stores the JSON
    columns from the very text the hash covers instead of encoding them a second time. A JSON field
    that jsonb would give back otherwise (a -0.0 in it) is hashed as jsonb_stable makes it, and
    returned in `jsonb_values`: the row must hold (and a database other than PostgreSQL store)
    those values.

    Each field is encoded once and the row's text joined from the pieces (byte-identical to
    encoding the whole row: orjson's compact output of an object is its sorted `"name":value`
    pairs); encoding the whole row, then the JSON fields again, cost more."""
    stable: dict[str, Any] = {}
    try:
        encoded = {name: canonical_orjson(fields.get(name)) for name in HASHED_FIELDS}
        for name in JSON_FIELDS:
            if _negative_zero(encoded[name]):
                stable[name] = jsonb_stable(fields.get(name))
                encoded[name] = canonical_orjson(stable[name])
    except TypeError:
        texts = {name: canonical_text(fields.get(name)) for name in HASHED_FIELDS}
        json_utf8 = {}
        for name in JSON_FIELDS:
            utf8 = texts[name].encode()
            if _negative_zero(utf8):
                stable[name] = jsonb_stable(fields.get(name))
                texts[name] = canonical_text(stable[name])
                utf8 = texts[name].encode()
            json_utf8[name] = utf8
        return RowHash(HASH_FORMAT_JSON, row_hash_from_texts(texts), json_utf8, stable)
    body = b",".join([_KEY_PREFIX_BYTES[name] + encoded[name] for name in _SORTED_FIELDS])
    row_hash = hashlib.sha256(b"{" + body + b"}").hexdigest()
    return RowHash(HASH_FORMAT_ORJSON, row_hash, {name: encoded[name] for name in JSON_FIELDS}, stable)
