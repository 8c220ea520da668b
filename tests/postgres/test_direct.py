"""The single enqueue through libpq (direct.py): what it stores equals what psycopg's
path stores, and whatever it cannot send goes through psycopg, error and all."""

from __future__ import annotations

import asyncio
import signal
from types import FrameType
from typing import Any
from urllib.parse import quote

import psycopg
import pytest
from psycopg import errors

from conveyor import BackendUnavailable, Conveyor
from conveyor.backends.base import NewJob
from conveyor.backends.postgres import migrate_database
from conveyor.backends.postgres.backend import PostgresBackend
from conveyor.backends.postgres.direct import DirectStatement
from tests.conftest import POSTGRES_URL, fresh_postgres


def _count(backend: PostgresBackend) -> int:
    with backend._pool.connection() as conn:
        row = conn.execute(f"SELECT count(*) FROM {backend.schema}.jobs").fetchone()
    assert row is not None
    return int(row[0])


def test_what_it_stores_reads_back_exactly(backend: PostgresBackend) -> None:
    """Floats go as their shortest exact text, so they come back bit for bit."""
    job = NewJob("tâche.ü", "q", '[["é", 1], {}]', priority=-7, max_attempts=4, retries=3,
                 timeout=0.1, run_at=1_733_570_000.123_456_7, meta={"k": "v"}, limit_key="u1")  # fmt: skip
    [stored] = backend.enqueue([job])
    [record] = backend.get([stored.id])
    assert record is not None and backend._direct is not None
    assert len(backend._direct._ready) == 1  # it went through libpq
    got = (record.task, record.queue, record.payload, record.priority, record.max_attempts, record.timeout)
    assert got == ("tâche.ü", "q", '[["é", 1], {}]', -7, 4, 0.1)
    assert (record.run_at, record.meta) == (1_733_570_000.123_456_7, {"k": "v"})


def test_a_value_it_cannot_send_goes_through_psycopg_and_its_error(backend: PostgresBackend) -> None:
    """A NUL byte would be cut short by libpq's text parameters: psycopg refuses it."""
    with pytest.raises(psycopg.DataError, match="NUL"):
        backend.enqueue([NewJob("t", "q", "[]", limit_key="a\0b")])
    assert _count(backend) == 0


def test_an_error_reply_is_raised_by_psycopg_and_stores_nothing(backend: PostgresBackend) -> None:
    """The server refuses a priority past integer: the same psycopg error as before, the
    statement sent once more through psycopg, and no job."""
    with pytest.raises(errors.NumericValueOutOfRange):
        backend.enqueue([NewJob("t", "q", "[]", priority=2**40)])
    [stored] = backend.enqueue([NewJob("t", "q", "[]")])  # the connection still serves
    assert _count(backend) == 1 and stored.id


def test_a_statement_deallocated_under_it_is_prepared_again(backend: PostgresBackend) -> None:
    """DEALLOCATE ALL (a pooler's or an operator's): the call that finds it gone goes
    through psycopg, and the next prepares it again; no job is lost or doubled."""
    backend.enqueue([NewJob("t", "q", "[]")])
    with backend._held.connection() as conn:  # the one single enqueues use
        conn.execute("DEALLOCATE ALL")
    backend.enqueue([NewJob("t", "q", "[]")])
    assert backend._direct is not None and len(backend._direct._ready) == 0
    backend.enqueue([NewJob("t", "q", "[]")])
    assert len(backend._direct._ready) == 1 and _count(backend) == 3


def test_a_client_encoding_other_than_utf8_goes_through_psycopg() -> None:
    fresh_postgres(POSTGRES_URL)
    options = quote("-c client_encoding=LATIN1")
    backend = PostgresBackend(f"{POSTGRES_URL}?migrate=1&options={options}", prefix="latin")
    try:
        [stored] = backend.enqueue([NewJob("tâche", "q", '["é"]')])
        [record] = backend.get([stored.id])
        assert record is not None and (record.task, record.payload) == ("tâche", '["é"]')
        assert backend._direct is not None and len(backend._direct._ready) == 0
    finally:
        backend.close()


class _Interrupted(Exception):
    pass


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise _Interrupted


def test_an_interrupted_call_closes_its_connection(backend: PostgresBackend) -> None:
    """Ctrl-C while the reply is awaited: the statement may still run there, so the
    connection is closed (the pool replaces it) rather than lent mid-reply."""
    statement = DirectStatement("SELECT pg_sleep(%(seconds)s)::text")
    previous = signal.signal(signal.SIGALRM, _interrupt)
    try:
        with backend._pool.connection() as conn:
            signal.setitimer(signal.ITIMER_REAL, 0.2)
            with pytest.raises(_Interrupted):
                statement.first_value(conn, {"seconds": 5.0})
            assert conn.closed
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    [stored] = backend.enqueue([NewJob("t", "q", "[]")])  # a new connection serves
    assert stored.id and _count(backend) == 1


