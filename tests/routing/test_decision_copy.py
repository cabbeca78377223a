"""The COPY text line a worker sends and the cell texts the writer binds from it."""

from __future__ import annotations

from hypothesis import example, given
from hypothesis import strategies as st

from routing.services.decision_copy import _escape, _escape_json
from routing.services.decision_writer import copy_line_values

# what the worker's texts may hold: everything but NUL (no row stores one), the COPY specials often
_TEXT = st.text(
    alphabet=st.one_of(
        st.sampled_from("\\\t\n\rNnrt"),
        st.characters(exclude_categories=["Cs"], exclude_characters="\x00"),
    )
)


@given(st.lists(st.one_of(st.none(), _TEXT), min_size=1, max_size=6))
@example(["\\n", "\\\t\\", "\\N", "\n\\", ""])  # a backslash before n, t or N; one after a newline
def test_the_writer_reads_back_every_cell_the_worker_escaped(cells: list[str | None]) -> None:
    line = b"\t".join(b"\\N" if c is None else _escape(c).encode() for c in cells) + b"\n"
    assert copy_line_values(line) == [None if c is None else c.encode() for c in cells]


@given(st.binary().filter(lambda b: b"\x00" not in b))
def test_a_json_cell_reads_back_as_its_text(text: bytes) -> None:
    # compact JSON holds no raw tab or newline; its backslashes are the only escaped bytes
    text = text.replace(b"\t", b"").replace(b"\n", b"").replace(b"\r", b"")
    assert copy_line_values(_escape_json(text) + b"\n") == [text]


def test_escapes_read_back_as_copy_reads_them() -> None:
    assert copy_line_values(b"a\\\\nb\t\\\\\\n\t\\N\t\\\\N\t\n") == [b"a\\nb", b"\\\n", None, b"\\N", b""]
