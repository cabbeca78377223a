"""Sticky experiment assignment (pure): a unit (user or API key) hashes to the same arm every time.

The hash is salted with the experiment's name, so one user's arm in one experiment says nothing
about their arm in another.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence


def assignment_bucket(experiment: str, unit: str) -> float:
    """A uniform number in [0, 1) fixed by (experiment, unit)."""
    digest = hashlib.sha256(f"{experiment}\x00{unit}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def pick_arm(arms: Sequence[tuple[str, int]], bucket: float) -> str:
    """The arm whose slice of the cumulative weights holds `bucket` (arms with weight 0 never win)."""
    total = sum(weight for _, weight in arms)
    if total <= 0:
        raise ValueError("an experiment needs at least one arm with a positive weight")
    point = bucket * total
    cumulative = 0.0
    for name, weight in arms:
        cumulative += weight
        if point < cumulative:
            return name
    return next(name for name, weight in reversed(arms) if weight > 0)
