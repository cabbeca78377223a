"""The API's JSON parser: DRF's, refusing bodies nested deeper than MAX_DEPTH with a 400, and
reading numbers as PostgreSQL's jsonb will give them back.

Without a limit, thousands of nested arrays exhaust the decoder's stack, and a few hundred parse
but exhaust the encoder's later (the decision row's canonical JSON): both were 500s. No request
SCOPE serves needs more than a handful of levels.

A float literal is read by routing.audit.jsonb_float: -0.0 as 0.0 and 1e16 or more as the integer
it is. jsonb stores them so, and a decision row's hash covers its JSON fields as stored: read as
given, such a number in a caller's metadata made an intact row fail verification.
"""

from __future__ import annotations

import codecs
from typing import Any

from rest_framework import parsers
from rest_framework.exceptions import ParseError
from rest_framework.utils import json

from routing.audit import jsonb_float

MAX_DEPTH = 100


class JSONParser(parsers.JSONParser):
    def parse(self, stream: Any, media_type: str | None = None, parser_context: Any = None) -> Any:
        encoding = parsers.get_encoding(parser_context or {})  # type: ignore[attr-defined]
        try:
            data = json.loads(
                codecs.getreader(encoding)(stream).read(),
                parse_constant=json.strict_constant if self.strict else None,
                parse_float=jsonb_float,
            )
        except RecursionError:  # the decoder's own stack gave out
            raise ParseError(f"JSON parse error - nested deeper than {MAX_DEPTH} levels") from None
        except ValueError as exc:  # as DRF's JSONParser says it
            raise ParseError(f"JSON parse error - {exc}") from None
        if too_deep(data, MAX_DEPTH):
            raise ParseError(f"JSON parse error - nested deeper than {MAX_DEPTH} levels")
        return data


def too_deep(value: Any, limit: int) -> bool:
    """Whether arrays and objects nest more than `limit` levels (iterative: no recursion of its own)."""
    pending = [(value, 1)]
    while pending:
        item, depth = pending.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > limit:
            return True
        pending.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return False
