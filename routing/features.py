"""Request analyzer: messages + metadata → an ordered, versioned feature vector.

Pure (no Django, no I/O) and shared by the live route path, training and `predict_outcomes`, so
serving and training can never disagree. No per-signal regexes and no Python loop per word: the
words go through C-level map/filter/Counter with per-process memos (stripped token, word hash),
the topic signals one set intersection of the distinct words with the signal words, the rest
is `str.count` / `bytes.translate`, and the n-grams one numpy sort.
"""

from __future__ import annotations

import base64
import binascii
import math
import zlib
from array import array
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import numpy as np

from routing.feature_words import SIGNAL_OF

# 2: the hashed word n-grams (`ngram_ids`/`ngram_counts`) joined the vector and the decision log
FEATURE_SCHEMA_VERSION = 2

# Hashed word uni- and bigrams: the predictor's text representation. A decision row that stores
# the prompt rebuilds them from it (text_ngrams); a redacted row logs them, so retraining never
# needs the raw prompt.
NGRAM_BUCKETS = 1 << 20
NGRAM_MAX_WORDS = 1024  # long prompts are represented by their first words: bounded time and log size
_BIGRAM_MIX = 0x9E3779B1
_STRIP = ".,;:!?()[]{}\"'`*_#<>/\\|=+-~@$%^&"
if array("I").itemsize != 4:  # hashed_ngrams packs crc32 values as 32-bit unsigned
    raise ImportError("routing.features needs a 4-byte array('I')")
_MEMO_LIMIT = 200_000  # entries per memo: bounded memory in a long-lived process

_T = TypeVar("_T")


class _Memo(dict[str, _T]):
    """A pure function of a string, remembered per process: hits are one C-level dict look-up."""

    __slots__ = ("_fn",)

    def __init__(self, fn: Callable[[str], _T]) -> None:
        super().__init__()
        self._fn = fn

    def __missing__(self, key: str) -> _T:
        if len(self) > _MEMO_LIMIT:
            self.clear()
        value = self[key] = self._fn(key)
        return value


_word_hashes: _Memo[int] = _Memo(lambda word: zlib.crc32(word.encode("utf-8", "surrogatepass")))
_stripped: _Memo[str] = _Memo(lambda raw: raw.strip(_STRIP))
_UPPER = bytes(range(65, 91))

_CHOICE_MARKERS = ("\nA.", "\nB.", "\nA)", "\nB)", "(A)", "(B)", "\na)", "\nb)")
_DIGIT_CHARS = b"0123456789"
_PUNCT = b".,;:!?()[]{}\"'"
_MATH = b"+*/=^<>%$"
# the substrings _features_from_text counts in the text (str.count: non-overlapping), in text_counts' order
_COUNTED = ("{", "}", ";\n", "()", "=>", "==", "def ", "    ", "\\frac", "?", "\n", "\n1.", "\n2.", "\n- ")
# ... and the ones whose presence it reads (then "json" in the lowered text)
_FOUND = ("```", *_CHOICE_MARKERS)

FEATURE_NAMES: tuple[str, ...] = (
    "log_chars",
    "approx_tokens",
    "log_tokens",
    "n_messages",
    "n_user_turns",
    "has_system",
    "system_chars_log",
    "last_user_share",
    "n_lines_log",
    "n_words_log",
    "avg_word_len",
    "unique_word_ratio",
    "frac_digits",
    "frac_upper",
    "frac_non_ascii",
    "frac_punct",
    "n_questions",
    "has_code_block",
    "code_signal",
    "math_signal",
    "math_symbols",
    "reasoning_signal",
    "extraction_signal",
    "creative_signal",
    "multilingual",
    "multiple_choice",
    "has_numbers_list",
    "json_requested",
    "max_tokens_log",
    "temperature",
)
N_FEATURES = len(FEATURE_NAMES)


