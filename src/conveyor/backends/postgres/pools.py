"""psycopg_pool pools whose timeout says why no connection came.

With the server gone under a running pool, psycopg_pool reconnects in the background
and only logs each failure (a `psycopg.pool` warning). A caller waiting for a
connection got "couldn't get a connection after 5.00 sec" and no reason. These pools
keep the reason of their last failed attempt and add it to that error. Asking the
server again at that moment would cost a connect timeout of its own when the network
drops packets, past the caller's timeout; the kept reason costs nothing.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Self

import psycopg
from psycopg_pool import AsyncConnectionPool, ConnectionPool, PoolTimeout

Conn = psycopg.Connection[tuple[Any, ...]]
AsyncConn = psycopg.AsyncConnection[tuple[Any, ...]]


class Failures:
    """The reason a pool's last attempt to connect failed; None once one succeeds."""

    def __init__(self) -> None:
        self.last: str | None = None

    @contextmanager
    def recorded(self) -> Iterator[None]:
        """Around one attempt to connect: keep its reason if it fails, forget it if not."""
        try:
            yield
        except psycopg.OperationalError as exc:
            self.last = " ".join(str(exc).split())  # libpq's reasons span lines
            raise
        self.last = None

    @contextmanager
    def explaining(self) -> Iterator[None]:
        """Around a wait for a connection: a timeout says the last attempt's reason. None
        kept means connecting works and the pool is only busy: the timeout says so alone."""
        try:
            yield
        except PoolTimeout as exc:
            if self.last is None:
                raise
            raise PoolTimeout(f"{exc}; the last attempt to connect failed: {self.last}") from exc


def _recording(failures: Failures) -> type[Conn]:
    """A connection class that tells `failures` how each attempt to connect went."""

    class Recording(psycopg.Connection[tuple[Any, ...]]):
        @classmethod
        def connect(cls, conninfo: str = "", **kwargs: Any) -> Self:
            with failures.recorded():
                return super().connect(conninfo, **kwargs)

    return Recording


def _recording_async(failures: Failures) -> type[AsyncConn]:
    class Recording(psycopg.AsyncConnection[tuple[Any, ...]]):
        @classmethod
        async def connect(cls, conninfo: str = "", **kwargs: Any) -> Self:
            with failures.recorded():
                return await super().connect(conninfo, **kwargs)

    return Recording


class Pool(ConnectionPool[Conn]):
    def __init__(self, conninfo: str, **options: Any) -> None:
        self.failures = Failures()
        super().__init__(conninfo, connection_class=_recording(self.failures), **options)

    def getconn(self, timeout: float | None = None) -> Conn:
        with self.failures.explaining():
            return super().getconn(timeout)


class AsyncPool(AsyncConnectionPool[AsyncConn]):
    def __init__(self, conninfo: str, **options: Any) -> None:
        self.failures = Failures()
        super().__init__(conninfo, connection_class=_recording_async(self.failures), **options)

    async def getconn(self, timeout: float | None = None) -> AsyncConn:
        with self.failures.explaining():
            return await super().getconn(timeout)
