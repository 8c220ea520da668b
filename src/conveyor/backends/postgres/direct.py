"""One prepared statement sent through libpq itself: the single enqueue's INSERT.

psycopg's `Connection.execute` spends about 35 us of CPU a call above libpq's own (a
cursor, the adapters, converting the query, its prepared-statement cache). On this
project's 2-vCPU VM that cost about 100 us of wall time a call: a producer that stays
away longer between round trips more often finds the server's vCPU halted and waits for
it to wake. One enqueue at a time ran at 2,424-2,590 jobs/s through `execute` and at
3,915-4,210 through `pgconn` (pgbench with the same statement, 1 client: 4,750-5,130).

The statement is prepared once on each connection, under a name made from its text, and
its parameters go as text with no type, which is how psycopg sends a str; the server types
them from the statement. Only values every engine call stores go this way: None, str,
int and float. Anything else (a NUL byte, a lone surrogate, a bool, an error reply) gets
None back, and the caller runs the statement through psycopg, which sends it again or
raises psycopg's own error. An error reply stored nothing (one statement, autocommit,
no transaction open), so the second send cannot store a job twice.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import select
import weakref
from collections.abc import Mapping
from typing import Any

import psycopg
from psycopg import pq

_TUPLES_OK = pq.ExecStatus.TUPLES_OK
_COMMAND_OK = pq.ExecStatus.COMMAND_OK
_MISSING = b"26000"  # invalid_sql_statement_name: DEALLOCATE ALL (or DISCARD ALL) ran
_PREPARED = b"42P05"  # duplicate_prepared_statement: another process's, behind PgBouncer
_PLACEHOLDER = re.compile(r"%\((\w+)\)s")
Conn = psycopg.Connection[Any]
AsyncConn = psycopg.AsyncConnection[Any]


class DirectStatement:
    """A statement with psycopg's %(name)s placeholders, run on libpq by a name made
    from its text. Behind PgBouncer in transaction mode (a URL without pgbouncer=1)
    several processes share a server connection's prepared statements: the same name
    always means the same text, so one prepared by another process (another prefix's
    schema has another name) is as good as this one's."""

    def __init__(self, sql: str) -> None:
        names: list[str] = []

        def number(match: re.Match[str]) -> str:
            if match[1] not in names:
                names.append(match[1])
            return f"${names.index(match[1]) + 1}"

        self.sql = _PLACEHOLDER.sub(number, sql).encode()
        self.name = b"conveyor_" + hashlib.sha256(self.sql).hexdigest()[:24].encode()
        self.params = tuple(names)
        # Each connection this statement is prepared on, with a poller for its socket
        # (made once: a poll object and its registration cost about 1 us a call).
        self._ready: weakref.WeakKeyDictionary[Conn, select.poll] = weakref.WeakKeyDictionary()
        self._ready_async: weakref.WeakSet[AsyncConn] = weakref.WeakSet()

    def first_value(self, conn: Conn, params: Mapping[str, Any]) -> str | None:
        """The first column of the first row the statement returns, as text; None when
        this path cannot run it (see the module's notes). `conn` has no transaction open."""
        values = _texts([params[name] for name in self.params])
        if values is None:
            return None
        pgconn = conn.pgconn
        try:
            poller = self._ready.get(conn) or self._prepare(conn)
            if poller is None:
                return None
            pgconn.send_query_prepared(self.name, values)
            result = _reply(pgconn, poller)
        except BaseException:
            # A statement may still be running (an interrupt) or the connection is gone:
            # closed, the pool replaces it rather than lend it mid-reply.
            conn.close()
            raise
        return self._value(conn, result)

    async def afirst_value(self, conn: AsyncConn, params: Mapping[str, Any]) -> str | None:
        """As first_value, awaited on the running loop: psycopg's AsyncConnection.execute
        cost the same 35 us of CPU a call, and the loop's waits more (see anyloop.py)."""
        values = _texts([params[name] for name in self.params])
        if values is None:
            return None
        pgconn = conn.pgconn
        try:
            if conn not in self._ready_async and not await self._aprepare(conn):
                return None
            pgconn.send_query_prepared(self.name, values)
            result = await _areply(pgconn)
        except BaseException:
            pgconn.finish()  # as first_value; psycopg then counts it closed
            raise
        return self._value(conn, result)

    def _value(self, conn: Conn | AsyncConn, result: pq.abc.PGresult) -> str | None:
        if result.status != _TUPLES_OK:
            if result.error_field(pq.DiagnosticField.SQLSTATE) == _MISSING:
                if isinstance(conn, psycopg.AsyncConnection):
                    self._ready_async.discard(conn)
                else:
                    self._ready.pop(conn, None)
            return None
        value = result.get_value(0, 0) if result.ntuples else None
        return None if value is None else value.decode()

    def _prepare(self, conn: Conn) -> select.poll | None:
        """Prepare the statement on `conn`: its poller, or None if it cannot go this way
        (a client encoding other than UTF-8, which the values are sent in)."""
        if conn.info.encoding != "utf-8":
            return None
        poller = select.poll()
        poller.register(conn.pgconn.socket, select.POLLIN)
        conn.pgconn.send_prepare(self.name, self.sql)
        if not _prepared(_reply(conn.pgconn, poller)):
            return None
        self._ready[conn] = poller
        return poller

    async def _aprepare(self, conn: AsyncConn) -> bool:
        if conn.info.encoding != "utf-8":
            return False
        conn.pgconn.send_prepare(self.name, self.sql)
        if not _prepared(await _areply(conn.pgconn)):
            return False
        self._ready_async.add(conn)
        return True


