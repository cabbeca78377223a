"""routing.features.text_counts for ASCII text in C: the same words, counts and hashed word n-grams.

In Python the words of a 2.2 KB prompt (split, strip, Counter, signal look-ups, crc32, the n-gram
sort) and the character counts cost about 1.1 M instructions per request, nearly all interpreter
and numpy call overhead; this kernel does them in one call over the text's bytes. Only ASCII text
takes it (`str.isascii` is O(1)): there `str.lower`, `str.split` and the crc32 of a word's UTF-8
bytes are plain byte operations. Other text keeps the Python path.

Everything the kernel must agree with comes from routing.features at install time rather than
being copied into the C source: the character classes (str.split's whitespace as str.isspace
says, _STRIP, the digit, upper-case, _PUNCT and _MATH sets), the signal words (an open-addressed
table keyed by their zlib.crc32), and the substrings counted or looked for. Built once per
machine into SCOPE_VAR_DIR/forests like the character n-gram kernel (routing.char_kernel: file
lock, atomic rename) and installed only after it gave exactly text_counts' Python result on
probe texts. Without a C compiler, or if the check fails, the Python path keeps serving.
"""

from __future__ import annotations

import ctypes
import zlib
from pathlib import Path

import numpy as np

from routing import features
from routing.feature_words import SIGNAL_OF, SIGNAL_WORDS
from routing.predictor.compiled import ensure_kernel, install_kernel, library_path
from scope_site.green import OsThreadLocal

