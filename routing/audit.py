"""Content hashes of decision rows (pure). A row's hash covers everything an auditor relies on."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from json.encoder import c_make_encoder, encode_basestring  # type: ignore[attr-defined]
from typing import Any

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


def decision_row_hash(fields: Mapping[str, Any]) -> str:
    return hashlib.sha256(canonical_json({name: fields.get(name) for name in HASHED_FIELDS})).hexdigest()


def row_hash_from_texts(texts: Mapping[str, str]) -> str:
    """decision_row_hash from each hashed field's canonical_text (byte-identical: the object's
    canonical JSON is its sorted `"name":text` pairs joined by commas inside braces)."""
    body = ",".join([_KEY_PREFIX[name] + texts[name] for name in _SORTED_FIELDS])
    return hashlib.sha256(("{" + body + "}").encode()).hexdigest()


def decision_row_hash_texts(fields: Mapping[str, Any]) -> tuple[str, dict[str, str]]:
    """The row hash and each hashed field's canonical JSON text, so a writer can store the JSON
    columns from the very text that was hashed instead of encoding them a second time."""
    texts = {name: canonical_text(fields.get(name)) for name in HASHED_FIELDS}
    return row_hash_from_texts(texts), texts
