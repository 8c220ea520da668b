"""The connection a producer's single enqueues keep between calls (held.py)."""

from __future__ import annotations

import threading

import psycopg
import pytest

from conveyor.backends.base import NewJob
from conveyor.backends.postgres import pools
from conveyor.backends.postgres.backend import PostgresBackend
from conveyor.backends.postgres.held import Held
from tests.conftest import POSTGRES_URL, eventually


def _one() -> list[NewJob]:
    return [NewJob("t", "q", "[]")]


def _server_pid(backend: PostgresBackend) -> int:
    with backend._held.connection() as conn:
        return conn.info.backend_pid


def test_single_enqueues_stay_on_one_connection_past_the_pool(backend: PostgresBackend) -> None:
    backend.enqueue(_one())
    requests = backend._pool.get_stats().get("requests_num", 0)
    pid = _server_pid(backend)
    for _ in range(20):
        backend.enqueue(_one())
    assert backend._pool.get_stats().get("requests_num", 0) == requests
    assert _server_pid(backend) == pid


def test_with_pool_1_the_held_connection_leaves_the_pool_one_to_lend(backend: PostgresBackend) -> None:
    """The pool is one larger than the URL says: other calls do not wait on the held one."""
    [stored] = backend.enqueue(_one())
    assert backend.get([stored.id])[0] is not None  # through the pool, within its timeout
    assert len(backend.enqueue([NewJob("t", "q", "[1]"), NewJob("t", "q", "[2]")])) == 2


def test_a_thread_that_finds_it_taken_uses_the_pool_without_waiting(backend: PostgresBackend) -> None:
    done = threading.Event()

    def produce() -> None:
        backend.enqueue(_one())
        done.set()

    with backend._held.connection():  # this thread holds it
        thread = threading.Thread(target=produce)
        thread.start()
        assert done.wait(10), "the other thread waited for the held connection"
    thread.join(10)


def test_one_the_server_ended_is_replaced_before_the_next_call(backend: PostgresBackend) -> None:
    backend.enqueue(_one())
    with backend._held.connection() as held:
        pid = held.info.backend_pid
    with psycopg.connect(POSTGRES_URL, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", [pid])
    eventually(lambda: pools.ended(held), timeout=10, message="the session never ended")
    [stored] = backend.enqueue(_one())  # no error: a new connection
    assert stored.id and _server_pid(backend) != pid


def test_a_failed_call_that_broke_it_gives_it_back(backend: PostgresBackend) -> None:
    def call() -> None:
        with backend._held.connection() as conn:
            conn.close()  # as a dropped socket leaves it
            raise RuntimeError

    with pytest.raises(RuntimeError):
        call()
    assert backend._held._conn is None
    assert backend.enqueue(_one())[0].id


def test_closing_the_backend_gives_it_back_closed(backend: PostgresBackend) -> None:
    backend.enqueue(_one())
    conn = backend._held._conn
    assert conn is not None
    backend.close()
    assert conn.closed and backend._held._conn is None


def test_held_for_the_pools_max_lifetime_it_goes_back_and_a_new_one_is_lent() -> None:
    """psycopg_pool renews a connection only when it comes back: held past max_lifetime,
    the one kept would otherwise live as long as the producer."""
    pool = pools.Pool(POSTGRES_URL, min_size=1, max_size=2, max_lifetime=0.5, open=True)
    held = Held(pool)
    try:
        with held.connection() as conn:
            first = conn.info.backend_pid

        def renewed() -> bool:
            with held.connection() as now:
                return now.info.backend_pid != first

        eventually(renewed, timeout=10, message="the held connection outlived max_lifetime")
        assert conn.closed  # the pool closed it as expired, not lent it again
    finally:
        held.close()
        pool.close()