TEXT_KERNEL_VERSION = 1
_SYMBOL = "scope_text_counts"
TEXT_KERNEL_SOURCE = r"""
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

enum { SPACE = 1, STRIP = 2, DIGIT = 4, UPPER = 8, PUNCT = 16, MATH = 32 };
enum { ON_LOWERED = 1, FIRST_ONLY = 2 };
enum { N_FIXED = 13 };  /* words, word chars, distinct, 5 signals, digits, upper, punct, math, non-ASCII */

void scope_crc_table(uint32_t *table)
{
    for (uint32_t i = 0; i < 256; ++i) {
        uint32_t c = i;
        for (int k = 0; k < 8; ++k) c = (c & 1u) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
        table[i] = c;
    }
}

/* zlib.crc32(s) (CRC-32, reflected polynomial 0xEDB88320) with the table of scope_crc_table */
uint32_t scope_crc32(const uint8_t *s, long n, const uint32_t *table)
{
    uint32_t c = 0xFFFFFFFFu;
    for (long i = 0; i < n; ++i) c = table[(c ^ s[i]) & 255u] ^ (c >> 8);
    return c ^ 0xFFFFFFFFu;
}

/* str.count(p) (non-overlapping, left to right), or with first_only 1 if s contains p else 0 */
static long count_substring(const uint8_t *s, long n, const uint8_t *p, long k, int first_only)
{
    long found = 0, i = 0;
    if (k <= 0) return -1;  /* features never asks for the empty string */
    while (i + k <= n) {
        const uint8_t *hit = memchr(s + i, p[0], (size_t)(n - k + 1 - i));
        if (hit == NULL) break;
        i = hit - s;
        if (k == 1 || (hit[1] == p[1] && memcmp(hit, p, (size_t)k) == 0)) {
            ++found;
            if (first_only) break;
            i += k;
        } else {
            ++i;
        }
    }
    return found;
}

static void radix_pass(const uint32_t *in, uint32_t *out, long m, int shift)
{
    uint32_t count[1025];  /* m < 2^31 */
    memset(count, 0, sizeof count);
    for (long i = 0; i < m; ++i) count[((in[i] >> shift) & 1023u) + 1]++;
    for (int b = 0; b < 1024; ++b) count[b + 1] += count[b];
    for (long i = 0; i < m; ++i) out[count[(in[i] >> shift) & 1023u]++] = in[i];
}

/* text: n ASCII bytes. cls: 256 class bits. crc: scope_crc_table. Signal words: sig_slots (mask + 1
   slots, word index + 1 or 0, linear probing from crc32 & mask), sig_meta[3 * w] = offset in
   sig_blob, length, signal. Patterns: pat_meta[3 * j] = offset in pat_blob, length, flags.
   out: N_FIXED + n_pats counts; ids/counts: room for 2 * max_words - 1. Returns the number of
   distinct n-gram ids, or -1 (too long a text, no memory, a bucket mask over 20 bits). */
long scope_text_counts(const uint8_t *text, long n, const uint8_t *cls, const uint32_t *crc,
                       const int32_t *sig_slots, long sig_mask, const uint8_t *sig_blob,
                       const int32_t *sig_meta, const uint8_t *pat_blob, const int32_t *pat_meta,
                       long n_pats, long max_words, long bucket_mask, int64_t *out, uint32_t *ids,
                       uint32_t *counts)
{
    if (n < 0 || n > (1L << 30) || max_words < 1 || bucket_mask < 0 || bucket_mask >= (1L << 20))
        return -1;
    /* every word is followed by whitespace or the end: at most (n + 1) / 2 words */
    uint32_t cap = 16;
    while (cap < (uint32_t)n + 2) cap <<= 1;
    const uint32_t mask = cap - 1;
    const long n_hashed = max_words;
    uint8_t *lw = malloc((size_t)n + 1);
    uint32_t *slot_off = calloc(cap, sizeof *slot_off);  /* word offset + 1; 0: empty */
    uint32_t *slot_len = malloc(cap * sizeof *slot_len);
    uint32_t *slot_crc = malloc(cap * sizeof *slot_crc);
    int8_t *slot_sig = malloc(cap);
    uint32_t *hashes = malloc((size_t)n_hashed * sizeof *hashes);
    uint32_t *buckets = malloc((size_t)(2 * n_hashed) * sizeof *buckets);
    uint32_t *tmp = malloc((size_t)(2 * n_hashed) * sizeof *tmp);
    long result = -1;
    if (!lw || !slot_off || !slot_len || !slot_crc || !slot_sig || !hashes || !buckets || !tmp) goto done;

    int64_t digits = 0, upper = 0, punct = 0, math = 0, seen[256];
    uint8_t lower[256];
    memset(seen, 0, sizeof seen);
    for (int c = 0; c < 256; ++c) lower[c] = (cls[c] & UPPER) ? (uint8_t)(c + 32) : (uint8_t)c;
    for (long i = 0; i < n; ++i) {
        const uint8_t c = text[i];
        seen[c]++;
        lw[i] = lower[c];
    }
    for (int c = 0; c < 256; ++c) {
        digits += (cls[c] & DIGIT) ? seen[c] : 0;
        upper += (cls[c] & UPPER) ? seen[c] : 0;
        punct += (cls[c] & PUNCT) ? seen[c] : 0;
        math += (cls[c] & MATH) ? seen[c] : 0;
    }

    int64_t n_words = 0, word_chars = 0, distinct = 0, signals[5] = {0, 0, 0, 0, 0};
    long i = 0;
    while (i < n) {
        while (i < n && (cls[lw[i]] & SPACE)) ++i;
        if (i >= n) break;
        long a = i;
        while (i < n && !(cls[lw[i]] & SPACE)) ++i;
        long b = i;
        while (a < b && (cls[lw[a]] & STRIP)) ++a;
        while (b > a && (cls[lw[b - 1]] & STRIP)) --b;
        if (a == b) continue;
        const long len = b - a;
        const uint32_t h = scope_crc32(lw + a, len, crc);
        if (n_words < n_hashed) hashes[n_words] = h;
        ++n_words;
        word_chars += len;
        uint32_t s = h & mask;
        while (slot_off[s] != 0) {
            if (slot_crc[s] == h && slot_len[s] == (uint32_t)len && memcmp(lw + slot_off[s] - 1, lw + a, (size_t)len) == 0)
                break;
            s = (s + 1) & mask;
        }
        if (slot_off[s] == 0) {
            slot_off[s] = (uint32_t)a + 1;
            slot_len[s] = (uint32_t)len;
            slot_crc[s] = h;
            slot_sig[s] = -1;
            ++distinct;
            for (long t = h & sig_mask; sig_slots[t] != 0; t = (t + 1) & sig_mask) {
                const int32_t *w = sig_meta + 3 * (sig_slots[t] - 1);
                if (w[1] == len && memcmp(sig_blob + w[0], lw + a, (size_t)len) == 0) {
                    slot_sig[s] = (int8_t)w[2];
                    break;
                }
            }
        }
        if (slot_sig[s] >= 0) signals[slot_sig[s]]++;
    }

    out[0] = n_words;
    out[1] = word_chars;
    out[2] = distinct;
    for (int k = 0; k < 5; ++k) out[3 + k] = signals[k];
    out[8] = digits;
    out[9] = upper;
    out[10] = punct;
    out[11] = math;
    out[12] = 0;  /* ASCII text */
    for (long j = 0; j < n_pats; ++j) {
        const int32_t *p = pat_meta + 3 * j;
        out[N_FIXED + j] = count_substring((p[2] & ON_LOWERED) ? lw : text, n, pat_blob + p[0], p[1],
                                           (p[2] & FIRST_ONLY) != 0);
    }

    /* hashed_ngrams: unigrams and bigrams of the first max_words words, sorted, with their counts */
    const long nw = n_words < n_hashed ? (long)n_words : n_hashed;
    if (nw == 0) { result = 0; goto done; }
    const long m = 2 * nw - 1;
    const uint32_t bm = (uint32_t)bucket_mask;
    for (long w = 0; w < nw; ++w) buckets[w] = hashes[w] & bm;
    for (long w = 0; w + 1 < nw; ++w) buckets[nw + w] = ((hashes[w] * 0x9E3779B1u) ^ hashes[w + 1]) & bm;
    radix_pass(buckets, tmp, m, 0);
    radix_pass(tmp, buckets, m, 10);
    long runs = 0;
    for (long w = 0; w < m;) {
        long e = w + 1;
        while (e < m && buckets[e] == buckets[w]) ++e;
        ids[runs] = buckets[w];
        counts[runs] = (uint32_t)(e - w);
        ++runs;
        w = e;
    }
    result = runs;
done:
    free(lw);
    free(slot_off);
    free(slot_len);
    free(slot_crc);
    free(slot_sig);
    free(hashes);
    free(buckets);
    free(tmp);
    return result;
}
"""
_P, _L = ctypes.c_void_p, ctypes.c_long
_SPACE, _STRIP, _DIGIT, _UPPER, _PUNCT, _MATH = 1, 2, 4, 8, 16, 32
_ON_LOWERED, _FIRST_ONLY = 1, 2
N_FIXED = 13  # text_counts' counts before the substring ones
PROBE_TEXTS = (
    "",
    "a",
    "   \t\n  ",
    "Explain why this loop is slow: for i in range(n): total += price[i] * qty[i]. 17 * 3.25?",
    "Write a Python function that returns the n-th prime.\n```python\ndef prime(n):\n    pass\n```",
    "Solve for x: 2x + 3 = 11. What is x?\nA. 2\nB. 4\nC. 6\nD. 8\nAnswer:",
    '(A) yes (B) no\na) one\nb) two\nA) x\nB) y\n1. first\n2. second\n- bullet\nReturn JSON {"a": 1};\n',
    "x\x0by\x0cz\x1cw\x1dv\x1eu\x1ft\rs\x00NUL \\frac{1}{2} => == === ()() a==b def f():\n        return",
    " ".join(sorted(SIGNAL_OF)) + " " + " ".join(w.upper() + "." for w in sorted(SIGNAL_OF)),
    " ".join(f"{w}!" for words in SIGNAL_WORDS for w in sorted(words)[:5]) * 3,
    "word " * 1500 + "tail words after the first thousand",
    " ".join(f"w{i % 301}" for i in range(3000)),
    ".,;:!?()[]{}\"'`*_#<>/\\|=+-~@$%^& -- ... ``` '''" * 7,
    "".join(chr(c) for c in range(128)) * 3,
)


