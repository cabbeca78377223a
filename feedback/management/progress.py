"""The progress bar of long management commands: a tqdm bar on a terminal, silent otherwise."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from tqdm import tqdm

Progress = Callable[[float, str], None]


@contextmanager
def percent_bar(desc: str) -> Iterator[Progress]:
    """Yields `progress(fraction, message)` that moves a 0–100 % bar (shown only on a terminal)."""
    with tqdm(total=100, desc=desc, unit="%", disable=not sys.stderr.isatty()) as bar:

        def progress(fraction: float, message: str) -> None:
            bar.set_postfix_str(message)
            bar.n = round(fraction * 100)
            bar.refresh()

        yield progress
