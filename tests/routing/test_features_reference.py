"""The fast analyzer against a plain reference: a loop per word and np.unique over uint64 hashes."""

from __future__ import annotations

import random
import zlib

import numpy as np
import pytest

from routing import feature_words as fw
from routing.features import (
    _BIGRAM_MIX,
    _STRIP,
    FEATURE_NAMES,
    NGRAM_BUCKETS,
    NGRAM_MAX_WORDS,
    extract_features,
    hashed_ngrams,
)

PIECES = [
    *"abcdefghijklmnopqrstuvwxyzABCXYZ0123456789 \n\t.,;:!?()[]{}\"'`*_#<>/\\|=+-~@$%^&",
    *("é", "中文", "\u00a0", "\u2003", "\x1c", "\u2028"),
    *(
        " def ",
        " list ",
        " return ",
        " prime ",
        " solve ",
        " why ",
        " extract ",
        " poem ",
        " json ",
        " SELECT ",
    ),
    *("```", "\nA.", "\nB)", "(A)", "\\frac", "    ", "\n1.", "\n- ", "-def-", "'json'", "(code)"),
]


def _reference_words(text: str) -> tuple[list[str], list[int]]:
    words = [w for raw in text.lower().split() if (w := raw.strip(_STRIP))]
    signals = [0, 0, 0, 0, 0]
    for w in words:
        for i, table in enumerate(
            (fw.CODE_WORDS, fw.MATH_WORDS, fw.REASONING_WORDS, fw.EXTRACTION_WORDS, fw.CREATIVE_WORDS)
        ):
            if w in table:
                signals[i] += 1
                break
    return words, signals


def _reference_ngrams(words: list[str]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    if not words:
        return (), ()
    arr = np.array(
        [zlib.crc32(w.encode("utf-8", "surrogatepass")) for w in words[:NGRAM_MAX_WORDS]], np.uint64
    )
    buckets = np.concatenate((arr, (arr[:-1] * np.uint64(_BIGRAM_MIX)) ^ arr[1:])) & np.uint64(
        NGRAM_BUCKETS - 1
    )
    ids, counts = np.unique(buckets, return_counts=True)
    return tuple(ids.tolist()), tuple(counts.tolist())


@pytest.mark.parametrize("seed", range(4))
def test_word_signals_and_ngrams_equal_the_reference_loop(seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(150):
        text = "".join(rng.choice(PIECES) for _ in range(rng.randint(0, 1500)))
        words, signals = _reference_words(text)
        got = extract_features([{"role": "user", "content": text}])
        n = max(len(words), 1)
        expected = [s * 100.0 / n for s in signals]
        names = ("reasoning_signal", "extraction_signal", "creative_signal")
        assert [got.get(name) for name in names] == pytest.approx(expected[2:], abs=1e-12)
        assert got.get("unique_word_ratio") == len(set(words)) / n
        assert got.get("avg_word_len") == sum(map(len, words)) / n
        assert (got.ngram_ids, got.ngram_counts) == _reference_ngrams(words)
        assert hashed_ngrams(words) == _reference_ngrams(words)
        assert len(got.values) == len(FEATURE_NAMES)


def test_a_word_in_two_signal_lists_counts_for_the_first_only() -> None:
    lists = (fw.CODE_WORDS, fw.MATH_WORDS, fw.REASONING_WORDS, fw.EXTRACTION_WORDS, fw.CREATIVE_WORDS)
    for word in frozenset().union(*lists):
        _, signals = _reference_words(word)
        assert [word in signal for signal in fw.SIGNAL_WORDS] == [s == 1 for s in signals], word
