"""Per-OS-thread scratch buffers (scope_site.green): shared by a gevent worker's greenlets, one set per
real thread."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

from routing import char_kernel
from scope_site.green import gevent_patched

ROOT = Path(__file__).resolve().parents[2]

# run in a process of its own: monkey-patching is for the whole process, as in a gunicorn worker
_UNDER_GEVENT = """
from gevent import monkey
monkey.patch_all()
import gevent
from routing import char_kernel, text_kernel
from scope_site import green

chars, texts = char_kernel._Buffers(16), text_kernel._Buffers(4, 4)
local = green.OsThreadLocal()
local.value = "set by the main greenlet"
seen = []

def probe():
    seen.append((id(chars.h), id(texts.out), getattr(local, "value", None)))

gevent.joinall([gevent.spawn(probe), gevent.spawn(probe)])
print(green.gevent_patched(), seen[0] == seen[1] == (id(chars.h), id(texts.out), "set by the main greenlet"))
"""


def test_under_gevent_every_greenlet_of_a_thread_shares_the_kernels_scratch_buffers() -> None:
    result = subprocess.run(
        [sys.executable, "-c", _UNDER_GEVENT], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.stdout.split() == ["True", "True"], result.stderr


def test_without_gevent_each_thread_has_buffers_of_its_own() -> None:
    assert not gevent_patched()
    buffers = char_kernel._Buffers(16)
    seen: list[int] = []
    thread = threading.Thread(target=lambda: seen.append(id(buffers.h)))
    thread.start()
    thread.join()
    assert seen[0] != id(buffers.h)
