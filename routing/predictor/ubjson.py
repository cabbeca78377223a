"""A reader for the UBJSON that XGBoost's `save_model` / `save_raw("ubj")` writes, without xgboost.

Serving only needs the trees, and importing xgboost (which imports scikit-learn and SciPy when
they are installed) cost each gunicorn worker about 0.9 s of CPU and 78 MB of memory at every
start and --max-requests recycle. The artifact keeps XGBoost's own bytes; this decodes them into
the same document `json.loads(booster.save_raw("json"))` gives, which `ensemble_from_json`
reads (tests compare the two, tree by tree).

UBJSON (ubjson.org, draft 12) as XGBoost writes it: big-endian scalars, object keys as
length-prefixed strings, and numeric arrays in the optimised form `[ $ type # count` followed by
the raw values. Those arrays come back as Python lists; float32 ones as the shortest decimal that
round-trips, as XGBoost's JSON writer prints them, so every float is the one `json.loads` reads.
"""

from __future__ import annotations

import struct
from typing import Any

import numpy as np

# numeric marker → one big-endian value: struct reads a scalar, the numpy dtype an optimised array
_SCALAR = {
    k: struct.Struct(">" + f)
    for k, f in {b"i": "b", b"U": "B", b"I": "h", b"l": "i", b"L": "q", b"d": "f", b"D": "d"}.items()
}
_DTYPE = {k: np.dtype(s.format) for k, s in _SCALAR.items()}
_MAX_DEPTH = 64


class UBJSONError(ValueError):
    """Bytes that are not the UBJSON subset XGBoost writes."""


def loads(data: bytes | bytearray | memoryview) -> Any:
    reader = _Reader(bytes(data))
    value = reader.value(0)
    if reader.pos != len(reader.data):
        raise UBJSONError(f"{len(reader.data) - reader.pos} bytes after the document")
    return value


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, n: int) -> bytes:
        end = self.pos + n
        if n < 0 or end > len(self.data):
            raise UBJSONError(f"truncated at byte {self.pos}")
        chunk = self.data[self.pos : end]
        self.pos = end
        return chunk

    def marker(self) -> bytes:
        m = self.take(1)
        while m == b"N":  # no-op
            m = self.take(1)
        return m

    def number(self, m: bytes) -> int | float:
        scalar = _SCALAR.get(m)
        if scalar is None:
            raise UBJSONError(f"expected a number at byte {self.pos - 1}, found {m!r}")
        value: int | float = scalar.unpack(self.take(scalar.size))[0]
        return value

    def length(self) -> int:
        n = self.number(self.marker())
        if not isinstance(n, int) or n < 0:
            raise UBJSONError(f"bad length {n!r} at byte {self.pos}")
        return n

    def text(self) -> str:
        try:
            return self.take(self.length()).decode()
        except UnicodeDecodeError as exc:
            raise UBJSONError(f"string is not UTF-8: {exc}") from None

    def value(self, depth: int, m: bytes | None = None) -> Any:
        if depth > _MAX_DEPTH:
            raise UBJSONError("nested too deeply")
        m = m if m is not None else self.marker()
        if m == b"{":
            return self.mapping(depth)
        if m == b"[":
            return self.array(depth)
        if m == b"S" or m == b"H":  # high-precision numbers are strings too
            return self.text()
        if m == b"C":
            return self.take(1).decode("latin-1")
        if m == b"T":
            return True
        if m == b"F":
            return False
        if m == b"Z":
            return None
        return self.number(m)

    def container(self) -> tuple[bytes | None, int | None]:
        """The optimised container header: (element type or None, count or None)."""
        kind = count = None
        if self.data[self.pos : self.pos + 1] == b"$":
            self.pos += 1
            kind = self.take(1)
            if self.take(1) != b"#":
                raise UBJSONError(f"typed container without a count at byte {self.pos - 1}")
            count = self.length()
        elif self.data[self.pos : self.pos + 1] == b"#":
            self.pos += 1
            count = self.length()
        return kind, count

    def mapping(self, depth: int) -> dict[str, Any]:
        kind, count = self.container()
        out: dict[str, Any] = {}
        if count is None:
            while self.data[self.pos : self.pos + 1] != b"}":
                key = self.text()
                out[key] = self.value(depth + 1)
            self.pos += 1
            return out
        for _ in range(count):
            key = self.text()
            out[key] = self.value(depth + 1, kind)
        return out

    def array(self, depth: int) -> list[Any]:
        kind, count = self.container()
        if count is None:
            items: list[Any] = []
            while True:
                m = self.marker()
                if m == b"]":
                    return items
                items.append(self.value(depth + 1, m))
        dtype = _DTYPE.get(kind or b"")
        if dtype is None:
            return [self.value(depth + 1, kind) for _ in range(count)]
        values = np.frombuffer(self.take(count * dtype.itemsize), dtype=dtype)
        if kind == b"d":  # float32: the shortest decimal that round-trips, as the JSON writer prints
            return values.astype(str).astype(np.float64).tolist()
        return values.tolist()
