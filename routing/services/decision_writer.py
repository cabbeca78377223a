"""Group commit for decision rows: one writer for many sync web workers, or each gevent worker's own.

A gevent worker serves many connections, so it groups its own rows (ProcessGroupCommit, below,
with this module's commit and answers). With sync gunicorn workers each process serves one request
at a time, so a per-process batcher never has anything to batch. Instead every such worker sends
its row, already encoded as a COPY text line, over a Unix socket to one writer process and waits.
The writer collects whatever rows arrived while its previous commit was running and writes them in
one transaction: a prepared INSERT per row, pipelined, and one Sync, which PostgreSQL answers once
the transaction is committed. It
answers each sender only after that: no answer leaves before its row is durable, and one WAL flush
and one round trip serve the whole batch.

Frames: worker → writer `!I` length + the COPY line; writer → worker one byte, 0 = committed,
1 = not committed (followed by `!H` length + a reason). A reason starting with `DATABASE_UNAVAILABLE`
means the writer could not reach PostgreSQL on a new connection either: the worker answers 503 at
once (`DatabaseUnavailable`). Any other refusal, or no answer, makes the worker write the row
itself (`INSERT … ON CONFLICT (id) DO NOTHING`, so a row the writer did commit before its answer
was lost is not written twice).
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import selectors
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg import errors as pg_errors
from psycopg import pq

logger = logging.getLogger("scope.decision_writer")

OK = b"\x00"
FAILED = b"\x01"
_LEN = struct.Struct("!I")
_REASON = struct.Struct("!H")
MAX_FRAME = 8 * 1024 * 1024
DATABASE_UNAVAILABLE = "database unavailable"  # the start of a refusal that says PostgreSQL is away
WARN_EVERY_S = 60.0  # a worker repeats "writer unreachable" at most this often during one outage


_STATEMENT = b"scope_decision_insert"  # the writer's prepared INSERT, on each of its connections


def _unescape(cell: bytes) -> bytes:
    # decision_copy._escape's inverse: split at escaped backslashes first, so "\\\\n" stays a backslash and an n
    return b"\\".join(
        part.replace(b"\\n", b"\n").replace(b"\\r", b"\r").replace(b"\\t", b"\t")
        for part in cell.split(b"\\\\")
    )


_NULL = b"\\N"


def copy_line_values(line: bytes) -> list[bytes | None]:
    """A COPY text line's cells as the texts they stand for (None for NULL), in column order."""
    return [
        None if cell == _NULL else _unescape(cell) if b"\\" in cell else cell
        for cell in line.removesuffix(b"\n").split(b"\t")
    ]


# --- the worker side ---------------------------------------------------------------------------


class DatabaseUnavailable(Exception):
    """The writer refused a row because PostgreSQL cannot be reached, on a new connection too."""


class _RefusalWarnings:
    """A worker's side of a group commit: it warns of rows not committed for them (the caller then
    writes each itself) the first time, then at most once a minute with how many more there were (a
    bad deployment refuses every row of every worker)."""

    committer = "the decision writer"  # who refused, in the warning

    def __init__(self) -> None:
        self._refusals_warned_at: float | None = None  # last "did not commit" warning
        self._refusals_unsaid = 0  # refusals since that warning, not logged one by one

    def _refused(self, reason: str) -> None:
        now = time.monotonic()
        if self._refusals_warned_at is not None and now - self._refusals_warned_at < WARN_EVERY_S:
            self._refusals_unsaid += 1
            return
        more = f" ({self._refusals_unsaid} more rows since the last warning)" if self._refusals_unsaid else ""
        logger.warning("%s did not commit a row (%s); writing it directly%s", self.committer, reason, more)
        self._refusals_warned_at, self._refusals_unsaid = now, 0


