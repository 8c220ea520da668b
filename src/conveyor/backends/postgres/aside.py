"""A connection of its own beside the pool, for a writer that runs in the background.

The event publisher writes a batch every 20 ms from its own thread. Through the pool it
took turns with the application's own enqueues: psycopg_pool lends its idle connections
first in, first out, so once it held two, a single-threaded producer alternated between
two server processes and paid for it on every call. Measured with events on, one thread
enqueueing, alternating runs: 2,519 enqueues a second through the pool, 2,717 with the
publisher on a connection of its own, 2,892 with events off.

Like a pooled one, it is pinged before use after _PING_AFTER unused (see pools.py): a
server that closed it while idle cost the first batch of events after a quiet spell.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from typing import Any

import psycopg
from psycopg.errors import ReadOnlySqlTransaction

from conveyor.backends.postgres.pools import usable


class Aside:
    """One connection, opened on first use and again after it breaks; one caller at a time."""

    def __init__(self, conninfo: str, options: Mapping[str, Any]) -> None:
        self._conninfo = conninfo
        self._options = dict(options)
        self._lock = threading.Lock()
        self._conn: psycopg.Connection[tuple[Any, ...]] | None = None
        self._used_at = 0.0  # time.monotonic() of the last statement
        self._closed = False

    def execute(self, query: str, params: Mapping[str, Any]) -> None:
        """Run one statement (its own transaction: the connection is in autocommit)."""
        with self._lock:
            if self._closed:
                raise psycopg.InterfaceError("the connection is closed")
            if self._conn is not None and not usable(self._conn, self._used_at):
                self._conn.close()  # the server ended it while idle
            if self._conn is None or self._conn.closed:
                self._conn = psycopg.connect(self._conninfo, **self._options)
            try:
                self._conn.execute(query, params)
                self._used_at = time.monotonic()
            except psycopg.Error as exc:
                # The next call connects afresh: the connection broke, or it reached a
                # standby, which a new connection may not (see pools.py).
                if self._conn.broken or isinstance(exc, ReadOnlySqlTransaction):
                    self._conn.close()
                    self._conn = None
                raise

    def close(self) -> None:
        with self._lock:
            self._closed = True
            if self._conn is not None:
                self._conn.close()
                self._conn = None
