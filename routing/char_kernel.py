"""The character n-grams of routing.features.char_ngrams in C: the same hashes, buckets and counts.

The numpy version costs about 0.07 ms per request, nearly all of it numpy's fixed per-call cost
(a dozen array calls per n-gram length); this kernel does the whole walk in one call. It is built
once per machine into SCOPE_VAR_DIR/forests (beside the tree kernel, with the same file lock and
atomic rename), and installed only after it gave byte-identical results to the numpy version on
probe texts. Without a C compiler, or if the check fails, the numpy version keeps serving.
"""

from __future__ import annotations

import ctypes
from pathlib import Path

import numpy as np

from routing import features
from routing.predictor.compiled import ensure_kernel, install_kernel, library_path
from scope_site.green import OsThreadLocal

CHAR_KERNEL_VERSION = 3
_SYMBOL = "scope_char_ngrams"
_ASCII_SYMBOL = "scope_char_ngrams_ascii"
CHAR_KERNEL_SOURCE = r"""
#include <stdint.h>
#include <string.h>

/* Each distinct one of m 16-bit keys + base, in increasing order, with its count (mod 2^16, as
   numpy's cast of the counts to uint16): counted in `table` (65,536 counters) and found again in
   order through `seen` (a bitmap of 1,024 words), both all zero before and after: an entry is
   cleared as it is read. No sort: on the bench's 2 KB prompt the whole call took 21-28 us in a
   loop, against 35-42 us with a two-pass radix sort of the keys (2026-11-30). */
static long runs(const uint16_t *keys, long m, uint32_t base, uint16_t *table, uint64_t *seen,
                 uint32_t *ids, uint16_t *counts)
{
    for (long i = 0; i < m; ++i) {
        const unsigned k = keys[i];
        table[k]++;
        seen[k >> 6] |= (uint64_t)1 << (k & 63);
    }
    long out = 0;
    for (long w = 0; w < 1024; ++w) {
        uint64_t bits = seen[w];
        if (!bits) continue;
        seen[w] = 0;
        do {
            const long k = (w << 6) | __builtin_ctzll(bits);
            ids[out] = base + (uint32_t)k;
            counts[out] = table[k];
            table[k] = 0;
            ++out;
            bits &= bits - 1;
        } while (bits);
    }
    return out;
}

/* cp: n code points; h: n, keys: n scratch; table/seen: runs()'s; ids/counts: room for 3n.
   Returns how many written. */
long scope_char_ngrams(const uint32_t *cp, long n, uint32_t *h, uint16_t *keys, uint16_t *table,
                       uint64_t *seen, uint32_t *ids, uint16_t *counts)
{
    const uint32_t mix = 0x9E3779B1u, final = 0x2C1B3C6Du;
    const uint32_t salt[3] = {0x85EBCA6Bu, 0xC2B2AE35u, 0x27D4EB2Fu};
    long total = 0;
    for (long i = 0; i < n; ++i) h[i] = cp[i];
    for (int k = 2; k <= 4; ++k) {
        const long m = n - k + 1;
        if (m <= 0) break;
        for (long i = 0; i < m; ++i) {
            h[i] = (h[i] * mix) ^ cp[i + k - 1];
            keys[i] = (uint16_t)(((h[i] ^ salt[k - 2]) * final) >> 16);
        }
        total += runs(keys, m, (uint32_t)(k - 2) << 16, table, seen, ids + total, counts + total);
    }
    return total;
}

/* The same for lowered ASCII text as it comes, prepared here as char_ngrams prepares it: words
   split at str.split()'s ASCII whitespace (space, \t \n \v \f \r and \x1c-\x1f) joined by one
   space, cut at max_chars, digits 1-9 read as 0. cp: room for max_chars code points. */
long scope_char_ngrams_ascii(const unsigned char *s, long len, long max_chars, uint32_t *cp,
                             uint32_t *h, uint16_t *keys, uint16_t *table, uint64_t *seen,
                             uint32_t *ids, uint16_t *counts)
{
    long n = 0;
    int gap = 0;
    for (long i = 0; i < len && n < max_chars; ++i) {
        const unsigned char c = s[i];
        if (c == ' ' || (c >= 9 && c <= 13) || (c >= 28 && c <= 31)) {
            gap = n > 0;
            continue;
        }
        if (gap) {
            cp[n++] = ' ';
            gap = 0;
            if (n == max_chars) break;
        }
        cp[n++] = (c >= '1' && c <= '9') ? '0' : c;
    }
    if (n < 2) return 0;
    return scope_char_ngrams(cp, n, h, keys, table, seen, ids, counts);
}
"""
_P, _L = ctypes.c_void_p, ctypes.c_long
PROBE_TEXTS = (
    "a",
    "ab",
    "abc",
    "Explain why this loop is slow: for i in range(n): total += price[i] * qty[i]. 17 * 3.25?",
    "naïve café — 東京 🙂 résumé\tTABS\nand  spaces " * 20,
    "x" * 5000,
    "".join(chr(c) for c in range(32, 4000, 7)),
    # ASCII, prepared in C: every whitespace str.split() knows, at the ends too, digits, the cut
    " \t\x0b\x0clead 1234567890\r\n\x1c\x1d\x1e\x1f  mid\x1fword\x0b  end \n\x0c",
    "\x00\x01\x7f\x1b 9 8a\x08b",
    ("word  \t" * 700) + "tail",
    "ab " * 1365 + "cd",
    "".join(chr(c) for c in range(128)) * 3,
)


