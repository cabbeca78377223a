"""Content hashes of decision rows (pure). A row's hash covers everything an auditor relies on."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
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


def canonical_json(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str, ensure_ascii=False).encode()


def decision_row_hash(fields: Mapping[str, Any]) -> str:
    return hashlib.sha256(canonical_json({name: fields.get(name) for name in HASHED_FIELDS})).hexdigest()
