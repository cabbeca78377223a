"""`make serve`'s gevent workers (scope_site/gevent_worker.py): turns between keep-alive connections,
connections balanced over the workers, and one database pool per worker process."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from pathlib import Path

import pytest
from django.db import connection

from providers.models import LLMModel
from scope_site import gevent_worker
from scope_site.gevent_worker import STALE_SECONDS, ConnectionBalance
from tests.conftest import USER_MESSAGE, requires_postgres
from tests.scope_site.test_serve import _post, _served


def _connect(base: str) -> socket.socket:
    host, port = base.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=20)
    return sock


def _get(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()


def _read_response(sock: socket.socket) -> bytes:
    """One whole response of a keep-alive connection (by its Content-Length)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, "connection closed"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk, "connection closed"
        body += chunk
    return head


def _children(pid: int) -> list[int]:
    return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def _owner(client: socket.socket, server_port: int, workers: list[int]) -> int:
    """The worker process holding the server's end of `client`'s connection."""
    client_port = client.getsockname()[1]
    inode = ""
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote = fields[1], fields[2]
        if int(local.split(":")[1], 16) == server_port and int(remote.split(":")[1], 16) == client_port:
            inode = fields[9]
    assert inode, "no server socket for this connection"
    for pid in workers:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                if fd.readlink().name == f"socket:[{inode}]":
                    return pid
            except OSError:
                continue
    raise AssertionError("no worker holds the connection")


@pytest.fixture
def empty_table() -> None:
    """No live slots but the test's own (the table is this process's: no worker shares it here)."""
    gevent_worker._table[:] = bytes(len(gevent_worker._table))


@pytest.mark.usefixtures("empty_table")
def test_a_worker_with_more_connections_than_another_live_one_defers() -> None:
    mine = ConnectionBalance(60)
    mine.opened()
    assert not mine.defers()  # no other live worker
    mine.closed()
    other = ConnectionBalance(61)
    try:
        assert not mine.defers()  # as many as the other
        mine.opened()
        assert mine.defers()  # one more than the other
        other.opened()
        other.opened()
        assert not mine.defers()  # fewer than the other
    finally:
        mine.closed()
        other.closed()
        other.closed()


@pytest.mark.usefixtures("empty_table")
def test_a_slot_untouched_for_longer_than_stale_seconds_is_not_waited_for() -> None:
    mine, stuck = ConnectionBalance(62), ConnectionBalance(63)
    try:
        mine.opened()
        assert mine.defers()
        # the stuck worker's last touch, long ago (busy in one long request, or killed)
        gevent_worker._cells[2 * stuck.slot + 1] = time.monotonic() - 2 * STALE_SECONDS
        assert not mine.defers()
    finally:
        mine.closed()


@requires_postgres
@pytest.mark.django_db(transaction=True)
def test_a_client_pipelining_requests_does_not_keep_a_worker_from_its_other_connections(
    tmp_path: Path,
) -> None:
    with _served(tmp_path, workers=1) as served:
        greedy, other = _connect(served.base), _connect(served.base)
        with greedy, other:
            greedy.sendall(_get("/api/v1/route") * 500)  # 500 requests in the worker's buffer at once
            time.sleep(0.05)
            other.sendall(_get("/api/v1/route"))
            assert _read_response(other).startswith(b"HTTP/1.1 401")
            greedy.setblocking(False)  # what the greedy connection got before the other one's answer
            answered = b""
            try:
                while chunk := greedy.recv(1 << 20):
                    answered += chunk
            except BlockingIOError:
                pass
    # without turns the worker answers all 500 before it reads the other connection
    assert answered.count(b"HTTP/1.1 ") < 400


