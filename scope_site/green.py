"""Whether this process serves under gevent (`make serve`'s gunicorn workers monkey-patch the standard
library before Django loads), read by the settings and by code whose per-thread state depends on it."""

from __future__ import annotations

import os
import sys
import threading
from typing import TYPE_CHECKING

# Set by scope_site.gevent_worker to its process id before gevent patches anything: Django's settings
# can load while gevent patches (its look for existing locks touches every object, Django's lazy
# settings included), before sockets count as patched. The id keeps child processes out.
GEVENT_WORKER_ENV = "SCOPE_GEVENT_WORKER_PID"

GEVENT_WORKER_CLASS = "scope_site.gevent_worker.ScopeGeventWorker"


def serve_worker_class() -> str:
    """The gunicorn worker class `make serve` runs: SCOPE_WORKER_CLASS, else SCOPE's gevent worker."""
    return os.environ.get("SCOPE_WORKER_CLASS", "").strip() or GEVENT_WORKER_CLASS


def gevent_patched() -> bool:
    """True in a gevent worker of `make serve`, or once gevent has monkey-patched sockets here."""
    if os.environ.get(GEVENT_WORKER_ENV) == str(os.getpid()):
        return True
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