class WriterClient(_RefusalWarnings):
    """One connection per process and thread; `commit(line)` is True once the writer committed it."""

    def __init__(self, path: str, *, timeout: float = 10.0, retry_seconds: float = 1.0) -> None:
        super().__init__()
        self.path = path
        self.timeout = timeout
        self.retry_seconds = retry_seconds
        self._local = threading.local()
        self._down_since: float | None = None  # this process could not reach the writer since then
        self._warned_at = 0.0

    def _socket(self) -> socket.socket | None:
        local = self._local
        sock: socket.socket | None = getattr(local, "sock", None)
        if sock is not None and getattr(local, "pid", None) == os.getpid():
            return sock
        if sock is not None:  # inherited across fork: the parent's connection is not ours to use
            local.sock = None
        if time.monotonic() < getattr(local, "retry_at", 0.0):
            return None
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.timeout)
            sock.connect(self.path)
        except OSError as exc:
            sock.close()
            at = time.monotonic()
            local.retry_at = at + self.retry_seconds
            if self._down_since is None or at - self._warned_at >= WARN_EVERY_S:  # once per outage and minute
                self._down_since = self._down_since or at
                self._warned_at = at
                logger.warning("decision writer unreachable at %s, writing directly: %s", self.path, exc)
            return None
        if self._down_since is not None:
            logger.info("decision writer reachable again after %.1f s", time.monotonic() - self._down_since)
            self._down_since = None
        local.sock, local.pid = sock, os.getpid()
        return sock

    def close(self) -> None:
        """Close this thread's connection (the next commit reconnects)."""
        self._drop()

    def _drop(self) -> None:
        sock = getattr(self._local, "sock", None)
        self._local.sock = None
        if sock is not None:
            sock.close()

    def commit(self, line: bytes) -> bool:
        """True when the writer answered that the row is committed; False means write it yourself.

        Raises DatabaseUnavailable when the writer could not reach PostgreSQL (nor would this process)."""
        sock = self._socket()
        if sock is None:
            return False
        try:
            sock.sendall(_LEN.pack(len(line)) + line)
            status = _recv_exactly(sock, 1)
            if status == OK:
                return True
            (size,) = _REASON.unpack(_recv_exactly(sock, _REASON.size))
            reason = _recv_exactly(sock, size).decode(errors="replace")
        except (OSError, EOFError) as exc:
            # the answer is lost, not necessarily the row: the direct write skips an existing id
            self._drop()
            logger.warning("decision writer connection failed (%s); writing the row directly", exc)
            return False
        if reason.startswith(DATABASE_UNAVAILABLE):
            raise DatabaseUnavailable(reason)
        self._refused(reason)
        return False


def writer_socket_path(var_dir: Path, pid: int) -> Path:
    """Where `make serve`'s writer listens: under var/run/, or in the temp dir if that path is too long.

    A Unix socket path holds at most 107 bytes; a deep checkout would make bind() fail. The socket
    file is 0600 either way.
    """
    path = var_dir / "run" / f"decision-writer-{pid}.sock"
    if len(os.fsencode(path)) <= 100:
        return path
    return Path(tempfile.gettempdir()) / f"scope-decision-writer-{os.getuid()}-{pid}.sock"


