"""What a request needs from a model, in the catalog's capability vocabulary (pure).

Catalog models declare `capabilities` (the demo catalog uses `json`, `tools`, `vision`); policies
can require some (`required_capabilities`). A chat request adds its own needs: tool definitions
need `tools`, an image content part needs `vision`, a JSON response format needs `json`. The
engine makes them hard constraints, like a policy's, for every capability that at least one
catalog model declares: a catalog that never mentions `vision` makes no claim about it, so it
does not exclude every model.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

TOOLS = "tools"
VISION = "vision"
JSON = "json"
_IMAGE_PARTS = frozenset({"image_url", "image"})
_JSON_FORMATS = frozenset({"json_object", "json_schema"})


def _has_image(messages: Sequence[Mapping[str, Any]]) -> bool:
    for message in messages:
        content = message.get("content")
        if isinstance(content, list) and any(
            isinstance(part, Mapping) and part.get("type") in _IMAGE_PARTS for part in content
        ):
            return True
    return False


def request_capabilities(
    *, messages: Sequence[Mapping[str, Any]], options: Mapping[str, Any]
) -> tuple[str, ...]:
    """The capabilities a request needs: `options` are the OpenAI chat body's other fields."""
    needs: list[str] = []
    tool_choice = options.get("tool_choice")
    if options.get("tools") or tool_choice not in (None, "none"):
        needs.append(TOOLS)
    if _has_image(messages):
        needs.append(VISION)
    response_format = options.get("response_format")
    if isinstance(response_format, Mapping) and response_format.get("type") in _JSON_FORMATS:
        needs.append(JSON)
    return tuple(needs)