def _prepared(result: pq.abc.PGresult) -> bool:
    """Whether a prepare left the statement there: done, or another process's was."""
    return result.status == _COMMAND_OK or result.error_field(pq.DiagnosticField.SQLSTATE) == _PREPARED


def _texts(values: list[Any]) -> list[bytes | None] | None:
    """Each value in PostgreSQL's text form, or None if one is not plainly sendable."""
    out: list[bytes | None] = []
    for value in values:
        kind = type(value)  # exact types: a bool is an int, and would go as "True"
        if value is None:
            out.append(None)
        elif kind is str:
            if "\0" in value:  # text cannot hold NUL: psycopg says so, libpq would cut it
                return None
            try:
                out.append(value.encode())
            except UnicodeEncodeError:
                return None
        elif kind is int:
            out.append(str(value).encode())
        elif kind is float:
            out.append(repr(value).encode())  # shortest exact form; "inf" and "nan" parse too
        else:
            return None
    return out


def _reply(pgconn: pq.abc.PGconn, poller: select.poll) -> pq.abc.PGresult:
    """The last result of the reply to what was just sent. The waits sleep in poll(),
    which a signal interrupts (Ctrl-C raises here), as psycopg's own do."""
    while pgconn.flush():  # a nonblocking connection: the rest waits for room
        select.select([], [pgconn.socket], [])
    results: list[pq.abc.PGresult] = []
    while True:
        poller.poll()  # first: a reply takes a round trip, so reading at once finds nothing
        if _whole(pgconn, results):
            return results[-1]


async def _areply(pgconn: pq.abc.PGconn) -> pq.abc.PGresult:
    """As _reply, the waits awaited on the running loop (a cancellation raises here)."""
    loop = asyncio.get_running_loop()
    while pgconn.flush():
        await _ready_for(loop, pgconn.socket, write=True)
    results: list[pq.abc.PGresult] = []
    while True:
        await _ready_for(loop, pgconn.socket, write=False)
        if _whole(pgconn, results):
            return results[-1]


def _whole(pgconn: pq.abc.PGconn, results: list[pq.abc.PGresult]) -> bool:
    """Read what arrived into `results`; whether the reply is whole."""
    pgconn.consume_input()
    while not pgconn.is_busy():
        result = pgconn.get_result()
        if result is None:
            if not results:
                raise psycopg.OperationalError("the server sent no result")
            return True
        results.append(result)
    return False


async def _ready_for(loop: asyncio.AbstractEventLoop, fd: int, *, write: bool) -> None:
    waiter = loop.create_future()
    (loop.add_writer if write else loop.add_reader)(fd, _wake, waiter)
    try:
        await waiter
    finally:
        (loop.remove_writer if write else loop.remove_reader)(fd)


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)
