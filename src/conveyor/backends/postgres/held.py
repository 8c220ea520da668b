"""One pooled connection that a producer's single enqueues keep between calls.

Borrowing from psycopg_pool and giving back (its lock, logging calls, stats and reset
check, and ours: the ended() poll) cost a single enqueue 35-55 us of wall time on this
project's VM, where one enqueue takes about 300: the longer a producer is away between
round trips, the more often the server's vCPU has gone idle and must be woken. Held,
the connection is checked only with ended()'s poll, under a lock no one waits for: a
thread that finds it taken borrows from the pool as before.

The pool is one connection larger than the URL's `pool` (see PostgresBackend), so the
one held never leaves the other callers short: with pool=1 they would wait on it. It is
kept until it breaks, the server ends it, the backend closes, or it has been held for
the pool's max_lifetime (an hour): psycopg_pool renews a connection only when it comes
back, so the held one goes back then, and the pool closes it as expired and lends
another. Servers behind a proxy or a failover address count on old sessions ending.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from psycopg.errors import ReadOnlySqlTransaction

from conveyor.backends.postgres.pools import Conn, Pool, reusable, usable


class Held:
    """A connection taken from `pool` on first use and kept; replaced when it breaks."""

    def __init__(self, pool: Pool) -> None:
        self._pool = pool
        self._lock = threading.Lock()
        self._conn: Conn | None = None
        self._used_at = 0.0  # time.monotonic() when the last call on it ended
        self._taken_at = 0.0  # time.monotonic() when it was taken from the pool

    @contextmanager
    def connection(self) -> Iterator[Conn]:
        """The held connection, or the pool's when another thread holds it."""
        if not self._lock.acquire(blocking=False):
            with self._pool.connection() as conn:
                yield conn
            return
        try:
            conn = self._ready()
            try:
                yield conn
            except BaseException as exc:
                if isinstance(exc, ReadOnlySqlTransaction):
                    conn.close()  # a standby: the next connection may reach the primary
                self._check(conn)
                raise
            self._used_at = time.monotonic()
        finally:
            self._lock.release()

    def _ready(self) -> Conn:
        conn = self._conn
        if conn is not None and not self._expired() and usable(conn, self._used_at):
            return conn
        self._drop()
        self._conn = self._pool.getconn()  # waits up to the pool's timeout, as any call
        self._taken_at = time.monotonic()
        return self._conn

    def _expired(self) -> bool:
        """Held for the pool's max_lifetime: the connection is at least that old, so the
        pool, which gives each one 95-100% of it, closes it when it comes back."""
        return time.monotonic() - self._taken_at >= self._pool.max_lifetime

    def _check(self, conn: Conn) -> None:
        """After a failed call: a connection that is closed, broken or mid-transaction
        goes back to the pool, which discards or resets it."""
        if not reusable(conn):
            self._drop()

    def _drop(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            self._pool.putconn(conn)

    def close(self) -> None:
        """Give the connection back (the backend is closing), waiting for a call on it."""
        with self._lock:
            self._drop()