class _Buffers(OsThreadLocal):
    """Output arrays for the counts and n-grams, one set per OS thread (scope_site.green)."""

    def __init__(self, n_counts: int, max_words: int) -> None:
        self.out = np.empty(n_counts, dtype=np.int64)
        self.ids = np.empty(2 * max_words, dtype=np.uint32)
        self.counts = np.empty(2 * max_words, dtype=np.uint32)
        # raw addresses once: `array.ctypes.data` costs microseconds on every access
        self.addresses = (self.out.ctypes.data, self.ids.ctypes.data, self.counts.ctypes.data)


def class_table() -> bytes:
    """The byte classes the kernel reads, from what routing.features and str.split use."""
    table = bytearray(256)
    for c in range(128):
        ch = chr(c)
        table[c] = (
            (_SPACE if ch.isspace() else 0)  # str.split()'s whitespace: Py_UNICODE_ISSPACE, as str.isspace
            | (_STRIP if ch in features._STRIP else 0)
            | (_DIGIT if c in features._DIGIT_CHARS else 0)
            | (_UPPER if c in features._UPPER else 0)
            | (_PUNCT if c in features._PUNCT else 0)
            | (_MATH if c in features._MATH else 0)
        )
    return bytes(table)


def signal_table() -> tuple[np.ndarray, int, bytes, np.ndarray]:
    """(slots, mask, blob, meta): SIGNAL_OF as an open-addressed table keyed by zlib.crc32 of the word."""
    words = [(word.encode("utf-8"), signal) for word, signal in SIGNAL_OF.items()]
    size = 16
    while size < 4 * len(words):
        size <<= 1
    slots = np.zeros(size, dtype=np.int32)
    meta = np.zeros(3 * max(len(words), 1), dtype=np.int32)
    blob = bytearray()
    for index, (raw, signal) in enumerate(words):
        meta[3 * index : 3 * index + 3] = (len(blob), len(raw), signal)
        blob += raw
        slot = zlib.crc32(raw) & (size - 1)
        while slots[slot]:
            slot = (slot + 1) & (size - 1)
        slots[slot] = index + 1
    return slots, size - 1, bytes(blob), meta