def test_placeholders_become_numbered_parameters_once_each() -> None:
    statement = DirectStatement("SELECT %(a)s, %(b)s::int, %(a)s::float8")
    assert statement.sql == b"SELECT $1, $2::int, $1::float8"
    assert statement.params == ("a", "b")


def test_a_name_stands_for_one_text() -> None:
    """Behind PgBouncer two prefixes' processes may share a server connection: the same
    name for two schemas' INSERTs would store one app's jobs in the other's table."""
    one, other = (DirectStatement(f"INSERT INTO {schema}.jobs VALUES (%(a)s)") for schema in ("a", "b"))
    assert one.name != other.name
    assert DirectStatement("INSERT INTO a.jobs VALUES (%(a)s)").name == one.name


def test_a_statement_another_connection_prepared_under_its_name_is_used(backend: PostgresBackend) -> None:
    """What a process behind PgBouncer meets when another one prepared it on the server
    connection first: preparing says it exists, and the call goes ahead on it."""
    assert backend._direct is not None
    with backend._pool.connection() as conn:
        conn.pgconn.prepare(backend._direct.name, backend._direct.sql)  # "the other process"
        assert backend._direct.first_value(conn, backend._scalars(NewJob("t", "q", "[]")))
        assert conn in backend._direct._ready
    assert _count(backend) == 1


def test_two_prefixes_behind_pgbouncer_keep_their_jobs_apart(pgbouncer: Any) -> None:
    """Without pgbouncer=1 two apps' processes share the server connections PgBouncer
    lends in turn, and the statements prepared there. psycopg's collide, and the error
    says to add pgbouncer=1 (see test_postgres_engine.py); a single enqueue's, named for
    its text, never stores one app's job in the other's schema."""
    fresh_postgres(POSTGRES_URL)
    through = pgbouncer.url_for(POSTGRES_URL)
    for prefix in ("east", "west"):
        migrate_database(POSTGRES_URL, prefix=prefix)
    apps = {prefix: Conveyor(through, prefix=prefix) for prefix in ("east", "west")}
    stored, said = dict.fromkeys(apps, 0), []
    try:
        for i in range(12):  # taking turns
            for prefix, app in apps.items():
                try:
                    app.enqueue(f"{prefix}.t", i)
                    stored[prefix] += 1
                except BackendUnavailable as exc:
                    said.append(str(exc))
    finally:
        for app in apps.values():
            app.close()
    assert all("add ?pgbouncer=1 to the URL" in text for text in said)
    with psycopg.connect(POSTGRES_URL) as conn:  # not through PgBouncer
        for prefix in apps:
            rows = conn.execute(f"SELECT task, count(*) FROM {prefix}.jobs GROUP BY task").fetchall()
            assert rows == [(f"{prefix}.t", stored[prefix])]


def test_aenqueue_goes_through_libpq_on_the_loop_and_reads_back(backend: PostgresBackend) -> None:
    job = NewJob("t", "q", '["é"]', timeout=0.25, meta={"k": 1})
    [stored] = asyncio.run(backend.aenqueue([job]))
    [record] = backend.get([stored.id])
    assert record is not None and (record.payload, record.timeout, record.meta) == ('["é"]', 0.25, {"k": 1})
    assert backend._direct is not None and len(backend._direct._ready_async) == 1


def test_aenqueue_of_a_value_it_cannot_send_raises_psycopgs_error(backend: PostgresBackend) -> None:
    with pytest.raises(psycopg.DataError, match="NUL"):
        asyncio.run(backend.aenqueue([NewJob("t", "q", "[]", limit_key="a\0b")]))
    assert _count(backend) == 0


def test_a_cancelled_await_finishes_its_connection() -> None:
    """A request's timeout cancels the await while the statement runs: the connection is
    finished, so no later call reads that statement's reply."""
    statement = DirectStatement("SELECT pg_sleep(%(seconds)s)::text")

    async def cancelled() -> psycopg.AsyncConnection[Any]:
        conn = await psycopg.AsyncConnection.connect(POSTGRES_URL, autocommit=True)
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.2):
                await statement.afirst_value(conn, {"seconds": 5.0})
        return conn

    assert asyncio.run(cancelled()).closed


def test_aenqueue_after_deallocate_all_prepares_again(backend: PostgresBackend) -> None:
    asyncio.run(backend.aenqueue([NewJob("t", "q", "[]")]))
    [(conn, _)] = backend._anyloop._idle

    async def deallocate_then_enqueue_twice() -> None:
        await conn.execute("DEALLOCATE ALL")
        await backend.aenqueue([NewJob("t", "q", "[]")])  # finds it gone: psycopg's path
        assert backend._direct is not None and conn not in backend._direct._ready_async
        await backend.aenqueue([NewJob("t", "q", "[]")])
        assert conn in backend._direct._ready_async

    asyncio.run(deallocate_then_enqueue_twice())
    assert _count(backend) == 3
