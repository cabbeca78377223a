"""The API's JSON parser: DRF's, refusing bodies nested deeper than MAX_DEPTH with a 400.

Without a limit, thousands of nested arrays exhaust the decoder's stack, and a few hundred parse
but exhaust the encoder's later (the decision row's canonical JSON): both were 500s. No request
SCOPE serves needs more than a handful of levels.
"""

from __future__ import annotations

from typing import Any

from rest_framework import parsers
from rest_framework.exceptions import ParseError

MAX_DEPTH = 100


class JSONParser(parsers.JSONParser):
    def parse(self, stream: Any, media_type: str | None = None, parser_context: Any = None) -> Any:
        try:
            data = super().parse(stream, media_type, parser_context)
        except RecursionError:  # the decoder's own stack gave out
            raise ParseError(f"JSON parse error - nested deeper than {MAX_DEPTH} levels") from None
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
