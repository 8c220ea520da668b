"""Wake-ups from LISTEN/NOTIFY: one connection per backend, read by one thread.

Inserts (by a trigger) and requeues notify "<schema>.wake" with the queue's name
as the payload. A waiter reads the generation of its queues, looks at the table,
then blocks until one of those generations moves, so a notification between the
look and the block is never missed. Correctness never rests on a notification:
waits are bounded, so a lost one costs at most one wait, and with LISTEN off
(PgBouncer in transaction mode) or its connection down, waiters simply poll.

A LISTEN connection is idle to the server between notifications, so servers, proxies
and NAT gateways close it like any idle session (see pools.py): it sends an empty
query after _PING_AFTER without one, which keeps it open, or finds it gone at once.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Sequence

import psycopg
from psycopg import sql

from conveyor.backends.postgres.pools import idle_long

log = logging.getLogger("conveyor.postgres")

_READ_SECONDS = 0.25  # the reader's longest block: bounds how long close() waits for it
_RETRY_SECONDS = 1.0  # pause before reconnecting a lost LISTEN connection


class Listener:
    """Per-queue counters that move on every notification for that queue."""

    def __init__(self, conninfo: str, schema: str, *, enabled: bool) -> None:
        self._conninfo = conninfo
        self._channel = f"{schema}.wake"
        self._enabled = enabled
        self._cond = threading.Condition()
        self._generations: dict[str, int] = {}
        self._lost = 0  # moves when the connection drops: every waiter looks again
        self._listening = False
        self._down_since: float | None = None  # when the connection was lost, if it is
        self._closed = False
        self._thread: threading.Thread | None = None

    @property
    def enabled(self) -> bool:
        """False when LISTEN is off (listen=0, pgbouncer=1): waiters always poll."""
        return self._enabled

    @property
    def listening(self) -> bool:
        """True while notifications are being received; waiters poll otherwise."""
        return self._listening

    def generation(self, queues: Sequence[str]) -> tuple[int, ...]:
        """A snapshot to pass to `wait`; starts the reader on first use."""
        with self._cond:
            if self._enabled and self._thread is None and not self._closed:
                self._thread = threading.Thread(target=self._run, name="conveyor-pg-listen", daemon=True)
                self._thread.start()
            return self._snapshot(queues)

    def wait(self, queues: Sequence[str], seen: tuple[int, ...], timeout: float) -> bool:
        """Block until a queue in `queues` is notified after `seen` was taken; False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: self._closed or self._snapshot(queues) != seen, timeout)

    def _snapshot(self, queues: Sequence[str]) -> tuple[int, ...]:
        return (self._lost, *(self._generations.get(q, 0) for q in queues))

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=_READ_SECONDS + 2)

    def _run(self) -> None:
        while not self._closed:
            try:
                self._listen()
            except psycopg.Error as exc:
                if self._closed:
                    return
                if self._down_since is None:  # one warning an outage, not one a reconnect attempt
                    log.warning("PostgreSQL LISTEN connection lost, reconnecting: %s", exc)
                    self._down_since = time.monotonic()
            with self._cond:
                self._listening = False
                self._lost += 1
                self._cond.notify_all()
                if not self._closed:
                    self._cond.wait(_RETRY_SECONDS)

    def _listen(self) -> None:
        with psycopg.connect(self._conninfo, autocommit=True) as conn:
            conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self._channel)))
            with self._cond:
                self._listening = True
                self._lost += 1  # anything sent before LISTEN took effect: look again
                self._cond.notify_all()
            if self._down_since is not None:
                log.warning(
                    "PostgreSQL LISTEN connection back after %.1fs", time.monotonic() - self._down_since
                )
                self._down_since = None
            used_at = time.monotonic()
            while not self._closed:
                # notifies() returns after the timeout; reading in slices lets close() stop us.
                for notify in conn.notifies(timeout=_READ_SECONDS):
                    with self._cond:
                        queue = notify.payload
                        self._generations[queue] = self._generations.get(queue, 0) + 1
                        self._cond.notify_all()
                if idle_long(used_at):
                    conn.execute("")  # raises if the server closed it: _run reconnects
                    used_at = time.monotonic()
            with contextlib.suppress(psycopg.Error):
                conn.execute("UNLISTEN *")
