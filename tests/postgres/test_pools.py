"""The pools' timeout names why no connection came (see conveyor.backends.postgres.pools)."""

from __future__ import annotations

import asyncio

import pytest
from psycopg_pool import PoolTimeout

from conveyor.backends.postgres.pools import AsyncPool, Pool
from tests.conftest import POSTGRES_URL, fresh_postgres
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