def pattern_table() -> tuple[bytes, np.ndarray]:
    """(blob, meta): text_counts' substrings in its order, counted or looked for, in the text or lowered."""
    patterns = [(p, 0) for p in features._COUNTED]
    patterns += [(p, _FIRST_ONLY) for p in features._FOUND]
    patterns.append(("json", _FIRST_ONLY | _ON_LOWERED))
    meta = np.zeros(3 * len(patterns), dtype=np.int32)
    blob = bytearray()
    for index, (pattern, flags) in enumerate(patterns):
        raw = pattern.encode("ascii")
        meta[3 * index : 3 * index + 3] = (len(blob), len(raw), flags)
        blob += raw
    return bytes(blob), meta


class TextKernel:
    """features.text_counts of ASCII text (its bytes) from the compiled library; None when it declines."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lib = ctypes.CDLL(str(path))  # kept: the functions must not outlive their library
        fn = getattr(self._lib, _SYMBOL)
        fn.argtypes = (
            ctypes.c_char_p,  # text (bytes pass without a copy)
            _L,
            _P,  # cls
            _P,  # crc table
            _P,  # signal slots
            _L,
            _P,  # signal blob
            _P,  # signal meta
            _P,  # pattern blob
            _P,  # pattern meta
            _L,
            _L,
            _L,
            _P,  # out
            _P,  # ids
            _P,  # counts
        )
        fn.restype = _L
        self._fn = fn
        crc32 = self._lib.scope_crc32
        crc32.argtypes = (ctypes.c_char_p, _L, _P)
        crc32.restype = ctypes.c_uint32
        self._crc32 = crc32
        self._crc = np.zeros(256, dtype=np.uint32)
        self._lib.scope_crc_table.argtypes = (_P,)
        self._lib.scope_crc_table.restype = None
        self._lib.scope_crc_table(self._crc.ctypes.data)
        self._cls = np.frombuffer(class_table(), dtype=np.uint8).copy()
        slots, mask, blob, meta = signal_table()
        self._signal = (slots, np.frombuffer(blob or b"\0", dtype=np.uint8).copy(), meta)
        pat_blob, pat_meta = pattern_table()
        self._patterns = (np.frombuffer(pat_blob, dtype=np.uint8).copy(), pat_meta)
        self._n_pats = len(pat_meta) // 3
        self._max_words = features.NGRAM_MAX_WORDS
        self._head = (
            self._cls.ctypes.data,
            self._crc.ctypes.data,
            slots.ctypes.data,
            mask,
            self._signal[1].ctypes.data,
            meta.ctypes.data,
            self._patterns[0].ctypes.data,
            pat_meta.ctypes.data,
            self._n_pats,
            self._max_words,
            features.NGRAM_BUCKETS - 1,
        )
        self._buffers = _Buffers(N_FIXED + self._n_pats, self._max_words)

    def crc32(self, data: bytes) -> int:
        return int(self._crc32(data, len(data), self._crc.ctypes.data))

    def __call__(self, data: bytes) -> features.TextCounts | None:
        b = self._buffers
        m = self._fn(data, len(data), *self._head, *b.addresses)
        if m < 0:
            return None
        return tuple(b.out.tolist()), tuple(b.ids[:m].tolist()), tuple(b.counts[:m].tolist())


def _library(cache_dir: Path) -> Path:
    return library_path(cache_dir, "text", TEXT_KERNEL_VERSION, TEXT_KERNEL_SOURCE)


def _agrees(kernel: TextKernel) -> bool:
    """The Python result exactly on the probe texts, and zlib's crc32 on their bytes."""
    for text in PROBE_TEXTS:
        lowered = text.lower()
        if features.text_counts(text, lowered, kernel=kernel) != features.text_counts(
            text, lowered, kernel=None
        ):
            return False
        raw = text.encode("ascii")
        if kernel.crc32(raw) != zlib.crc32(raw):
            return False
    return True


def text_kernel_install(cache_dir: Path, *, compile_if_missing: bool = True) -> bool:
    """Serve routing.features' word and character counts of ASCII text from the compiled kernel; False when it cannot."""
    return install_kernel(
        _library(cache_dir),
        TEXT_KERNEL_SOURCE,
        load=TextKernel,
        agrees=_agrees,
        use=features.use_text_kernel,
        what="text count",
        fallback="Python",
        compile_if_missing=compile_if_missing,
    )


def text_kernel_ensure(cache_dir: Path) -> None:
    """At once if the library is cached, else once a background compile is done (never blocks a request)."""
    ensure_kernel(text_kernel_install, features.text_kernel_in_use, cache_dir, "scope-text-compile")
