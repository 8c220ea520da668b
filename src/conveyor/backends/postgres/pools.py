"""psycopg_pool pools whose timeout says why no connection came, and that drop a
connection to a read-only server.

With the server gone under a running pool, psycopg_pool reconnects in the background
and only logs each failure (a `psycopg.pool` warning). A caller waiting for a
connection got "couldn't get a connection after 5.00 sec" and no reason. These pools
keep the reason of their last failed attempt and add it to that error. Asking the
server again at that moment would cost a connect timeout of its own when the network
drops packets, past the caller's timeout; the kept reason costs nothing.

A connection whose write is refused as read-only reached a standby (a name that still
points at the old primary after a failover, or the wrong host): it is closed, so the
pool replaces it and the next call connects afresh instead of failing on it for the
hour a pooled connection lives.

A connection that sat unused for _PING_AFTER is pinged before it is lent: servers,
proxies and NAT gateways close idle sessions (idle_session_timeout, AWS NAT after
350 s), and the first enqueue after a quiet spell failed with "terminating connection
due to idle-session timeout". A busy process never pings.

psycopg_pool warns of every failed attempt to connect and every connection it finds
closed: a worker's two pools wrote 30 such warnings, each over two lines, in a 40 s
outage. For these pools only, the first failed attempt of an outage is let through
(the next attempt that works ends the outage) and closed connections, which the pool
replaces, are not: the calls that fail meanwhile say why (see Failures.explained).
"""

from __future__ import annotations

import logging
import select
import time
import weakref
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any, Self

import psycopg
from psycopg.errors import (
    DuplicatePreparedStatement,
    InsufficientPrivilege,
    InvalidSqlStatementName,
    ReadOnlySqlTransaction,
)
from psycopg_pool import AsyncConnectionPool, ConnectionPool, PoolTimeout

Conn = psycopg.Connection[tuple[Any, ...]]
AsyncConn = psycopg.AsyncConnection[tuple[Any, ...]]

_PING_AFTER = 30.0  # seconds unused after which a pooled connection is pinged when lent
# How long psycopg_pool retries a lost connection in the background before it gives the
# slot up; the next call that finds no connection then connects anew at once. Its
# retries wait 1 s doubling: past a 40 s outage the next came up to 32 s after the server
# was back (a worker ran its next job 24 s late), and past 5 minutes (its default) it
# stopped retrying. Two seconds leave one retry, and then the callers' own demand.
_RECONNECT_FOR = 2.0

# Prepared statements missing or doubled: the connection goes through PgBouncer in
# transaction mode, where each transaction may run on another server connection, and
# the URL lacks pgbouncer=1. Without it a worker died of the error, unexplained.
_UNPREPARED = (DuplicatePreparedStatement, InvalidSqlStatementName)
# What the engine's calls turn into BackendUnavailable: the server or the network is
# away, no connection came in time, the server is read-only, prepared statements are
# lost on the way, or the role lacks a grant (one GRANT later a waiting worker goes on).
ERRORS = (
    psycopg.OperationalError, psycopg.InterfaceError, PoolTimeout, ReadOnlySqlTransaction,
    InsufficientPrivilege, *_UNPREPARED,
)  # fmt: skip
# What a role that runs workers and producers needs on a schema someone else migrated.
GRANTS = (
    "USAGE on the schema, SELECT, INSERT, UPDATE and DELETE on its tables, and USAGE "
    "and SELECT on its sequences"
)


def explained(exc: Exception) -> str:
    """psycopg's words, and for a read-only server, a missing grant or lost prepared
    statements what to do about it."""
    if isinstance(exc, ReadOnlySqlTransaction):
        return (
            "the server is read-only (a standby?): point the URL at the primary, or list "
            f"every host with target_session_attrs=read-write; it said: {exc}"
        )
    if isinstance(exc, InsufficientPrivilege):
        return f"the role lacks a privilege: it needs {GRANTS} (see the README's Roles); it said: {exc}"
    if isinstance(exc, _UNPREPARED) or "prepared statement" in str(exc):  # or a bind that mismatched
        return (
            "a prepared statement went missing between statements: behind PgBouncer in "
            f"transaction mode (before 1.21), add ?pgbouncer=1 to the URL; it said: {exc}"
        )
    return str(exc)