class _Buffers(OsThreadLocal):
    """Scratch and output arrays for texts of up to `size` characters, one set per OS thread
    (scope_site.green)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.h = np.empty(size, dtype=np.uint32)
        self.keys = np.empty(size, dtype=np.uint16)
        self.table = np.zeros(1 << 16, dtype=np.uint16)  # runs()'s counters and bitmap: zero between calls
        self.seen = np.zeros(1024, dtype=np.uint64)
        self.ids = np.empty(3 * size, dtype="<u4")
        self.counts = np.empty(3 * size, dtype="<u2")
        self.cp = np.empty(size, dtype=np.uint32)  # the ASCII entry's prepared code points
        # raw addresses once: `array.ctypes.data` costs microseconds on every access
        self.addresses = tuple(
            a.ctypes.data for a in (self.h, self.keys, self.table, self.seen, self.ids, self.counts)
        )
        self.ascii_addresses = (self.cp.ctypes.data, *self.addresses)


class CharKernel:
    """char_ngrams' packed (ids, counts) for UTF-32-LE text, from the compiled library."""

    def __init__(self, path: Path, *, size: int = features.CHAR_MAX_CHARS) -> None:
        self.path = path
        self._lib = ctypes.CDLL(str(path))  # kept: the function must not outlive its library
        fn = getattr(self._lib, _SYMBOL)
        fn.argtypes = (ctypes.c_char_p, _L, _P, _P, _P, _P, _P, _P)  # bytes pass without a copy
        fn.restype = _L
        self._fn = fn
        ascii_fn = getattr(self._lib, _ASCII_SYMBOL)
        ascii_fn.argtypes = (ctypes.c_char_p, _L, _L, _P, _P, _P, _P, _P, _P, _P)
        ascii_fn.restype = _L
        self._ascii_fn = ascii_fn
        self._buffers = _Buffers(size)

    def __call__(self, data: bytes) -> tuple[bytes, bytes]:
        n = len(data) // 4
        b = self._buffers
        if n > b.size:  # longer than features.CHAR_MAX_CHARS: not what char_ngrams sends
            b = _Buffers(n)
        m = self._fn(data, n, *b.addresses)
        return b.ids[:m].tobytes(), b.counts[:m].tobytes()

    def ascii(self, lowered: bytes) -> tuple[bytes, bytes]:
        """Of lowered ASCII text as it comes: the kernel splits, joins, cuts and maps the digits."""
        b = self._buffers
        if b.size < features.CHAR_MAX_CHARS:  # a kernel made with smaller buffers
            b = _Buffers(features.CHAR_MAX_CHARS)
        m = self._ascii_fn(lowered, len(lowered), features.CHAR_MAX_CHARS, *b.ascii_addresses)
        return b.ids[:m].tobytes(), b.counts[:m].tobytes()


def _library(cache_dir: Path) -> Path:
    return library_path(cache_dir, "char", CHAR_KERNEL_VERSION, CHAR_KERNEL_SOURCE)


def _agrees(kernel: features.CompiledCharNgrams) -> bool:
    """Byte-identical to the numpy version on the probe texts (ASCII ones through the ASCII entry)."""
    for text in PROBE_TEXTS:
        if features.char_ngrams(text.lower(), kernel=kernel) != features.char_ngrams(
            text.lower(), kernel=None
        ):
            return False
    return True


def char_kernel_install(cache_dir: Path, *, compile_if_missing: bool = True) -> bool:
    """Serve routing.features' character n-grams from the compiled kernel; False when it cannot."""
    return install_kernel(
        _library(cache_dir),
        CHAR_KERNEL_SOURCE,
        load=CharKernel,
        agrees=_agrees,
        use=features.use_char_kernel,
        what="character n-gram",
        fallback="numpy",
        compile_if_missing=compile_if_missing,
    )


def char_kernel_ensure(cache_dir: Path) -> None:
    """At once if the library is cached, else once a background compile is done (never blocks a request)."""
    ensure_kernel(char_kernel_install, features.char_kernel_in_use, cache_dir, "scope-char-compile")
