"""The pools' timeout names why no connection came (see conveyor.backends.postgres.pools)."""

from __future__ import annotations

import asyncio
import time
from urllib.parse import quote

import psycopg
import pytest
from psycopg_pool import PoolTimeout

from conveyor.backends.postgres import pools
from conveyor.backends.postgres.aside import Aside
from conveyor.backends.postgres.listener import Listener
from conveyor.backends.postgres.pools import AsyncPool, Pool
from tests.conftest import POSTGRES_URL, eventually, fresh_postgres
from tests.redis.servers import free_port


def _nowhere() -> str:
    return f"postgresql://postgres@127.0.0.1:{free_port()}/postgres"


def test_a_pool_that_cannot_connect_says_why() -> None:
    pool = Pool(_nowhere(), min_size=1, max_size=1, timeout=0.5, open=False)
    pool.open(wait=False)
    with pytest.raises(
        PoolTimeout, match="after 0.50 sec; the last attempt to connect failed: .*Connection refused"
    ):
        pool.getconn()
    pool.close()


def test_an_async_pool_that_cannot_connect_says_why() -> None:
    async def attempt() -> None:
        pool = AsyncPool(_nowhere(), min_size=1, max_size=1, timeout=0.5, open=False)
        await pool.open(wait=False)
        try:
            with pytest.raises(PoolTimeout, match="the last attempt to connect failed: .*Connection refused"):
                await pool.getconn()
        finally:
            await pool.close()

    asyncio.run(attempt())


def test_a_busy_pool_times_out_without_a_stale_reason() -> None:
    """Connected since: the pool is only busy, so its timeout says no more than that."""
    fresh_postgres(POSTGRES_URL)
    pool = Pool(POSTGRES_URL, min_size=1, max_size=1, timeout=0.2, open=False)
    pool.failures.last = "connection refused an hour ago"
    pool.open(wait=True)
    held = pool.getconn()
    with pytest.raises(PoolTimeout) as timed_out:
        pool.getconn()
    assert "last attempt" not in str(timed_out.value)
    pool.putconn(held)
    pool.close()


_IDLE_KILLED = POSTGRES_URL + "?options=" + quote("-c idle_session_timeout=300")  # ms


def _gone(pid: int) -> bool:
    """Whether the server has ended the session `pid` (asked on a connection of its own)."""
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchone()
    return row is not None and row[0] == 0


def test_a_connection_the_server_closed_while_idle_is_replaced_before_it_is_lent(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Servers, proxies and NAT gateways close idle sessions; the first call after a quiet
    spell failed with "terminating connection due to idle-session timeout". A connection
    unused for _PING_AFTER is pinged when lent, and replaced if it is gone."""
    monkeypatch.setattr(pools, "_PING_AFTER", 0.2)
    pool = Pool(_IDLE_KILLED, min_size=1, max_size=1, timeout=5, kwargs={"autocommit": True}, open=True)
    try:
        with pool.connection() as conn:
            pid = conn.info.backend_pid
        eventually(lambda: _gone(pid), timeout=10, message="the server never closed the idle session")
        with pool.connection() as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
            assert conn.info.backend_pid != pid
    finally:
        pool.close()


def test_a_pooled_connection_the_server_ended_is_replaced_without_a_failed_call() -> None:
    """After a restart (here pg_terminate_backend) each pooled connection used to fail
    one call; the server's goodbye left its socket readable, which the pool now checks."""
    pool = Pool(POSTGRES_URL, min_size=1, max_size=1, timeout=5, kwargs={"autocommit": True}, open=True)
    try:
        with pool.connection() as conn:
            pid = conn.info.backend_pid
        with psycopg.connect(POSTGRES_URL, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        eventually(lambda: pools.ended(conn), timeout=10, message="the session never ended")
        with pool.connection() as again:
            assert again.execute("SELECT 1").fetchone() == (1,)
            assert again.info.backend_pid != pid
    finally:
        pool.close()


def test_an_async_pool_replaces_a_connection_the_server_closed_while_idle(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(pools, "_PING_AFTER", 0.2)

    async def attempt() -> None:
        pool = AsyncPool(
            _IDLE_KILLED, min_size=1, max_size=1, timeout=5, kwargs={"autocommit": True}, open=False
        )
        await pool.open()
        try:
            async with pool.connection() as conn:
                pid = conn.info.backend_pid
            eventually(lambda: _gone(pid), timeout=10, message="the server never closed the idle session")
            async with pool.connection() as conn:
                assert await (await conn.execute("SELECT 1")).fetchone() == (1,)
        finally:
            await pool.close()

    asyncio.run(attempt())


def test_the_events_connection_is_pinged_after_a_quiet_spell_too(monkeypatch: pytest.MonkeyPatch) -> None:
    """The event publisher's connection of its own (Aside) lost the first batch after
    a quiet spell the same way."""
    monkeypatch.setattr(pools, "_PING_AFTER", 0.2)
    aside = Aside(_IDLE_KILLED, {"autocommit": True})
    try:
        aside.execute("SELECT 1", {})
        assert aside._conn is not None
        pid = aside._conn.info.backend_pid
        eventually(lambda: _gone(pid), timeout=10, message="the server never closed the idle session")
        aside.execute("SELECT 1", {})
        assert aside._conn.info.backend_pid != pid
    finally:
        aside.close()


def test_the_listen_connection_stays_open_through_idle_session_timeouts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """LISTEN waits look idle to the server: it closed the connection every
    idle_session_timeout, and each time the worker logged a reconnect and polled until it
    was back. An empty query after _PING_AFTER without one keeps it open."""
    monkeypatch.setattr(pools, "_PING_AFTER", 0.3)  # pings at most 0.55 s apart (+ a 0.25 s read)
    closes_idle = POSTGRES_URL + "?options=" + quote("-c idle_session_timeout=1000")
    listener = Listener(closes_idle, "pinged", enabled=True)
    try:
        listener.generation(["q"])  # starts its reader
        eventually(lambda: listener.listening, timeout=10, message="never listened")
        connected = listener._lost  # moves on every connect and every loss
        watch_until = time.monotonic() + 2.5  # two and a half idle timeouts
        while time.monotonic() < watch_until:
            assert listener.listening and listener._lost == connected
            time.sleep(0.05)  # a sampling interval, so the listener's thread gets the GIL
    finally:
        listener.close()


def test_the_events_connection_is_dropped_when_it_reaches_a_read_only_server() -> None:
    """As a pooled connection is (see test_postgres_engine): a standby refuses the
    write, and the next call connects afresh instead of failing on it."""
    read_only = POSTGRES_URL + "?options=" + quote("-c default_transaction_read_only=on")
    aside = Aside(read_only, {"autocommit": True})
    try:
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            aside.execute("CREATE TABLE conveyor_read_only_probe ()", {})
        assert aside._conn is None
    finally:
        aside.close()