@requires_postgres
@pytest.mark.django_db(transaction=True)
def test_a_burst_of_keep_alive_connections_under_load_is_shared_by_the_workers(tmp_path: Path) -> None:
    with _served(tmp_path, workers=2) as served:
        port = int(served.base.rsplit(":", 1)[1])
        workers = _children(served.master.pid)
        workers = [
            pid for pid in workers if "decision_writer" not in Path(f"/proc/{pid}/cmdline").read_text()
        ]
        assert len(workers) == 2
        # the first route answer needed one worker: the other may still be warming up, and a burst
        # then has only one worker to go to (seen once in a full run: 2 and 20)
        deadline = time.monotonic() + 30
        while served.log_path.read_text(errors="replace").count("warmed in") < 2:
            assert time.monotonic() < deadline, "the second worker did not warm up"
            time.sleep(0.1)
        stop = threading.Event()

        def load(sock: socket.socket) -> None:  # a client keeping the workers busy, as the burst arrives
            with sock:
                while not stop.is_set():
                    sock.sendall(_get("/healthz"))
                    _read_response(sock)

        busy = [_connect(served.base) for _ in range(6)]
        loaders = [threading.Thread(target=load, args=(sock,)) for sock in busy]
        for loader in loaders:
            loader.start()
        splits = []
        try:
            time.sleep(0.5)
            for _ in range(5):
                clients = [_connect(served.base) for _ in range(16)]
                with contextlib.ExitStack() as stack:
                    for client in clients:
                        stack.enter_context(client)
                        client.sendall(_get("/api/v1/route"))
                    for client in clients:
                        _read_response(client)
                    owners = [_owner(client, port, workers) for client in clients + busy]
                splits.append(sorted(owners.count(pid) for pid in workers))
        finally:
            stop.set()
            for loader in loaders:
                loader.join()
    # the 22 open connections: 11 and 11 when balanced, 10 and 12 when a race at accept moves one.
    # A worker leaves a connection to the other for at most DEFER_SECONDS, so a busy moment can
    # still tip a burst (9 and 13 seen). Without the balance the fewer side averaged 6.6 to 8.2 over
    # five bursts here, with it 10.0 to 11
    assert sum(fewer for fewer, _ in splits) / len(splits) >= 9.5, splits


@requires_postgres
@pytest.mark.django_db(transaction=True)
def test_a_gevent_worker_shares_a_pool_of_database_connections_among_its_clients(tmp_path: Path) -> None:
    def backends() -> int:
        with connection.cursor() as cursor:
            cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()")
            return int(cursor.fetchone()[0])

    with _served(tmp_path, workers=1) as served:  # the default pool: SCOPE_DB_POOL_SIZE unset
        before = backends()
        clients = [_connect(served.base) for _ in range(16)]
        try:
            for _ in range(3):  # every client's request checks the database (/healthz runs SELECT 1)
                for client in clients:
                    client.sendall(_get("/healthz"))
                for client in clients:
                    assert _read_response(client).startswith(b"HTTP/1.1 200")
            during = backends()
        finally:
            for client in clients:
                client.close()
    # a connection per client would be 16 more; the pool holds at most 8 (one may be open already)
    assert during - before <= 8


@requires_postgres
@pytest.mark.django_db(transaction=True)
def test_a_chat_call_waiting_on_its_model_leaves_the_pool_to_the_workers_other_requests(
    tmp_path: Path,
) -> None:
    env = {"SCOPE_DB_POOL_SIZE": "1", "SCOPE_CATALOG_TTL_SECONDS": "0"}
    with _served(tmp_path, workers=1, extra_env=env) as served:
        # each chat call holds the database (its budget hold) before the simulated model answers
        # after 2 s
        LLMModel.objects.update(sim_profile={"latency_ms": 2000})
        finished: list[tuple[str, int]] = []

        def chat() -> None:
            status, _ = _post(
                f"{served.base}/v1/chat/completions",
                served.key,
                {"model": "scope/auto", "messages": USER_MESSAGE("hello there")},
            )
            finished.append(("chat", status))

        chats = [threading.Thread(target=chat) for _ in range(3)]
        for thread in chats:
            thread.start()
        time.sleep(0.5)  # the calls are waiting on the model now
        with _connect(served.base) as sock:
            sock.sendall(_get("/healthz"))
            head = _read_response(sock)
        finished.append(("healthz", int(head.split()[1])))
        for thread in chats:
            thread.join()
    # with the one connection kept by a waiting call, /healthz would wait for that call to end
    assert finished[0] == ("healthz", 200), finished
    assert sorted(finished[1:]) == [("chat", 200)] * 3