@dataclass(frozen=True, slots=True)
class RequestFeatures:
    """The analyzer's output: `values` in FEATURE_NAMES order, plus the text the predictor may hash."""

    values: tuple[float, ...]
    text: str
    input_tokens: int
    schema_version: int = FEATURE_SCHEMA_VERSION
    ngram_ids: tuple[int, ...] = ()  # sorted hashed n-gram buckets of the text
    ngram_counts: tuple[int, ...] = ()
    # the text's hashed character 2-4-grams (char_ngrams): sorted distinct buckets as little-endian
    # uint32 bytes, their counts as little-endian uint16 bytes (numpy reads them without a copy into
    # Python ints). Not logged: a row that stores its prompt rebuilds them from it, a redacted row
    # has none.
    char_ids: bytes = b""
    char_counts: bytes = b""

    def as_dict(self, *, ngrams: bool = True) -> dict[str, Any]:
        """The logged form: every named value plus, unless `ngrams` is False, the hashed n-grams.

        A decision row that stores the prompt leaves the n-grams out: they are a function of the
        prompt (text_ngrams), and at about 2.4 KB they were a third of the row. A redacted row
        keeps them, since nothing else stands for the text (see request_features_from_log).

        The n-grams travel packed: base64 of the ids as little-endian uint32 followed by the counts
        as little-endian uint16 (a count is at most NGRAM_MAX_WORDS). One short string instead of
        hundreds of JSON numbers keeps the row small and cheap to encode, hash and store.
        """
        out: dict[str, Any] = self.named()
        if ngrams:
            out["ngrams"] = {"packed": pack_ngrams(self.ngram_ids, self.ngram_counts)}
        return out

    def named(self) -> dict[str, float]:
        """Every named value (what rules and the prior read), without the n-grams."""
        return dict(zip(FEATURE_NAMES, self.values, strict=True))

    def get(self, name: str) -> float:
        return self.values[FEATURE_NAMES.index(name)]


class FeatureLogError(ValueError):
    """A logged feature dict that cannot be turned back into RequestFeatures."""


def request_features_from_log(
    features: Mapping[str, Any], schema_version: int = FEATURE_SCHEMA_VERSION, prompt: str = ""
) -> RequestFeatures:
    """Rebuild RequestFeatures from a decision row's `features` JSON and `prompt` (what-if replay,
    retraining).

    The hashed n-grams come from the logged features when the row has them (a redacted row), else
    from the stored prompt; the character n-grams and the text (which the text heads' multiple-choice
    block reads) come from the stored prompt only: a redacted row has neither, so its heads read
    the words alone.
    """
    if schema_version != FEATURE_SCHEMA_VERSION:
        raise FeatureLogError(f"feature schema {schema_version} is not the current {FEATURE_SCHEMA_VERSION}")
    try:
        values = tuple(float(features[name]) for name in FEATURE_NAMES)
        ngrams = features.get("ngrams")
        if ngrams is None:
            ids, counts = text_ngrams(prompt)
        elif "packed" in ngrams:
            ids, counts = unpack_ngrams(ngrams["packed"])
        else:  # rows logged before the packed form
            ids = tuple(int(i) for i in ngrams.get("ids", ()))
            counts = tuple(int(c) for c in ngrams.get("counts", ()))
    except (KeyError, TypeError, ValueError, AttributeError, binascii.Error) as exc:
        raise FeatureLogError(f"logged features are incomplete or malformed: {exc}") from None
    if len(ids) != len(counts):
        raise FeatureLogError("logged n-gram ids and counts differ in length")
    char_ids, char_counts = text_char_ngrams(prompt) if prompt else (b"", b"")
    return RequestFeatures(
        values=values,
        text=prompt,
        input_tokens=int(values[FEATURE_NAMES.index("approx_tokens")]),
        schema_version=schema_version,
        ngram_ids=ids,
        ngram_counts=counts,
        char_ids=char_ids,
        char_counts=char_counts,
    )


def pack_ngrams(ids: Sequence[int], counts: Sequence[int]) -> str:
    """The logged form of hashed n-grams (see RequestFeatures.as_dict)."""
    raw = np.asarray(ids, dtype="<u4").tobytes() + np.asarray(counts, dtype="<u2").tobytes()
    return base64.b64encode(raw).decode("ascii")


def unpack_ngrams(packed: str) -> tuple[tuple[int, ...], tuple[int, ...]]:
    raw = base64.b64decode(packed.encode("ascii"), validate=True)
    if len(raw) % 6:
        raise ValueError("packed n-grams are not whole (uint32 id, uint16 count) pairs")
    n = len(raw) // 6
    ids = np.frombuffer(raw, dtype="<u4", count=n)
    counts = np.frombuffer(raw, dtype="<u2", count=n, offset=4 * n)
    if n and (
        bool((ids[1:] <= ids[:-1]).any())
        or int(ids[-1]) >= NGRAM_BUCKETS
        or not 1 <= int(counts.min()) <= int(counts.max()) <= NGRAM_MAX_WORDS
    ):
        raise ValueError("packed n-grams are not sorted distinct buckets with counts of 1..NGRAM_MAX_WORDS")
    return tuple(ids.tolist()), tuple(counts.tolist())


