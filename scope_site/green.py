"""Whether this process serves under gevent (`make serve`'s gunicorn workers monkey-patch the standard
library before Django loads), read by the settings and by code whose per-thread state depends on it."""

from __future__ import annotations

import sys
import threading
from typing import TYPE_CHECKING


def gevent_patched() -> bool:
    """True once gevent has monkey-patched sockets in this process (a gevent gunicorn worker)."""
    monkey = sys.modules.get("gevent.monkey")
    return monkey is not None and bool(monkey.is_module_patched("socket"))


def _os_thread_local() -> type[threading.local]:
    monkey = sys.modules.get("gevent.monkey")
    if monkey is not None and monkey.is_module_patched("threading"):
        original: type[threading.local] = monkey.get_original("threading", "local")
        return original
    return threading.local


# The base of scratch buffers that a kernel call fills and that are copied out before anything can
# yield. Under gevent's patching threading.local is per greenlet, so each client connection of a
# worker would get buffers of its own, and the worker's caches would hold one set per connection.
# Greenlets of one OS thread take turns only where they wait for I/O, never inside such a call, so
# they can share one set per OS thread; real threads still get one each.
if TYPE_CHECKING:
    OsThreadLocal = threading.local
else:
    OsThreadLocal = _os_thread_local()
