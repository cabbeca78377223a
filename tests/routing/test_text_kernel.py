"""The compiled word and character count kernel gives exactly what the Python path gives, or is not used."""

from __future__ import annotations

import random
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from routing import features, text_kernel
from routing.feature_words import SIGNAL_OF
from routing.features import NGRAM_MAX_WORDS, RequestFeatures, extract_features
from routing.text_kernel import TextKernel, _library, text_kernel_install

_SIGNAL_WORDS = sorted(SIGNAL_OF)
_PIECES = (
    *" \t\n\r\x0b\x0c\x1c\x1d\x1e\x1f\x00",
    *".,;:!?()[]{}\"'`*_#<>/\\|=+-~@$%^&",
    *"0123456789",
    *"abcxyzABCXYZ",
    "def ",
    "    ",
    "\\frac",
    "```",
    "=>",
    "==",
    ";\n",
    "()",
    "json",
    "JSON",
    "\n1.",
    "\n2.",
    "\n- ",
    *features._CHOICE_MARKERS,
    *_SIGNAL_WORDS,
    *(w.upper() for w in _SIGNAL_WORDS[:40]),
    *(f"({w})" for w in _SIGNAL_WORDS[:40]),
)
_piece = st.sampled_from(_PIECES)
_ascii_text = st.one_of(
    st.lists(_piece, max_size=60).map("".join),
    st.text(alphabet=st.characters(max_codepoint=127), max_size=200),
    # longer than NGRAM_MAX_WORDS words: the n-grams keep the first ones only
    st.lists(st.sampled_from((*_SIGNAL_WORDS[:30], "x", "Y.", "(z)", "0")), min_size=1, max_size=30).map(
        lambda words: " ".join(words[i % len(words)] for i in range(NGRAM_MAX_WORDS + 77))
    ),
)


@pytest.fixture(scope="module")
def kernel(tmp_path_factory: pytest.TempPathFactory) -> TextKernel:
    cache_dir = tmp_path_factory.mktemp("text-kernel")
    before = features._text_kernel
    try:
        assert text_kernel_install(cache_dir)
    finally:
        features.use_text_kernel(before)
    return TextKernel(_library(cache_dir))


@pytest.fixture
def clean_kernel() -> Iterator[None]:
    before = features._text_kernel
    features.use_text_kernel(None)
    yield
    features.use_text_kernel(before)


def _extract(text: str, kernel: TextKernel | None) -> RequestFeatures:
    before = features._text_kernel
    features.use_text_kernel(kernel)
    try:
        return extract_features(
            [{"role": "system", "content": "Be brief."}, {"role": "user", "content": text}], {}
        )
    finally:
        features.use_text_kernel(before)


def _assert_same(text: str, kernel: TextKernel) -> None:
    lowered = text.lower()
    assert features.text_counts(text, lowered, kernel=kernel) == features.text_counts(
        text, lowered, kernel=None
    )
    compiled, python = _extract(text, kernel), _extract(text, None)
    assert compiled.values == python.values
    assert compiled.ngram_ids == python.ngram_ids
    assert compiled.ngram_counts == python.ngram_counts
    assert compiled == python


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=_ascii_text)
def test_the_kernel_equals_the_python_path_on_ascii_text(kernel: TextKernel, text: str) -> None:
    _assert_same(text, kernel)


def test_the_kernel_equals_the_python_path_on_seeded_texts(kernel: TextKernel) -> None:
    rng = random.Random(11)
    for _ in range(200):
        size = rng.choice((0, 1, 2, 5, 40, 300, 1500))
        _assert_same("".join(rng.choice(_PIECES) for _ in range(size)), kernel)
    for text in text_kernel.PROBE_TEXTS:
        _assert_same(text, kernel)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=300))
def test_its_crc32_is_zlibs(kernel: TextKernel, data: bytes) -> None:
    assert kernel.crc32(data) == zlib.crc32(data)


def test_non_ascii_text_takes_the_python_path(kernel: TextKernel) -> None:
    calls: list[bytes] = []

    def spy(data: bytes) -> features.TextCounts | None:
        calls.append(data)
        return kernel(data)

    text = "naïve café: solve 2x + 3 = 11 — why?\n```def f(): pass```"
    lowered = text.lower()
    assert features.text_counts(text, lowered, kernel=spy) == features.text_counts(text, lowered, kernel=None)
    assert calls == []
    assert _extract(text, kernel) == _extract(text, None)
    features.text_counts("plain ascii", "plain ascii", kernel=spy)
    assert calls == [b"plain ascii"]


def test_without_the_kernel_the_python_path_serves(clean_kernel: None) -> None:
    assert not features.text_kernel_in_use()
    f = extract_features([{"role": "user", "content": "Write a Python function, then prove it halts."}])
    assert f.get("code_signal") > 0


def test_a_kernel_that_declines_leaves_the_python_path(kernel: TextKernel) -> None:
    text = "Explain the proof step by step."
    assert features.text_counts(text, text.lower(), kernel=lambda data: None) == features.text_counts(
        text, text.lower(), kernel=None
    )


def test_installed_it_serves_extract_features_and_is_reused_from_the_cache(
    tmp_path: Path, clean_kernel: None
) -> None:
    messages = [{"role": "user", "content": "Explain why the sum of two odd numbers is even, step by step."}]
    python_features = extract_features(messages, {})
    assert text_kernel_install(tmp_path)
    assert features.text_kernel_in_use()
    assert extract_features(messages, {}) == python_features
    built = _library(tmp_path).stat().st_mtime_ns
    features.use_text_kernel(None)
    assert text_kernel_install(tmp_path, compile_if_missing=False)  # another process: cached library
    assert _library(tmp_path).stat().st_mtime_ns == built


def test_without_a_compiler_python_keeps_serving(
    tmp_path: Path, clean_kernel: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CC", "/nonexistent/cc")
    monkeypatch.setenv("PATH", "/nonexistent")
    assert text_kernel_install(tmp_path) is False
    assert not features.text_kernel_in_use()


@pytest.mark.parametrize(
    ("good", "bad"),
    [
        ("0x9E3779B1u", "0x9E3779B3u"),  # the bigram mix
        ("0xEDB88320u", "0xEDB88321u"),  # the crc32 polynomial
        ("out[9] = upper;", "out[9] = upper + (n > 60);"),  # the upper-case count, on longer texts only
        ("i += k;", "i += 1;"),  # overlapping substring counts
    ],
)
def test_the_install_check_refuses_a_kernel_that_disagrees(
    tmp_path: Path, clean_kernel: None, monkeypatch: pytest.MonkeyPatch, good: str, bad: str
) -> None:
    assert good in text_kernel.TEXT_KERNEL_SOURCE
    monkeypatch.setattr(text_kernel, "TEXT_KERNEL_SOURCE", text_kernel.TEXT_KERNEL_SOURCE.replace(good, bad))
    assert text_kernel_install(tmp_path) is False
    assert _library(tmp_path).exists()  # it was built, and refused
    assert not features.text_kernel_in_use()