def _words(lowered: str) -> list[str]:
    return list(filter(None, map(_stripped.__getitem__, lowered.split())))


def text_ngrams(text: str) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The hashed n-grams extract_features gives a request whose predictor text is `text`."""
    return hashed_ngrams(_words(text.lower()))


def text_char_ngrams(text: str) -> tuple[bytes, bytes]:
    """The hashed character n-grams extract_features gives a request whose predictor text is `text`."""
    return char_ngrams(text.lower())


# Hashed character 2-, 3- and 4-grams of the lowered, whitespace-collapsed text with every digit
# read as 0: the text heads' second input (predictor/text.py and fit.py say what they bought).
# Without the folding, digit fragments shared by a run of numbered prompts (ids, counters) let the
# heads tell those prompts apart from all others, and live feedback on them stopped generalising
# (tests/feedback/test_retraining.py); mmlu APGR was within noise either way (0.694 vs 0.693).
CHAR_MAX_CHARS = 4096  # long prompts are represented by their first characters: bounded time
CHAR_BUCKETS = 3 << 16  # 65,536 buckets for each of the 2-, 3- and 4-grams (ids below this)
_CHAR_MIX = np.uint32(0x9E3779B1)
_CHAR_SALT = (np.uint32(0x85EBCA6B), np.uint32(0xC2B2AE35), np.uint32(0x27D4EB2F))
_CHAR_FINAL = np.uint32(0x2C1B3C6D)
_DIGITS = str.maketrans("123456789", "000000000")


class CompiledCharNgrams(Protocol):
    """char_ngrams in C (routing.char_kernel): packed (ids, counts), byte-identical to numpy's."""

    def __call__(self, data: bytes) -> tuple[bytes, bytes]:
        """Of the prepared text (split, joined, cut, digits mapped) as UTF-32-LE."""
        ...

    def ascii(self, lowered: bytes) -> tuple[bytes, bytes]:
        """Of lowered ASCII text as it comes: the kernel prepares it as char_ngrams does."""
        ...


# routing.char_kernel installs the same computation in C (checked byte-identical first)
_char_kernel: CompiledCharNgrams | None = None
_UNSET: Any = object()


def use_char_kernel(kernel: CompiledCharNgrams | None) -> None:
    global _char_kernel
    _char_kernel = kernel


def char_kernel_in_use() -> bool:
    return _char_kernel is not None


def char_ngrams(lowered: str, *, kernel: Any = _UNSET) -> tuple[bytes, bytes]:
    """(bucket ids, counts) of the character 2-4-grams of `lowered`, packed as in RequestFeatures.

    Stable across processes: a k-gram's hash is the polynomial (multiply by _CHAR_MIX, xor the next
    code point, in uint32) of its code points, salted by k and multiplied once more; its top 16 bits
    pick one of 65,536 buckets of the k-grams' own range (bucket id (k - 2) * 65,536 + those bits).
    16-bit keys are sorted by radix: about a quarter of the time of sorting 32-bit ones.
    """
    compiled = _char_kernel if kernel is _UNSET else kernel
    if compiled is not None and lowered.isascii():
        return compiled.ascii(lowered.encode("ascii"))  # prepared in C, as below
    s = " ".join(lowered.split())[:CHAR_MAX_CHARS].translate(_DIGITS)
    if len(s) < 2:
        return b"", b""
    data = s.encode("utf-32-le", "surrogatepass")
    if compiled is not None:
        return compiled(data)
    cp = np.frombuffer(data, dtype=np.uint32)
    ids, counts = [], []
    h = cp
    for k, salt in zip((2, 3, 4), _CHAR_SALT, strict=True):
        if len(cp) < k:
            break
        h = h[:-1] * _CHAR_MIX
        h ^= cp[k - 1 :]
        g = h ^ salt
        g *= _CHAR_FINAL
        keys = (g >> np.uint32(16)).astype(np.uint16)
        keys.sort(kind="stable")
        n = len(keys)
        edge = np.empty(n + 1, dtype=bool)
        edge[0] = edge[n] = True
        np.not_equal(keys[1:], keys[:-1], out=edge[1:n])
        bounds = edge.nonzero()[0]
        ids.append(keys[bounds[:-1]].astype("<u4") + np.uint32((k - 2) << 16))  # < CHAR_BUCKETS
        counts.append(bounds[1:] - bounds[:-1])
    return np.concatenate(ids).tobytes(), np.concatenate(counts).astype("<u2").tobytes()


TextCounts = tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]  # see text_counts

