from __future__ import annotations

import math
from typing import Any

import pytest

from routing.features import FEATURE_NAMES, FEATURE_SCHEMA_VERSION, extract_features, message_text

GOLDEN_PROMPT = (
    "Write a Python function that returns the n-th prime.\n```python\ndef prime(n):\n    pass\n```"
)


def test_feature_names_are_unique_and_versioned() -> None:
    assert len(FEATURE_NAMES) == len(set(FEATURE_NAMES))
    assert FEATURE_SCHEMA_VERSION >= 1


def test_it_produces_the_golden_vector_for_a_code_prompt() -> None:
    f = extract_features([{"role": "user", "content": GOLDEN_PROMPT}]).as_dict()
    assert f["approx_tokens"] == math.ceil(len(GOLDEN_PROMPT) / 4)
    assert f["n_messages"] == 1.0
    assert f["n_user_turns"] == 1.0
    assert f["has_system"] == 0.0
    assert f["has_code_block"] == 1.0
    assert f["code_signal"] == pytest.approx(34.1692, abs=1e-3)
    assert f["math_signal"] == pytest.approx(7.6923, abs=1e-3)  # "prime" is a math word
    assert f["creative_signal"] == pytest.approx(0.0)
    assert f["multiple_choice"] == 0.0
    assert f["temperature"] == -1.0


def test_it_produces_the_golden_vector_for_a_multiple_choice_math_prompt() -> None:
    prompt = "Solve for x: 2x + 3 = 11. What is x?\nA. 2\nB. 4\nC. 6\nD. 8\nAnswer:"
    f = extract_features([{"role": "user", "content": prompt}]).as_dict()
    assert f["multiple_choice"] == 1.0
    assert f["n_questions"] == 1.0
    assert f["math_signal"] > 1.0
    assert f["code_signal"] < f["math_signal"]
    assert f["frac_digits"] == pytest.approx(sum(ch.isdigit() for ch in prompt) / len(prompt))


def test_it_counts_turns_system_prompt_and_metadata() -> None:
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"},
        {"role": "user", "content": [{"type": "text", "text": "Write a poem about the sea"}]},
    ]
    f = extract_features(messages, {"max_tokens": 100, "temperature": 0.2}).as_dict()
    assert f["n_messages"] == 4.0
    assert f["n_user_turns"] == 2.0
    assert f["has_system"] == 1.0
    assert f["creative_signal"] > 0
    assert f["max_tokens_log"] == pytest.approx(math.log1p(100))
    assert f["temperature"] == pytest.approx(0.2)


def test_it_flags_multilingual_text() -> None:
    f = extract_features([{"role": "user", "content": "Объясни, почему небо голубое?"}]).as_dict()
    assert f["multilingual"] > 0.5
    english = extract_features([{"role": "user", "content": "Explain why the sky is blue?"}]).as_dict()
    assert english["multilingual"] == 0.0


def test_it_is_deterministic_and_total_on_odd_content() -> None:
    odd: list[dict[str, Any]] = [
        {"role": "user", "content": None},
        {"role": "tool", "content": 5},
        {"role": "user", "content": ""},
    ]
    a = extract_features(odd)
    b = extract_features(odd)
    assert a == b
    assert len(a.values) == len(FEATURE_NAMES)
    assert all(math.isfinite(v) for v in a.values)


def test_message_text_joins_text_parts_and_ignores_images() -> None:
    parts = [
        {"type": "text", "text": "a"},
        {"type": "image_url", "image_url": {"url": "x"}},
        {"type": "text", "text": "b"},
    ]
    assert message_text(parts) == "a\nb"
