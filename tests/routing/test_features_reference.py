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
    char_ngrams,
    extract_features,
    hashed_ngrams,
    text_char_ngrams,
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


def _reference_char_ngrams(lowered: str) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """A loop per n-gram over Python ints: the polynomial hash, the salt and the final mix of char_ngrams."""
    mask = 0xFFFFFFFF
    salts = {2: 0x85EBCA6B, 3: 0xC2B2AE35, 4: 0x27D4EB2F}
    s = "".join("0" if c in "0123456789" else c for c in " ".join(lowered.split())[:4096])
    found: dict[int, int] = {}
    for k in (2, 3, 4):
        for i in range(len(s) - k + 1):
            h = ord(s[i])
            for ch in s[i + 1 : i + k]:
                h = ((h * 0x9E3779B1) & mask) ^ ord(ch)
            bucket = (k - 2) * 65536 + ((((h ^ salts[k]) * 0x2C1B3C6D) & mask) >> 16)
            found[bucket] = found.get(bucket, 0) + 1
    ids = tuple(sorted(found))
    return ids, tuple(found[i] for i in ids)


def _decoded(packed: tuple[bytes, bytes]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    ids, counts = packed
    return (
        tuple(np.frombuffer(ids, dtype="<u4").tolist()),
        tuple(np.frombuffer(counts, dtype="<u2").tolist()),
    )


def test_character_ngrams_equal_a_plain_reference_on_random_text() -> None:
    rng = random.Random(7)
    for _ in range(200):
        text = "".join(rng.choice(PIECES) for _ in range(rng.randint(0, 60)))
        assert _decoded(char_ngrams(text.lower())) == _reference_char_ngrams(text.lower()), text
    assert char_ngrams("") == (b"", b"") and char_ngrams(" a ") == (b"", b"")
    f = extract_features([{"role": "user", "content": "Explain  THIS\nloop"}])
    assert (f.char_ids, f.char_counts) == text_char_ngrams(f.text)
    assert _decoded((f.char_ids, f.char_counts)) == _reference_char_ngrams(f.text.lower())
    long_text = "x" * 10_000
    assert sum(_decoded(char_ngrams(long_text))[1]) == 3 * 4096 - 6