# routing.text_kernel installs text_counts for ASCII text in C (checked identical first)
_text_kernel: Callable[[bytes], TextCounts | None] | None = None  # ASCII bytes of the text → text_counts


def use_text_kernel(kernel: Callable[[bytes], TextCounts | None] | None) -> None:
    global _text_kernel
    _text_kernel = kernel


def text_kernel_in_use() -> bool:
    return _text_kernel is not None


def text_counts(text: str, lowered: str, *, kernel: Any = _UNSET) -> TextCounts:
    """Every integer _features_from_text derives from the words and characters of `text`.

    (counts, ngram ids, ngram counts): counts are n_words, the total length of the words, the
    number of distinct words, the five signal counts (feature_words.SIGNAL_OF), the ASCII digits,
    upper-case letters, _PUNCT and _MATH characters, the non-ASCII characters, then text.count of
    each of _COUNTED, 1/0 for each of _FOUND in the text and for "json" in `lowered`; the n-grams
    are hashed_ngrams of the words. For ASCII text the compiled kernel gives the same integers.
    """
    compiled = _text_kernel if kernel is _UNSET else kernel
    if compiled is not None and text.isascii():
        got = compiled(text.encode("ascii"))
        if got is not None:
            return got
    words = _words(lowered)
    # over distinct words: each word belongs to one signal list at most (feature_words.SIGNAL_OF)
    seen = Counter(words)
    signals = [0, 0, 0, 0, 0]
    for word in SIGNAL_OF.keys() & seen.keys():
        signals[SIGNAL_OF[word]] += seen[word]
    ascii_bytes = text.encode("ascii", "ignore")
    ascii_len = len(ascii_bytes)
    counts = (
        len(words),
        len("".join(words)),
        len(seen),
        *signals,
        ascii_len - len(ascii_bytes.translate(None, _DIGIT_CHARS)),
        ascii_len - len(ascii_bytes.translate(None, _UPPER)),
        ascii_len - len(ascii_bytes.translate(None, _PUNCT)),
        ascii_len - len(ascii_bytes.translate(None, _MATH)),
        len(text) - ascii_len,
        *map(text.count, _COUNTED),
        *(int(marker in text) for marker in _FOUND),
        int("json" in lowered),
    )
    ngram_ids, ngram_counts = hashed_ngrams(words)
    return counts, ngram_ids, ngram_counts


def word_ngram_hashes(words: Sequence[str]) -> np.ndarray:
    """uint32 hashes of the word unigrams, then the bigrams, of the first NGRAM_MAX_WORDS words, not
    yet reduced to buckets: hashed_ngrams' and the text heads' multiple-choice block's (text.py)."""
    # crc32 fits in 32 bits, and the low bits of a wrapped product equal those of the exact product
    # (the bigram hash was defined on uint64), so uint32 arithmetic gives the same buckets
    arr = np.frombuffer(array("I", map(_word_hashes.__getitem__, words[:NGRAM_MAX_WORDS])), dtype=np.uint32)
    out = np.empty(max(2 * len(arr) - 1, 0), dtype=np.uint32)
    out[: len(arr)] = arr
    np.multiply(arr[:-1], np.uint32(_BIGRAM_MIX), out=out[len(arr) :])
    out[len(arr) :] ^= arr[1:]
    return out


def text_word_ngram_hashes(text: str) -> np.ndarray:
    """word_ngram_hashes of `text` as the features read its words (lowered, split, stripped)."""
    return word_ngram_hashes(_words(text.lower()))


def hashed_ngrams(words: Sequence[str]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Sorted (bucket ids, counts) of the word unigrams and bigrams; stable across processes."""
    if not words:
        return (), ()
    buckets = word_ngram_hashes(words)
    n = len(buckets)
    buckets &= np.uint32(NGRAM_BUCKETS - 1)
    # np.unique(buckets, return_counts=True), with fewer calls
    buckets.sort()
    edge = np.empty(n + 1, dtype=bool)
    edge[0] = edge[n] = True
    np.not_equal(buckets[1:], buckets[:-1], out=edge[1:n])
    bounds = edge.nonzero()[0]
    counts = bounds[1:] - bounds[:-1]
    return tuple(buckets[bounds[:-1]].tolist()), tuple(counts.tolist())


def message_text(content: Any) -> str:
    """Text of one OpenAI message `content`: a string or a list of parts ({"type": "text", ...})."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(
            str(part.get("text", ""))
            for part in content
            if isinstance(part, Mapping) and part.get("type") == "text"
        )
    return ""


def estimate_tokens(text: str) -> int:
    """BENCHMARK.md's convention: ceil(chars / 4)."""
    return math.ceil(len(text) / 4)


