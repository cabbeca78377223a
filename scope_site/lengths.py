"""Text that does not fit its column is a 400 naming the field, not a database error (PostgreSQL
refuses it with StringDataRightTruncation; SQLite would store it silently)."""

from __future__ import annotations

from typing import Any

from django.db import models

from scope_site.errors import InvalidRequest


def check_lengths(model: type[models.Model], where: str, **values: Any) -> None:
    """Raise InvalidRequest for the first string value longer than its field's max_length."""
    for name, value in values.items():
        limit = model._meta.get_field(name).max_length  # type: ignore[union-attr]
        if isinstance(value, str) and limit is not None and len(value) > limit:
            field = f"{where}.{name}" if where else name
            raise InvalidRequest(f"{field}: at most {limit} characters (got {len(value)})")
