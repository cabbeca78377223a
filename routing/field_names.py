"""Unknown keys in a request body are refused, not ignored: `max_cost` for `max_cost_usd` would
otherwise silently drop a cost limit. One message for every body that checks its keys (pure)."""

from __future__ import annotations

import difflib
from collections.abc import Collection, Iterable


def unknown_fields(given: Iterable[object], known: Collection[str]) -> list[str]:
    """The keys of `given` that are not in `known`, in the order given (non-text keys as repr)."""
    return [key if isinstance(key, str) else repr(key) for key in given if key not in known]


def unknown_fields_message(unknown: Collection[str], known: Collection[str], *, where: str = "") -> str:
    """ "unknown field 'aplha' (did you mean 'alpha'?); known fields: alpha, …" """
    named = []
    for key in unknown:
        close = difflib.get_close_matches(key, list(known), n=1, cutoff=0.6)
        named.append(f"{key!r} (did you mean {close[0]!r}?)" if close else repr(key))
    noun = "field" if len(named) == 1 else "fields"
    prefix = f"{where}: " if where else ""
    return f"{prefix}unknown {noun} {', '.join(named)}; known fields: {', '.join(known)}"
