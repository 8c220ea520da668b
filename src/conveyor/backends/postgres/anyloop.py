"""psycopg AsyncConnections that any event loop may borrow: the producers' `aenqueue`.

A producer awaits from whatever loop it runs in: one per `asyncio.run`, one per test,
one per thread. psycopg_pool's AsyncConnectionPool belongs to the loop that opened it
(its workers are tasks of that loop), and `asyncio.to_thread` costs two thread
switches a call, 60-85 us on this project's VM: a single `aenqueue` ran at 1,800/s
that way against 2,500/s for `enqueue`. An AsyncConnection holds no loop of its own
(psycopg asks for the running one at each wait, and its lock binds to a loop only
when contended), so connections lent whole, to one borrower at a time, serve them all.

At most `size` are open. A borrower that finds none idle with the cap reached gets
None and takes the threaded path, whose pool waits. A connection goes back idle only
after a call that ended cleanly with no transaction open; any other is closed, as a
cancelled call may have left its statement running there. One open for `lifetime` (an
hour, psycopg_pool's max_lifetime for the threaded pool) is closed when it comes back,
so sessions renew behind a proxy or a failover address.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
import weakref
from typing import Any

import psycopg

from conveyor.backends.postgres.pools import AsyncConn, reusable, usable_async


class AnyLoopConnections:
    """Up to `size` autocommit AsyncConnections, each lent to one borrower at a time."""

    def __init__(self, conninfo: str, options: dict[str, Any], size: int, timeout: float) -> None:
        self._conninfo = conninfo
        self._options = options
        self._size = size
        self._timeout = timeout
        self._idle: list[tuple[AsyncConn, float]] = []  # (connection, monotonic time returned)
        self._open = 0  # idle or lent
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self._closed = False
        self.lifetime = 3600.0  # seconds a connection may serve (see above)
        self._expires: weakref.WeakKeyDictionary[AsyncConn, float] = weakref.WeakKeyDictionary()

    async def borrow(self) -> AsyncConn | None:
        """An idle connection the server has not ended (see pools.usable), a new one
        while under the cap, or None: at the cap, or when a new one cannot connect (the
        server restarts, recovers, or is down). Nothing was sent then, so the caller
        takes the thread's way, whose pool waits up to the URL's timeout for a
        connection, as a sync enqueue does, and then names the reason. Until 2026-12-07
        the error was raised: in a soak run across a restart, 221 of 225 failed
        aenqueues were that, refused at once."""
        while True:
            conn, since, reserved = self._take()
            if conn is None:
                return await self._connect() if reserved else None
            if await usable_async(conn, since):
                return conn
            self.give_back(conn, clean=False)  # the server ended it while idle: next one

    def give_back(self, conn: AsyncConn, *, clean: bool) -> None:
        """Return a borrowed connection: kept idle after a clean call, else closed."""
        keep = clean and reusable(conn)
        with self._lock:
            young = time.monotonic() < self._expires.get(conn, 0.0)
            if keep and young and not self._closed and self._pid == os.getpid():
                self._idle.append((conn, time.monotonic()))
                return
            self._open -= 1
        _finish(conn)

    def close(self) -> None:
        """Close the idle connections; lent ones close when given back."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
            self._open -= len(idle)
        for conn, _ in idle:
            _finish(conn)

    def _take(self) -> tuple[AsyncConn | None, float, bool]:
        """(an idle connection and when it was returned, False), or (None, 0, whether a
        slot for a new connection was reserved)."""
        with self._lock:
            if self._pid != os.getpid():
                # A forked child: the parent's sockets are the parent's. Closing them
                # here would end the parent's sessions, so they are only forgotten.
                self._idle, self._open, self._pid = [], 0, os.getpid()
            if self._closed:
                return None, 0.0, False
            if self._idle:
                conn, since = self._idle.pop()
                return conn, since, False
            if self._open >= self._size:
                return None, 0.0, False
            self._open += 1
            return None, 0.0, True

    async def _connect(self) -> AsyncConn | None:
        """A new connection in the slot reserved for it; None, the slot freed, when it
        cannot connect within the timeout (see borrow)."""
        try:
            async with asyncio.timeout(self._timeout):
                conn: AsyncConn = await psycopg.AsyncConnection.connect(self._conninfo, **self._options)
        except BaseException as exc:
            with self._lock:
                self._open -= 1
            if isinstance(exc, psycopg.OperationalError | TimeoutError):
                return None
            raise  # a cancellation
        with self._lock:
            self._expires[conn] = time.monotonic() + self.lifetime
        return conn


def _finish(conn: AsyncConn) -> None:
    """Close without awaiting, from any thread or loop: libpq's own close, after which
    psycopg counts the connection closed (and warns of nothing)."""
    conn.pgconn.finish()
