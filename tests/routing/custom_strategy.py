"""A deployment's own strategy, loaded through SCOPE_EXTRA_STRATEGIES in the tests."""

from __future__ import annotations

from collections.abc import Sequence

from routing.engine.strategies import StrategyContext
from routing.engine.types import Candidate


class LongestNameStrategy:
    name = "longest-name"
    uses_rules = False
    uses_predictor = False

    def rank(self, candidates: Sequence[Candidate], ctx: StrategyContext) -> list[Candidate]:
        ordered = sorted(candidates, key=lambda c: (-len(c.model.name), c.model.name))
        for position, c in enumerate(ordered):
            c.utility = float(-position)
        return ordered