def writer_reachable(path: str, *, timeout: float = 0.5) -> str | None:
    """None when a writer accepts connections on `path`, else why not (for /healthz)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(path)
        except OSError as exc:
            return f"{exc.__class__.__name__}: {exc.strerror or exc}"
    return None


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    chunks, got = [], 0
    while got < n:
        chunk = sock.recv(n - got)
        if not chunk:
            raise EOFError("decision writer closed the connection")
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


# --- the writer process ------------------------------------------------------------------------


@dataclass(eq=False)
class _Peer:
    sock: socket.socket
    inbox: bytearray = field(default_factory=bytearray)
    outbox: bytearray = field(default_factory=bytearray)
    events: int = selectors.EVENT_READ  # what the selector watches for it


@dataclass
class WriterStats:
    rows: int = 0
    batches: int = 0
    failed_rows: int = 0
    largest_batch: int = 0
    outages: int = 0  # times the database went away (and, unless still away at stop, came back)


class DecisionWriter:
    """Serve group commits on `path` until `stop` is set; `connect_kwargs` go to psycopg.connect."""

    def __init__(
        self,
        *,
        path: str,
        insert_sql: str,
        columns: int,
        connect_kwargs: Mapping[str, Any],
        max_batch: int = 512,
        commit_delay: float = 0.0,
        io_timeout: float = 30.0,
    ) -> None:
        self.path = path
        self._insert_sql = insert_sql.encode()
        self.columns = columns
        self.connect_kwargs = dict(connect_kwargs)
        self.max_batch = max_batch
        self.commit_delay = commit_delay  # seconds a first row may wait for other senders' rows
        self.io_timeout = io_timeout  # seconds PostgreSQL may leave a commit unanswered
        self._first_pending_at: float | None = None
        self.stats = WriterStats()
        self.ready = threading.Event()
        self._conn: psycopg.Connection[Any] | None = None
        self._pending: list[tuple[_Peer, bytes]] = []
        self._selector = selectors.DefaultSelector()
        self._down_since: float | None = None  # monotonic time the database was first found away
        self._socket_inode: int | None = None  # the socket file this writer bound (see _unlink_own_socket)

    # the loop
    def serve_forever(self, stop: threading.Event | None = None) -> None:
        stop = stop or threading.Event()
        listener = self._listen()
        self._selector.register(listener, selectors.EVENT_READ, None)
        self.ready.set()
        logger.info("decision writer listening on %s", self.path)
        try:
            while not stop.is_set():
                # with rows waiting, only collect what has already arrived (or, with a commit
                # delay, what arrives within it while some sender has not sent yet), then commit
                for key, events in self._selector.select(self._wait()):
                    if key.data is None:
                        self._accept(listener)
                    else:
                        self._service(key.data, events)
                    if len(self._pending) >= self.max_batch:
                        break
                if self._pending and self._wait() == 0:
                    self._flush()
        finally:
            for key in list(self._selector.get_map().values()):
                key.fileobj.close()  # type: ignore[union-attr]
            self._selector.close()
            self._unlink_own_socket()
            if self._conn is not None:
                self._conn.close()

    def _wait(self) -> float:
        """How long the next select may block: 0.5 s idle, else what is left of the commit delay."""
        if not self._pending:
            self._first_pending_at = None
            return 0.5
        if self.commit_delay <= 0 or len(self._pending) >= self.max_batch:
            return 0.0
        senders = len(self._selector.get_map()) - 1  # connected workers; one row each in flight
        if len({id(peer) for peer, _ in self._pending}) >= senders:
            return 0.0  # everyone connected is waiting on this commit: nothing more can come
        now = time.monotonic()
        if self._first_pending_at is None:
            self._first_pending_at = now
        return max(0.0, self._first_pending_at + self.commit_delay - now)

    def _listen(self) -> socket.socket:
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        Path(self.path).unlink(missing_ok=True)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)  # the socket file is born 0600: only this user may write decisions
        try:
            listener.bind(self.path)
        finally:
            os.umask(old)
        listener.listen(1024)
        listener.setblocking(False)
        self._socket_inode = os.stat(self.path).st_ino
        return listener

    def _unlink_own_socket(self) -> None:
        """Remove the socket file, unless it is no longer ours: a writer that outlived its
        supervisor may stop after a new writer has bound the same path, and must not take it away."""
        try:
            if os.stat(self.path).st_ino == self._socket_inode:
                os.unlink(self.path)
        except FileNotFoundError:
            pass

    def _accept(self, listener: socket.socket) -> None:
        try:
            sock, _ = listener.accept()
        except BlockingIOError:
            return
        sock.setblocking(False)
        self._selector.register(sock, selectors.EVENT_READ, _Peer(sock))

    def _service(self, peer: _Peer, events: int) -> None:
        if events & selectors.EVENT_WRITE:
            self._send(peer, b"")
        if not events & selectors.EVENT_READ:
            return
        try:
            data = peer.sock.recv(1 << 20)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._close(peer)  # rows it already sent are still committed; only the answers are moot
            return
        peer.inbox += data
        while len(peer.inbox) >= _LEN.size:
            (size,) = _LEN.unpack_from(peer.inbox)
            if size > MAX_FRAME:
                self._close(peer)
                return
            if len(peer.inbox) < _LEN.size + size:
                break
            line = bytes(peer.inbox[_LEN.size : _LEN.size + size])
            del peer.inbox[: _LEN.size + size]
            self._pending.append((peer, line))

    def _close(self, peer: _Peer) -> None:
        try:
            self._selector.unregister(peer.sock)
        except (KeyError, ValueError):
            pass
        peer.sock.close()

    def _send(self, peer: _Peer, data: bytes) -> None:
        peer.outbox += data
        try:
            sent = peer.sock.send(peer.outbox) if peer.outbox else 0
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            self._close(peer)
            return
        del peer.outbox[:sent]
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if peer.outbox else 0)
        if events != peer.events:  # an answer that fit in the socket buffer changes nothing
            try:
                self._selector.modify(peer.sock, events, peer)
                peer.events = events
            except (KeyError, ValueError):
                pass

    # committing
    def _flush(self) -> None:
        batch, self._pending = self._pending, []
        answers = self.commit_counted([line for _, line in batch])
        for (peer, _), answer in zip(batch, answers, strict=True):
            if answer is None:
                self._send(peer, OK)
            else:
                reason = answer.encode()[:1000]
                self._send(peer, FAILED + _REASON.pack(len(reason)) + reason)

    def commit_counted(self, lines: list[bytes]) -> list[str | None]:
        """`_commit` (None per committed line, else the reason), counted in `stats`."""
        answers = self._commit(lines)
        self.stats.batches += 1
        self.stats.largest_batch = max(self.stats.largest_batch, len(lines))
        committed = answers.count(None)
        self.stats.rows += committed
        self.stats.failed_rows += len(answers) - committed
        return answers

    def stats_text(self) -> str:
        s = self.stats
        return (
            f"{s.rows} rows in {s.batches} commits (largest {s.largest_batch}), {s.failed_rows} not "
            f"committed, {s.outages} database outages"
        )

    def _commit(self, lines: list[bytes]) -> list[str | None]:
        """None per committed line, else the reason; one committed transaction for the whole batch."""
        malformed = [self._malformed(line) for line in lines]
        good = [line for line, bad in zip(lines, malformed, strict=True) if bad is None]
        if not good:
            return malformed
        try:
            self._write_or_retry(good)
            self._database_back()
            return malformed
        except psycopg.OperationalError as exc:  # the database is away: nothing of this batch is in
            self._reset()
            self._database_away(exc)
            return [bad or f"{DATABASE_UNAVAILABLE}: {exc}" for bad in malformed]
        except psycopg.Error:
            pass
        # one bad row must not sink its neighbours: find it by committing one row at a time
        answers: list[str | None] = []
        for line, bad in zip(lines, malformed, strict=True):
            if bad is not None:
                answers.append(bad)
                continue
            try:
                self._write([line])
                self._database_back()
                answers.append(None)
            except pg_errors.UniqueViolation:
                answers.append(None)  # the id is already there: an earlier attempt committed it
            except psycopg.OperationalError as exc:
                self._reset()
                self._database_away(exc)
                answers.append(f"{DATABASE_UNAVAILABLE}: {exc}")
            except psycopg.Error as exc:
                answers.append(f"{type(exc).__name__}: {exc}")
        return answers

    def _write_or_retry(self, lines: Sequence[bytes]) -> None:
        """`_write`, and once more on a new connection if the connection failed. A restarted server
        ends every open connection, and its first batch after must not be refused for that: a
        refusal for the database tells the workers to answer 503. If the first try did commit
        before its answer was lost, the second fails on the ids, and the caller's row-by-row path
        counts those rows as committed."""
        try:
            self._write(lines)
        except psycopg.OperationalError:
            self._reset()
            self._write(lines)

    def _database_away(self, exc: Exception) -> None:
        if self._down_since is None:
            self._down_since = time.monotonic()
            self.stats.outages += 1
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            logger.warning("decision writer: database unavailable (%s); workers answer 503 meanwhile", first)

    def _database_back(self) -> None:
        if self._down_since is not None:
            logger.warning(
                "decision writer: reconnected, committing again after %.1f s",
                time.monotonic() - self._down_since,
            )
            self._down_since = None

    def _malformed(self, line: bytes) -> str | None:
        if not line.endswith(b"\n") or line.count(b"\n") != 1:
            return "malformed frame: not one COPY line"
        tabs = line.count(b"\t")
        if tabs != self.columns - 1:
            return f"malformed frame: {tabs + 1} columns, expected {self.columns}"
        return None

    def _write(self, lines: Sequence[bytes]) -> None:
        """The lines' rows in one transaction: a prepared INSERT per row, pipelined, then one Sync.

        PostgreSQL runs the statements before a Sync as one implicit transaction and commits it
        before it answers the Sync, so when this returns the rows are committed (WAL flushed under
        synchronous_commit); when it raises, none of them are. One round trip per batch: COPY,
        which this replaced, took two (its statement, then its data), and PostgreSQL spent 16-27%
        more CPU per row on it at one or two rows per commit (docs/performance.md). It speaks
        libpq directly, in nonblocking mode, waiting for the socket with select(): the writer
        process blocks there, a gevent worker's committer lets the worker's other greenlets run.
        Errors are psycopg's exception classes.
        """
        conn = self._connection()
        pgconn = conn.pgconn
        pgconn.enter_pipeline_mode()
        try:
            for line in lines:
                pgconn.send_query_prepared(_STATEMENT, copy_line_values(line))
            pgconn.pipeline_sync()
            self._send_all(conn)
            failed: pq.abc.PGresult | None = None
            for _ in lines:  # each statement's result, then the None that ends it
                result = self._next_result(conn)
                if result is None:  # the connection is gone
                    raise self._error(conn, None)
                if result.status == pq.ExecStatus.FATAL_ERROR and failed is None:
                    failed = result  # the statements after it come back PIPELINE_ABORTED
                while self._next_result(conn) is not None:
                    pass
            result = self._next_result(conn)
            if result is None or result.status != pq.ExecStatus.PIPELINE_SYNC:
                raise self._error(conn, result)
            if failed is not None:
                raise self._error(conn, failed)
        finally:
            if pgconn.status == pq.ConnStatus.OK:
                with contextlib.suppress(psycopg.Error):
                    pgconn.exit_pipeline_mode()

    def _await_socket(self, conn: psycopg.Connection[Any], *, writable: bool) -> None:
        """Until the connection's socket is readable (or, with `writable`, either): select() on it,
        which a gevent worker's patching makes cooperative. No answer within `io_timeout` counts as
        a lost connection."""
        fd = conn.pgconn.socket
        ready = select.select([fd], [fd] if writable else [], [], self.io_timeout)
        if not any(ready):
            conn.pgconn.finish()  # what the caller finds next: a broken connection, reset on error
            raise psycopg.OperationalError(f"no answer from PostgreSQL within {self.io_timeout:.0f} s")

    def _send_all(self, conn: psycopg.Connection[Any]) -> None:
        pgconn = conn.pgconn
        while pgconn.flush():  # libpq: wait for either; on read-ready, consume input, flush again
            self._await_socket(conn, writable=True)
            pgconn.consume_input()

    def _next_result(self, conn: psycopg.Connection[Any]) -> pq.abc.PGresult | None:
        """PQgetResult without blocking the process."""
        pgconn = conn.pgconn
        pgconn.consume_input()
        while pgconn.is_busy():
            self._await_socket(conn, writable=False)
            pgconn.consume_input()
        return pgconn.get_result()

    @staticmethod
    def _error(conn: psycopg.Connection[Any], result: pq.abc.PGresult | None) -> psycopg.Error:
        if conn.pgconn.status != pq.ConnStatus.OK or result is None:
            message = conn.pgconn.get_error_message().strip()
            return psycopg.OperationalError(message or "the connection to the database was lost")
        return pg_errors.error_from_result(result, encoding=conn.info.encoding)

    def _connection(self) -> psycopg.Connection[Any]:
        conn = self._conn
        if conn is None or conn.closed or conn.broken or conn.pgconn.status != pq.ConnStatus.OK:
            if conn is not None:
                self._reset()
            conn = psycopg.connect(**self.connect_kwargs, autocommit=True)
            conn.pgconn.nonblocking = 1  # psycopg leaves it so; _write relies on it
            conn.pgconn.send_prepare(_STATEMENT, self._insert_sql)
            self._send_all(conn)
            prepared = self._next_result(conn)
            while prepared is not None and self._next_result(conn) is not None:
                pass
            if prepared is None or prepared.status != pq.ExecStatus.COMMAND_OK:
                error = self._error(conn, prepared)
                conn.close()
                raise error
            self._conn = conn
        return conn

    def _reset(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            finally:
                self._conn = None


# --- group commit inside one process (gevent workers) -----------------------------------------


@dataclass(eq=False)
class _Waiting:
    line: bytes
    done: threading.Event = field(default_factory=threading.Event)
    answer: str | None = None


class ProcessGroupCommit(_RefusalWarnings):
    """Group commit inside one process: the rows of its threads, in a gevent worker its greenlets
    (one per client connection), committed together by one committing thread on a PostgreSQL
    connection of its own, in the writer's transactions and with its answers (`DecisionWriter`,
    which here serves no socket).

    A request waiting for its row costs a gevent worker nothing (it serves its other connections
    meanwhile), and the rows that arrive while one commit runs go in the next. Unlike the writer
    process, nothing crosses a process: no socket hop each way, and no other process is woken per
    commit. (Rows still travel as COPY lines, split again into the INSERT's parameters: the
    writer's encoding, tested with it, at about 0.04 ms a row.) The threads are gevent's under its
    patching (select and threading are cooperative there), real threads elsewhere.
    """

    committer = "this worker's decision commits"

    def __init__(self, writer: DecisionWriter, *, wait_seconds: float = 60.0) -> None:
        super().__init__()
        self.writer = writer
        self.wait_seconds = wait_seconds  # a caller's last resort if the committing thread is stuck
        self._changed = threading.Condition()
        self._pending: list[_Waiting] = []
        self._thread: threading.Thread | None = None

    def commit(self, line: bytes) -> bool:
        """True once the row is committed; False means write it yourself (as WriterClient.commit).

        Raises DatabaseUnavailable when PostgreSQL could not be reached, on a new connection too."""
        reason = self._answer(line)
        if reason is None:
            return True
        if reason.startswith(DATABASE_UNAVAILABLE):
            raise DatabaseUnavailable(reason)
        self._refused(reason)
        return False

    def _answer(self, line: bytes) -> str | None:
        waiting = _Waiting(line)
        with self._changed:
            self._pending.append(waiting)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="decision-commit", daemon=True)
                self._thread.start()
            self._changed.notify()
        if not waiting.done.wait(self.wait_seconds):
            # it may still commit: a row without an answer, as when a client goes away; never lost
            return f"{DATABASE_UNAVAILABLE}: no commit within {self.wait_seconds:.0f} s"
        return waiting.answer

    def _run(self) -> None:
        while True:
            with self._changed:
                while not self._pending:
                    self._changed.wait()
                batch = self._pending[: self.writer.max_batch]
                del self._pending[: len(batch)]
            try:
                answers = self.writer.commit_counted([w.line for w in batch])
            except Exception as exc:  # a bug, not the database: no request may wait on it forever
                logger.exception("decision commit failed")
                answers = [f"{type(exc).__name__}: {exc}"] * len(batch)
            for waiting, answer in zip(batch, answers, strict=True):
                waiting.answer = answer
                waiting.done.set()


# --- keeping one writer running -----------------------------------------------------------------


class ForkedChild:
    """`run` in a forked child process, with the part of Popen's interface `supervise` uses.

    A supervisor that has already loaded Django forks a new writer in milliseconds, where starting
    `manage.py decision_writer` afresh takes seconds (more under load). The child's exit code is
    what `run` returns (1 if it raises); it never returns into the parent's code.
    """

    def __init__(self, run: Callable[[], int]) -> None:
        self.returncode: int | None = None
        pid = os.fork()
        if pid == 0:  # the child
            code = 1
            try:
                code = run()
            except BaseException:  # noqa: BLE001 - report it, then leave with a failure code
                logger.exception("decision writer crashed")
            finally:
                try:
                    sys.stdout.flush()
                    sys.stderr.flush()
                finally:
                    os._exit(code)
        self.pid = pid

    def poll(self) -> int | None:
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() >= deadline:
                raise subprocess.TimeoutExpired(f"pid {self.pid}", timeout or 0.0)
            time.sleep(0.02)
        assert self.returncode is not None
        return self.returncode

    def terminate(self) -> None:
        self._signal(signal.SIGTERM)

    def kill(self) -> None:
        self._signal(signal.SIGKILL)

    def _signal(self, sig: int) -> None:
        if self.returncode is None:
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass


def stop_when_orphaned(stop: threading.Event, *, parent: int, poll: float = 0.5) -> threading.Thread:
    """Set `stop` once this process's parent is no longer `parent` (it died: the process was
    re-parented). A writer whose supervisor was killed then stops, so nothing is left serving that
    no one supervises, and the new supervisor `make serve` starts takes the socket; a supervisor
    run with --exit-with-parent stops with gunicorn's master."""

    def watch() -> None:
        while not stop.wait(poll):
            if os.getppid() != parent:
                logger.error(
                    "decision writer process %s: its parent %s is gone; stopping", os.getpid(), parent
                )
                stop.set()

    thread = threading.Thread(target=watch, name="decision-writer-parent-watch", daemon=True)
    thread.start()
    return thread


