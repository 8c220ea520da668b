"""The producers' async path on PostgreSQL (anyloop.py): psycopg AsyncConnections
lent to any event loop, one borrower at a time, and dropped when a call went wrong."""

from __future__ import annotations

import asyncio
import subprocess
import threading
import time
import warnings
from collections.abc import Iterator

import psycopg
import pytest

from conveyor import BackendUnavailable, Conveyor
from conveyor.backends.postgres import pools
from conveyor.backends.postgres.anyloop import AnyLoopConnections
from conveyor.backends.postgres.backend import PostgresBackend
from tests.conftest import POSTGRES_URL, eventually, fresh_postgres, running
from tests.postgres import server


@pytest.fixture
def app() -> Iterator[Conveyor]:
    fresh_postgres(POSTGRES_URL)
    application = Conveyor(f"{POSTGRES_URL}?migrate=1", prefix="aio")
    application.enqueue("t.opened", 0)  # opened: the first call from a loop would open it in a thread
    yield application
    application.close()


def _connections(app: Conveyor) -> AnyLoopConnections:
    backend = app.backend
    assert isinstance(backend, PostgresBackend)
    return backend._anyloop


def test_connections_serve_every_loop_and_close_without_warnings(app: Conveyor) -> None:
    """Loops come and go (asyncio.run each time); the connection stays and is reused, and
    closing the app closes it from outside any loop, with no ResourceWarning."""
    connections = _connections(app)
    ids = [asyncio.run(app.aenqueue("t.a", i)).id for i in range(3)]
    assert (connections._open, len(connections._idle)) == (1, 1)
    assert [app.get_job(i).args for i in ids] == [[0], [1], [2]]
    conn, _ = connections._idle[0]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        app.close()
        assert conn.closed and connections._open == 0


def test_a_connection_the_server_ended_while_idle_is_replaced_before_use(app: Conveyor) -> None:
    """A restart or pg_terminate_backend ends the idle session: the next call sees its
    socket readable and connects afresh, instead of failing on it."""
    connections = _connections(app)
    asyncio.run(app.aenqueue("t.a", 1))
    conn, _ = connections._idle[0]
    _psql(f"SELECT pg_terminate_backend({conn.info.backend_pid})")
    eventually(lambda: pools.ended(conn), timeout=10, message="the session never ended")
    job = asyncio.run(app.aenqueue("t.a", 2))
    assert app.get_job(job.id).args == [2]
    assert conn.closed and connections._open == 1


def test_a_connection_past_its_lifetime_is_closed_when_given_back(app: Conveyor) -> None:
    """As psycopg_pool's max_lifetime for the threaded pool: sessions renew."""
    connections = _connections(app)
    asyncio.run(app.aenqueue("t.a", 1))
    old, _ = connections._idle[0]
    connections._expires[old] = time.monotonic()  # its hour is up
    asyncio.run(app.aenqueue("t.a", 2))  # it serves this call, and is closed coming back
    assert old.closed and connections._open == 0 and not connections._idle
    job = asyncio.run(app.aenqueue("t.a", 3))  # a new one, kept
    assert app.get_job(job.id).args == [3]
    assert (connections._open, len(connections._idle)) == (1, 1)


def test_a_cancelled_call_closes_its_connection(app: Conveyor) -> None:
    """A caller cancelled mid-statement (a request timeout) may leave it running: that
    connection is closed, never lent with a statement in flight."""
    connections = _connections(app)
    asyncio.run(app.aenqueue("t.a", 0))
    blocker = psycopg.connect(POSTGRES_URL, autocommit=True)
    blocker.execute("BEGIN")
    blocker.execute("LOCK TABLE aio.jobs IN ACCESS EXCLUSIVE MODE")  # the insert waits on it

    async def cancelled() -> None:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(app.aenqueue("t.a", "cancelled"), 0.2)

    asyncio.run(cancelled())
    blocker.execute("ROLLBACK")
    blocker.close()
    assert connections._open == 0
    job = asyncio.run(app.aenqueue("t.a", "next"))
    assert app.get_job(job.id).args == ["next"]


def test_aenqueue_joins_the_callers_transaction(app: Conveyor) -> None:
    """In app.transaction(), aenqueue takes the caller's (sync) connection, in a thread."""
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        with conn.transaction(force_rollback=True), app.transaction(conn):
            asyncio.run(app.aenqueue("t.a", "rolled back"))
        with conn.transaction(), app.transaction(conn):
            kept = asyncio.run(app.aenqueue("t.a", "kept"))
    assert [j.id for j in app.jobs() if j.task == "t.a"] == [kept.id]


def test_while_the_server_is_down_aenqueue_fails_within_its_timeout() -> None:
    own = server.server()
    try:
        app = Conveyor(f"{own.url}?migrate=1&timeout=1", prefix="down")

        @app.task
        async def echo(x: int) -> int:
            return x

        first = echo.enqueue(1)
        asyncio.run(echo.aenqueue(2))
        own.stop()
        for _ in range(2):  # the idle connection's call, then a new connection's attempt
            started = time.monotonic()
            with pytest.raises(BackendUnavailable, match=f"127.0.0.1:{own.port}"):
                asyncio.run(echo.aenqueue(3))
            assert time.monotonic() - started < 5
        own.start()
        eventually(lambda: _stores(app), timeout=15, message="a new connection")
        with running(app):
            assert first.result(timeout=10) == 1
        app.close()
    finally:
        own.remove()


def test_an_aenqueue_during_a_restart_waits_for_the_pool_instead_of_failing() -> None:
    """A new connection refused (down, starting up, recovering) sent nothing: the call
    takes the thread's way, whose pool waits up to the URL's timeout, as a sync enqueue
    does. Until 2026-12-07 it raised at once (221 of 225 failed aenqueues in a soak run)."""
    own = server.server()
    try:
        app = Conveyor(f"{own.url}?migrate=1&timeout=30", prefix="down")
        first = asyncio.run(app.aenqueue("t.a", 1))
        own.stop("immediate")  # a crash: it recovers when it starts
        restart = threading.Timer(0.5, own.start)
        restart.start()
        try:
            during = asyncio.run(app.aenqueue("t.a", 2))
        finally:
            restart.join(60)
        assert [app.get_job(j.id).args for j in (first, during)] == [[1], [2]]
        app.close()
    finally:
        own.remove()


def _stores(app: Conveyor) -> bool:
    try:
        asyncio.run(app.aenqueue("t.after", 0))
    except BackendUnavailable:
        return False
    return True


def _psql(sql: str) -> None:
    subprocess.run(["psql", POSTGRES_URL, "-X", "-q", "-c", sql], check=True, capture_output=True, timeout=30)
