"""`make serve`'s gunicorn worker: gunicorn's gevent worker, taking turns and sharing connections.

Why gevent. A routed request waits once for the commit of its decision row (the decision writer
answers once PostgreSQL has). A sync worker serves one request at a time, so it sleeps through that
wait: the kernel runs another process, and the worker wakes up on caches the others have filled.
A gevent worker serves its other connections meanwhile, switching greenlets instead of processes,
and keeps connections open between requests (a sync worker closes each one). The workers of
`make serve` run this class unless SCOPE_WORKER_CLASS names another (scope_site/gunicorn_conf.py).

Two additions to gunicorn's `GeventWorker`:

- **Turns.** gevent reads a socket without yielding when data is already there, so a keep-alive
  client that sends its next request at once could keep a worker to itself while the worker's
  other connections wait (measured with the plain worker: half the no-op's answers within 1 ms, a
  quarter after more than 240 ms). After each request the connection's greenlet waits for the
  next turn of the event loop, behind every connection that became ready meanwhile.
- **Balance.** A connection stays with the worker that accepted it, and a burst of new
  connections (a client's pool starting, a load generator) lands mostly on whichever worker woke
  first: measured 14 of 16 on one of two workers. Each worker publishes how many connections it
  has open in a table shared by all workers, an anonymous shared mapping made in the master when
  gunicorn loads this class, before it forks them. A worker with more open connections than the
  least loaded other live worker leaves a waiting connection to that one, for at most
  `DEFER_SECONDS`: then it takes it itself, so no connection waits long for a busy worker. A
  worker touches its slot with gunicorn's heartbeat (every second) and clears it when it stops;
  a slot untouched for `STALE_SECONDS` (a killed worker's) does not count.
"""

from __future__ import annotations

import mmap
import os
import time
from typing import Any

import gevent
from gevent.server import StreamServer
from gunicorn.workers import ggevent

from scope_site.green import GEVENT_WORKER_ENV

SLOTS = 64  # workers whose spawn numbers (gunicorn's `age`) differ by a multiple of this share a slot
STALE_SECONDS = 3.0  # a slot untouched for this long is not a live worker's (heartbeats: 1 s)
DEFER_SECONDS = 0.02  # the longest a worker leaves a waiting connection to a less loaded one
RETRY_SECONDS = 0.001  # how soon a worker that left a connection to another looks again
TURN_SECONDS = 1e-6  # > 0: gevent.sleep(0) may resume this greenlet before the loop polls for I/O

# [2 * slot]: open connections; [2 * slot + 1]: time.monotonic() of the slot's last touch (the
# clock is the same in every process). Only a slot's own worker writes it; aligned 8-byte stores
# are atomic, so a reader sees an old or a new value, never half of each.
_table = mmap.mmap(-1, SLOTS * 16)  # MAP_SHARED | MAP_ANONYMOUS: shared with workers forked later
_cells = memoryview(_table).cast("d")


class ConnectionBalance:
    """This worker's slot of the shared table, and the rule for taking a new connection."""

    def __init__(self, slot: int) -> None:
        self.slot = slot
        self.open = 0
        _cells[2 * slot] = 0.0
        self.touch()

    def touch(self) -> None:
        _cells[2 * self.slot + 1] = time.monotonic()

    def opened(self) -> None:
        self.open += 1
        _cells[2 * self.slot] = float(self.open)
        self.touch()

    def closed(self) -> None:
        self.open -= 1
        _cells[2 * self.slot] = float(self.open)
        self.touch()

    def clear(self) -> None:
        _cells[2 * self.slot] = 0.0
        _cells[2 * self.slot + 1] = 0.0

    def defers(self) -> bool:
        """True when another live worker has fewer connections open: it should take the next."""
        now = time.monotonic()
        _cells[2 * self.slot + 1] = now
        fewest = min(
            (
                _cells[2 * i]
                for i in range(SLOTS)
                if i != self.slot and now - _cells[2 * i + 1] < STALE_SECONDS
            ),
            default=None,
        )
        return fewest is not None and self.open > fewest


_balance: ConnectionBalance | None = None  # this worker process's slot, once it runs


class BalancedStreamServer(StreamServer):
    """gevent's server, which counts the connections it accepted and not yet closed, and leaves a
    waiting connection to a less loaded worker for a while."""

    _retry: Any = None
    _deferring_since: float | None = None  # when this server began to leave a connection to another
    _deferred_at = 0.0  # when it last did

    def do_read(self) -> Any:
        balance = _balance
        if balance is not None and self._defers(balance):
            # no accept now: look again shortly (a waiting connection keeps the socket readable);
            # returning nothing keeps gevent from re-arming the accept at once, which would spin
            self.stop_accepting()
            if self._retry is None:
                self._retry = self.loop.timer(RETRY_SECONDS)
                self._retry.start(self._accept_again)
            return None
        accepted = super().do_read()
        if accepted and balance is not None:
            balance.opened()
        return accepted

    def do_close(self, *args: Any) -> None:  # once per accepted connection, after its handler
        try:
            super().do_close(*args)
        finally:
            if _balance is not None:
                _balance.closed()

    def _defers(self, balance: ConnectionBalance) -> bool:
        if not balance.defers():
            self._deferring_since = None
            return False
        now = time.monotonic()
        # while a connection waits, this runs every RETRY_SECONDS or so; a longer gap means the last
        # one was taken by another worker, and this is a new one
        if self._deferring_since is None or now - self._deferred_at > DEFER_SECONDS:
            self._deferring_since = now
        self._deferred_at = now
        if now - self._deferring_since >= DEFER_SECONDS:  # the other did not take it: take it
            self._deferring_since = None
            return False
        return True

    def _accept_again(self) -> None:
        self._retry.close()
        self._retry = None
        if self.started:
            self.start_accepting()


class ScopeGeventWorker(ggevent.GeventWorker):
    """gunicorn's gevent worker, with turns between keep-alive connections and balanced accepts."""

    def init_process(self) -> None:
        os.environ[GEVENT_WORKER_ENV] = str(os.getpid())  # before gevent patches: see scope_site.green
        # gunicorn builds its servers from this module's name in run(): in this process only
        ggevent.StreamServer = BalancedStreamServer  # type: ignore[misc]
        super().init_process()

    def run(self) -> None:
        # the slot goes live only now, after the warm-up (post_worker_init): the other workers must
        # not leave connections to a worker that cannot accept them yet
        global _balance
        _balance = ConnectionBalance(self.age % SLOTS)
        try:
            super().run()
        finally:
            _balance.clear()

    def notify(self) -> None:
        super().notify()
        if _balance is not None:
            _balance.touch()

    def handle_request(self, listener_name: Any, req: Any, sock: Any, addr: Any) -> Any:
        try:
            return super().handle_request(listener_name, req, sock, addr)
        finally:
            gevent.sleep(TURN_SECONDS)  # the turn: see the module docstring