def supervise(
    spawn: Callable[[], ForkedChild],
    stop: threading.Event,
    *,
    first_delay: float = 0.5,
    max_delay: float = 30.0,
    stable_after: float = 30.0,
    poll: float = 0.2,
    on_start: Callable[[ForkedChild], None] | None = None,
) -> int:
    """Keep a writer that `spawn` starts running until `stop` is set: start another whenever one
    dies on its own.

    A writer only exits 0 when told to stop (SIGTERM, SIGINT): that ends supervision too. Any other
    end (killed, crashed, refused to start) starts a new one after a delay that
    doubles up to `max_delay` and resets once a writer has lived `stable_after` seconds. Meanwhile
    workers write their own rows. Returns how many times it restarted the writer.
    """
    restarts, delay = 0, first_delay
    while True:
        started = time.monotonic()
        child = spawn()
        if on_start is not None:
            on_start(child)
        while (code := child.poll()) is None:
            if stop.wait(poll):
                child.terminate()
                try:
                    child.wait(timeout=8)  # under the 10 s gunicorn_conf.on_exit gives this process
                except subprocess.TimeoutExpired:
                    child.kill()
                    child.wait()
                return restarts
        if code == 0 or stop.is_set():
            return restarts
        if time.monotonic() - started >= stable_after:
            delay = first_delay
        how = f"killed by signal {-code}" if code < 0 else f"exit code {code}"
        logger.error("decision writer pid %s died (%s); starting another in %.1f s", child.pid, how, delay)
        if stop.wait(delay):
            return restarts
        delay = min(delay * 2, max_delay)
        restarts += 1


