"""The worker's async path to PostgreSQL: claims and finishes awaited on its event loop.

psycopg's AsyncConnectionPool (see pools.py), two connections (one claim and one batch
of outcomes are in flight at once), opened in the worker's loop and closed with it. The
SQL and the steps are the backend's own (`claim_params`, `claimed`, `finish_steps`);
only the driver differs. Without this path each claim crossed two threads, about 0.8 ms
here while jobs were finishing around it. Limited queues and everything else keep the
backend's threaded path.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import TYPE_CHECKING

from conveyor.backends.base import AsyncWork, Fence, Outcome, translate_errors
from conveyor.backends.postgres.pools import ERRORS, AsyncPool, explained
from conveyor.job import JobRecord

if TYPE_CHECKING:
    from conveyor.backends.postgres.backend import PostgresBackend

_CONNECTIONS = 2  # a claim and a batch of outcomes at once
_NO_QUEUE = "conveyor warm-up"  # not a valid queue name: warm_up's claim finds nothing

_guarded = translate_errors(ERRORS, lambda work: f"PostgreSQL at {work.backend.where}", explained)


class PostgresAsyncWork(AsyncWork):
    """Claim and finish for one worker, on its own small async pool."""

    def __init__(self, backend: PostgresBackend) -> None:
        self.backend = backend
        target = backend.target
        # Not opened in the constructor: connections are made when first needed, so a
        # server that is down now shows up as a claim error the worker backs off from.
        self._pool = AsyncPool(
            target.conninfo,
            min_size=_CONNECTIONS,
            max_size=_CONNECTIONS,
            timeout=target.timeout,
            kwargs=backend.connect_options,
            name=f"conveyor-{backend.schema}-async",
            open=False,
        )
        self._opened = False

    async def _open(self) -> None:
        if not self._opened:
            self._opened = True
            await self._pool.open(wait=False)

    @_guarded
    async def claim(
        self, worker_id: str, queues: Sequence[str], limit: int, lease_seconds: float
    ) -> list[JobRecord]:
        await self._open()
        params = self.backend.claim_params(worker_id, queues, limit, lease_seconds)
        async with self._pool.connection() as conn:
            cursor = await conn.execute(self.backend.query("claim"), params)
            rows = await cursor.fetchall()
        return self.backend.claimed(rows, queues)

    @_guarded
    async def finish(self, outcomes: Sequence[Outcome]) -> list[Fence]:
        if not outcomes:
            return []
        await self._open()
        steps = self.backend.finish_steps(outcomes)
        async with self._pool.connection() as conn, conn.transaction():
            try:
                query, params = next(steps)
                while True:
                    cursor = await conn.execute(self.backend.query(query), params)
                    rows = await cursor.fetchall() if cursor.description else []
                    query, params = steps.send(rows)
            except StopIteration as end:
                fences: list[Fence] = end.value
                return fences

    @_guarded
    async def warm_up(self) -> None:
        """Both connections made, and claim() planned on each, before the first claim: a
        run's first claim took 11.5 ms here against about 3 later. PL/pgSQL plans a
        function's statements on its first call in a session (4-6 ms here), so each
        connection claims once from a queue no one can name (queue names have no spaces)."""
        await self._open()
        await self._pool.wait(timeout=self.backend.target.timeout)
        await asyncio.gather(*(self._claim_nothing() for _ in range(_CONNECTIONS)))

    async def _claim_nothing(self) -> None:
        params = self.backend.claim_params("warm-up", [_NO_QUEUE], 1, 1.0)
        async with self._pool.connection() as conn:
            await (await conn.execute(self.backend.query("claim"), params)).fetchall()

    async def aclose(self) -> None:
        if self._opened:
            await self._pool.close()
