"""Which predictor serves live traffic in this process."""

from __future__ import annotations

from routing.engine.types import Predictor


def active_predictor() -> Predictor | None:
    """The active trained predictor, or None (the engine then uses the tier prior and says so)."""
    return None