class Failures:
    """The reason a pool's last attempt to connect failed; None once one succeeds."""

    def __init__(self) -> None:
        self.last: str | None = None
        self.told = False  # psycopg_pool's warning of this outage was let through

    @contextmanager
    def recorded(self) -> Iterator[None]:
        """Around one attempt to connect: keep its reason if it fails, forget it if not."""
        try:
            yield
        except psycopg.OperationalError as exc:
            self.last = " ".join(str(exc).split())  # libpq's reasons span lines
            raise
        self.last, self.told = None, False

    def explained(self, exc: PoolTimeout) -> PoolTimeout:
        """A pool's timeout with the last attempt's reason. None kept means connecting
        works and the pool is only busy: the timeout says so alone."""
        if self.last is None:
            return exc
        return PoolTimeout(f"{exc}; the last attempt to connect failed: {self.last}")


_BY_NAME: weakref.WeakValueDictionary[str, Failures] = weakref.WeakValueDictionary()


class _OncePerOutage(logging.Filter):
    """On psycopg_pool's logger: its warnings about these pools, quieted (see above)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING or not isinstance(record.args, tuple) or not record.args:
            return True
        subject = record.args[0]  # the pool's name, or the connection it discards
        if isinstance(subject, str):
            failures = _BY_NAME.get(subject)
            if failures is None or failures.told:
                return failures is None
            failures.told = True
            return True
        return getattr(type(subject), "failures", None) is None


logging.getLogger("psycopg.pool").addFilter(_OncePerOutage())


def _recording(failures: Failures) -> type[Conn]:
    """A connection class that tells `failures` how each attempt to connect went, and
    keeps when it was last handed back to the pool (see _PING_AFTER)."""

    class Recording(psycopg.Connection[tuple[Any, ...]]):
        idle_since = 0.0  # time.monotonic() when last handed back to the pool
        failures: Failures  # its pool's (see _OncePerOutage)
        poller: select.poll | None = None  # its socket's, made once (see ended)

        @classmethod
        def connect(cls, conninfo: str = "", **kwargs: Any) -> Self:
            with failures.recorded():
                conn = super().connect(conninfo, **kwargs)
            conn.idle_since = time.monotonic()
            conn.poller = select.poll()
            conn.poller.register(conn.pgconn.socket, select.POLLIN)
            return conn

    Recording.failures = failures
    return Recording


def _recording_async(failures: Failures) -> type[AsyncConn]:
    class Recording(psycopg.AsyncConnection[tuple[Any, ...]]):
        idle_since = 0.0
        failures: Failures

        @classmethod
        async def connect(cls, conninfo: str = "", **kwargs: Any) -> Self:
            with failures.recorded():
                conn = await super().connect(conninfo, **kwargs)
            conn.idle_since = time.monotonic()
            return conn

    Recording.failures = failures
    return Recording


def ended(conn: Conn | AsyncConn) -> bool:
    """Whether the server ended `conn`'s session while it sat idle (a restart, a
    pg_terminate_backend, an idle-session timeout). An idle session has nothing to read
    until the server says goodbye, so a zero-timeout poll of its socket tells, for a
    microsecond or two, where a ping is a round trip: after a server restart, each
    pooled connection failed one call before it was replaced. These connections never
    LISTEN, so no notification makes one readable; anything else that did would cost
    only a new connection."""
    if conn.closed:
        return True
    poller = getattr(conn, "poller", None)
    if poller is None:
        poller = select.poll()
        poller.register(conn.pgconn.socket, select.POLLIN)
    return bool(poller.poll(0))


def reusable(conn: Conn | AsyncConn) -> bool:
    """Whether a connection a call just ended on may be lent again: open, and with no
    transaction or statement left running on it."""
    return not conn.closed and conn.pgconn.transaction_status == psycopg.pq.TransactionStatus.IDLE


def usable(conn: Conn, since: float) -> bool:
    """Whether an idle connection, unused since `since`, may be lent (see ended and
    _PING_AFTER); one that is not must be closed, so a pool replaces it."""
    return not ended(conn) and (not idle_long(since) or answers(conn))


async def usable_async(conn: AsyncConn, since: float) -> bool:
    """As `usable`, awaited."""
    return not ended(conn) and (not idle_long(since) or await answers_async(conn))


def idle_long(since: float) -> bool:
    """Whether a connection unused since `since` (time.monotonic()) should be pinged."""
    return time.monotonic() - since >= _PING_AFTER


def answers(conn: Conn) -> bool:
    """Whether the server still answers on `conn`: an empty query, one round trip."""
    try:
        conn.execute("")
    except psycopg.OperationalError:
        return False
    return True


async def answers_async(conn: AsyncConn) -> bool:
    """As `answers`, awaited."""
    try:
        await conn.execute("")
    except psycopg.OperationalError:
        return False
    return True


class Pool(ConnectionPool[Conn]):
    def __init__(self, conninfo: str, **options: Any) -> None:
        self.failures = Failures()
        options.setdefault("reconnect_timeout", _RECONNECT_FOR)
        super().__init__(conninfo, connection_class=_recording(self.failures), **options)
        _BY_NAME[self.name] = self.failures

    def getconn(self, timeout: float | None = None) -> Conn:
        """A connection; one the server ended while it sat idle (see ended), or that a
        ping unused for _PING_AFTER finds gone, is dropped and another lent."""
        try:
            conn = super().getconn(timeout)
            while not usable(conn, getattr(conn, "idle_since", 0.0)):
                conn.close()
                super().putconn(conn)  # closed: discarded, and the pool connects anew
                conn = super().getconn(timeout)
            return conn
        except PoolTimeout as exc:
            raise self.failures.explained(exc) from None  # psycopg_pool's own is `from None`

    def putconn(self, conn: Conn) -> None:
        conn.idle_since = time.monotonic()  # type: ignore[attr-defined]
        super().putconn(conn)

    @contextmanager
    def connection(self, timeout: float | None = None) -> Iterator[Conn]:
        """A connection for the block. Leaner than psycopg_pool's, which also enters the
        connection's own block (a commit call) and times each use for its stats: 3 us
        of a single enqueue's 8 in the pool. The connections are autocommit, and
        putconn rolls back a transaction left open."""
        conn = self.getconn(timeout)
        try:
            yield conn
        except ReadOnlySqlTransaction:
            conn.close()  # the pool replaces a closed connection
            raise
        finally:
            self.putconn(conn)


class AsyncPool(AsyncConnectionPool[AsyncConn]):
    def __init__(self, conninfo: str, **options: Any) -> None:
        self.failures = Failures()
        options.setdefault("reconnect_timeout", _RECONNECT_FOR)
        super().__init__(conninfo, connection_class=_recording_async(self.failures), **options)
        _BY_NAME[self.name] = self.failures

    async def getconn(self, timeout: float | None = None) -> AsyncConn:
        """As Pool.getconn."""
        try:
            conn = await super().getconn(timeout)
            while not await usable_async(conn, getattr(conn, "idle_since", 0.0)):
                await conn.close()
                await super().putconn(conn)
                conn = await super().getconn(timeout)
            return conn
        except PoolTimeout as exc:
            raise self.failures.explained(exc) from None  # psycopg_pool's own is `from None`

    async def putconn(self, conn: AsyncConn) -> None:
        conn.idle_since = time.monotonic()  # type: ignore[attr-defined]
        await super().putconn(conn)

    @asynccontextmanager
    async def connection(self, timeout: float | None = None) -> AsyncIterator[AsyncConn]:
        async with super().connection(timeout) as conn:
            try:
                yield conn
            except ReadOnlySqlTransaction:
                await conn.close()
                raise
