"""The prior predictor: quality from each model's `tier`, length from the request, no training.

Used before a trained predictor exists (its decisions say `predictor_version: "prior"`) and for
models the trained predictor knows nothing about.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from routing.engine.types import ModelSpec, Prediction
from routing.features import FEATURE_NAMES, RequestFeatures

PRIOR_VERSION = "prior"
# tier → expected share of good answers on an average request
_TIER_QUALITY = {1: 0.45, 2: 0.58, 3: 0.7, 4: 0.8, 5: 0.88}
# tier → (time to first token ms, output tokens per second)
_TIER_SPEED = {1: (150.0, 150.0), 2: (200.0, 110.0), 3: (300.0, 80.0), 4: (450.0, 60.0), 5: (600.0, 45.0)}
# where the values the prior reads sit in RequestFeatures.values (read by position: features.named()
# builds a dict of every value, and the prior runs on most requests, for the models a trained
# predictor does not know)
(
    _LOG_TOKENS,
    _USER_TURNS,
    _CODE,
    _MATH,
    _REASONING,
    _EXTRACTION,
    _CREATIVE,
    _MULTILINGUAL,
    _CHOICE,
    _MAX_TOKENS_LOG,
) = map(
    FEATURE_NAMES.index,
    (
        "log_tokens",
        "n_user_turns",
        "code_signal",
        "math_signal",
        "reasoning_signal",
        "extraction_signal",
        "creative_signal",
        "multilingual",
        "multiple_choice",
        "max_tokens_log",
    ),
)


def request_difficulty(features: RequestFeatures) -> float:
    """A 0–1 difficulty guess from the analyzer's signals (used by the prior and `feature`)."""
    f = features.values
    score = (
        0.18 * min(f[_LOG_TOKENS] / 8.0, 1.0)
        + 0.22 * min(f[_CODE] / 4.0, 1.0)
        + 0.22 * min(f[_MATH] / 4.0, 1.0)
        + 0.18 * min(f[_REASONING] / 3.0, 1.0)
        + 0.08 * min(f[_USER_TURNS] / 4.0, 1.0)
        + 0.07 * f[_MULTILINGUAL]
        + 0.05 * f[_CHOICE]
        - 0.1 * min(f[_EXTRACTION] / 3.0, 1.0)
    )
    return max(0.0, min(1.0, score))


def expected_output_tokens(features: RequestFeatures) -> float:
    f = features.values
    if f[_MAX_TOKENS_LOG] > 0:
        cap = 2.718281828 ** f[_MAX_TOKENS_LOG] - 1
    else:
        cap = 4096.0
    base = 220.0
    base += 250.0 * min(f[_CODE] / 4.0, 1.0) + 200.0 * min(f[_CREATIVE] / 2.0, 1.0)
    base += 120.0 * min(f[_REASONING] / 3.0, 1.0) + 80.0 * min(f[_MATH] / 4.0, 1.0)
    if f[_CHOICE]:
        base *= 0.5
    return float(min(base, cap))


class PriorPredictor:
    version = PRIOR_VERSION

    def predict(self, features: RequestFeatures, models: Sequence[ModelSpec]) -> list[Prediction]:
        difficulty = request_difficulty(features)
        out_tokens = expected_output_tokens(features)
        predictions = []
        for model in models:
            base = _TIER_QUALITY.get(model.tier, 0.6)
            # harder requests hurt small models more than frontier ones
            quality = base - difficulty * (0.35 - 0.06 * model.tier)
            ttft, tps = _TIER_SPEED.get(model.tier, (300.0, 80.0))
            predictions.append(
                Prediction(
                    quality=max(0.02, min(0.98, quality)),
                    uncertainty=0.25,
                    output_tokens=out_tokens,
                    latency_ms=ttft + features.input_tokens * 0.05 + out_tokens / tps * 1000.0,
                    known=False,
                )
            )
        return predictions

    def contributions(
        self, features: RequestFeatures, model: ModelSpec, top: int = 5
    ) -> list[dict[str, Any]]:
        return [
            {"feature": "tier", "value": model.tier, "contribution": _TIER_QUALITY.get(model.tier, 0.6)},
            {"feature": "difficulty", "value": round(request_difficulty(features), 4), "contribution": None},
        ]