def extract_features(
    messages: Sequence[Mapping[str, Any]], metadata: Mapping[str, Any] | None = None
) -> RequestFeatures:
    metadata = metadata or {}
    system_parts: list[str] = []
    user_parts: list[str] = []
    other_parts: list[str] = []
    for message in messages:
        text = message_text(message.get("content"))
        role = message.get("role")
        if role == "system" or role == "developer":
            system_parts.append(text)
        elif role == "user":
            user_parts.append(text)
        else:
            other_parts.append(text)
    last_user = user_parts[-1] if user_parts else ""
    # the prompt as the predictor sees it: every user turn (the task) after the system prompt
    text = "\n".join(system_parts + user_parts) if system_parts else "\n".join(user_parts)
    full_chars = len(text) + sum(len(p) for p in other_parts)
    return _features_from_text(
        text,
        total_chars=full_chars,
        n_messages=len(messages),
        n_user_turns=len(user_parts),
        system_chars=sum(len(p) for p in system_parts),
        last_user_chars=len(last_user),
        metadata=metadata,
    )


def extract_prompt_features(prompt: str) -> RequestFeatures:
    """Features of a bare prompt (imported evaluation data): one user message."""
    return extract_features([{"role": "user", "content": prompt}])


def _features_from_text(
    text: str,
    *,
    total_chars: int,
    n_messages: int,
    n_user_turns: int,
    system_chars: int,
    last_user_chars: int,
    metadata: Mapping[str, Any],
) -> RequestFeatures:
    n_chars = len(text)
    tokens = math.ceil(total_chars / 4)
    lowered = text.lower()
    counts, ngram_ids, ngram_counts = text_counts(text, lowered)
    (n_words, total_word_len, n_distinct, code, math_, reasoning, extraction, creative) = counts[:8]
    (digits, upper, punct, math_chars, non_ascii) = counts[8:13]
    (
        n_open,
        n_close,
        n_semicolon_lines,
        n_calls,
        n_arrows,
        n_equals,
        n_defs,
        n_indents,
        n_fracs,
        n_questions,
        n_lines,
        n_first_items,
        n_second_items,
        n_bullets,
    ) = counts[13 : 13 + len(_COUNTED)]
    has_fence, *markers, has_json = counts[13 + len(_COUNTED) :]
    denom = max(n_chars, 1)
    code_syntax = n_open + n_close + n_semicolon_lines + n_calls + n_arrows + n_equals + n_defs + n_indents
    math_symbols = math_chars + n_fracs
    has_code_block = 1.0 if has_fence else 0.0
    per_100_words = 100.0 / max(n_words, 1)
    max_tokens = metadata.get("max_tokens")
    temperature = metadata.get("temperature")
    response_format = metadata.get("response_format")
    json_requested = (
        1.0
        if (
            (
                isinstance(response_format, Mapping)
                and response_format.get("type") in {"json_object", "json_schema"}
            )
            or has_json
        )
        else 0.0
    )
    values = (
        math.log1p(n_chars),
        float(tokens),
        math.log1p(tokens),
        float(n_messages),
        float(n_user_turns),
        1.0 if system_chars else 0.0,
        math.log1p(system_chars),
        last_user_chars / denom,
        math.log1p(n_lines),
        math.log1p(n_words),
        total_word_len / max(n_words, 1),
        n_distinct / max(n_words, 1),
        digits / denom,
        upper / denom,
        non_ascii / denom,
        punct / denom,
        float(n_questions),
        has_code_block,
        code * per_100_words + min(code_syntax, 50) / 5.0 + 3.0 * has_code_block,
        math_ * per_100_words + min(math_symbols, 50) / 5.0,
        math_symbols / denom * 100.0,
        reasoning * per_100_words,
        extraction * per_100_words,
        creative * per_100_words,
        non_ascii / denom if non_ascii > 0.05 * denom else 0.0,
        1.0 if sum(markers) >= 2 else 0.0,
        float(min(n_first_items + n_second_items + n_bullets, 50)),
        json_requested,
        math.log1p(max_tokens) if isinstance(max_tokens, int | float) and max_tokens > 0 else 0.0,
        float(temperature) if isinstance(temperature, int | float) else -1.0,
    )
    char_ids, char_counts = char_ngrams(lowered)
    return RequestFeatures(
        values=values,
        text=text,
        input_tokens=tokens,
        ngram_ids=ngram_ids,
        ngram_counts=ngram_counts,
        char_ids=char_ids,
        char_counts=char_counts,
    )
