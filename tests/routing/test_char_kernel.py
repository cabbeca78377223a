"""The compiled character n-gram kernel gives exactly what the numpy version gives, or is not used."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from routing import features
from routing.char_kernel import CharKernel, _library, char_kernel_install
from routing.features import char_ngrams


@pytest.fixture
def clean_kernel() -> Iterator[None]:
    before = features._char_kernel
    features.use_char_kernel(None)
    yield
    features.use_char_kernel(before)


def _texts(seed: int, count: int) -> Iterator[str]:
    rng = random.Random(seed)
    alphabet = "abcdefghij 0123456789\t\n.,;:!?-éüß東京🙂\u00a0\u2003" + "".join(
        map(chr, range(0x370, 0x3FF))
    )
    for _ in range(count):
        yield "".join(rng.choice(alphabet) for _ in range(rng.choice((0, 1, 2, 3, 4, 5, 50, 600, 5000))))


def test_the_kernel_is_byte_identical_to_numpy(tmp_path: Path, clean_kernel: None) -> None:
    assert char_kernel_install(tmp_path)
    kernel = CharKernel(_library(tmp_path))
    for text in _texts(seed=7, count=300):
        lowered = text.lower()
        assert char_ngrams(lowered, kernel=kernel) == char_ngrams(lowered, kernel=None), repr(text[:40])


def test_the_ascii_entry_prepares_the_text_as_python_does(tmp_path: Path, clean_kernel: None) -> None:
    """Lowered ASCII text goes to the kernel as it comes: the split at every whitespace str.split()
    knows, the join, the cut at CHAR_MAX_CHARS and the digits are the kernel's work."""
    assert char_kernel_install(tmp_path)
    kernel = CharKernel(_library(tmp_path))
    rng = random.Random(11)
    alphabet = "ab c0123456789 \t\n\x0b\x0c\r\x1c\x1d\x1e\x1f\x00\x7f.,;" + "".join(map(chr, range(128)))
    ascii_texts = ["", " ", "a", " a ", "ab", "\x1fab\x1c", "a b", "12", " " * 9000 + "xy"]
    ascii_texts += [
        "".join(rng.choice(alphabet) for _ in range(rng.choice((3, 40, 900, 5000, 9000)))) for _ in range(200)
    ]
    # the cut falls on a space, just after one and just before one
    ascii_texts += ["a" * 4095 + " b", "a" * 4094 + "  b", "a" * 4096 + " b", "ab " * 2000]
    for text in ascii_texts:
        lowered = text.lower()
        assert lowered.isascii()
        assert char_ngrams(lowered, kernel=kernel) == char_ngrams(lowered, kernel=None), repr(text[:40])


def test_installed_it_serves_extract_features_and_is_reused_from_the_cache(
    tmp_path: Path, clean_kernel: None
) -> None:
    messages = [{"role": "user", "content": "Explain why the sum of two odd numbers is even, step by step."}]
    numpy_features = features.extract_features(messages, {})
    assert char_kernel_install(tmp_path)
    assert features.char_kernel_in_use()
    compiled_features = features.extract_features(messages, {})
    assert (compiled_features.char_ids, compiled_features.char_counts) == (
        numpy_features.char_ids,
        numpy_features.char_counts,
    )
    built = _library(tmp_path).stat().st_mtime_ns
    features.use_char_kernel(None)
    assert char_kernel_install(tmp_path, compile_if_missing=False)  # another process: cached library
    assert _library(tmp_path).stat().st_mtime_ns == built


def test_without_a_compiler_numpy_keeps_serving(
    tmp_path: Path, clean_kernel: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CC", "/nonexistent/cc")
    monkeypatch.setenv("PATH", "/nonexistent")
    assert char_kernel_install(tmp_path) is False
    assert not features.char_kernel_in_use()
    assert char_ngrams("hello world") == char_ngrams("hello world", kernel=None)