def decision_writer_for_default_database(*, path: str, max_batch: int = 512) -> DecisionWriter:
    """The writer for Django's default database (PostgreSQL) and the DecisionLog table."""
    from django.conf import settings
    from django.db import connections

    from routing.services.decision_copy import decision_copy_column_count, decision_insert_sql

    conn = connections["default"]
    if conn.vendor != "postgresql":
        raise RuntimeError("group commit needs PostgreSQL (set DATABASE_URL)")
    return DecisionWriter(
        path=path,
        insert_sql=decision_insert_sql(),
        columns=decision_copy_column_count(),
        # Django's own connection arguments (every OPTIONS entry: sslmode, passfile, …), minus the
        # cursor class and adapters it installs for the ORM; the writer only runs its INSERT
        connect_kwargs={
            "application_name": "scope-decision-writer",
            **{
                k: v
                for k, v in conn.get_connection_params().items()
                if k not in {"cursor_factory", "context"}
            },
        },
        max_batch=max_batch,
        commit_delay=settings.SCOPE_GROUP_COMMIT_DELAY_MS / 1000.0,
    )


def process_group_commit_for_default_database() -> ProcessGroupCommit:
    """A gevent worker's own group commit, on a connection of its own to Django's default database."""
    writer = decision_writer_for_default_database(path="")  # it serves no socket
    writer.connect_kwargs["application_name"] = "scope-worker-commit"
    return ProcessGroupCommit(writer)
