"""An enqueue whose connection drops after it was sent is stored exactly once: the client
learns whether the lost call stored its jobs and sends it again only if it did not.

The faults are real: a TCP proxy (tests/proxy.py) in front of the local PostgreSQL, or of
a PgBouncer in front of it, loses the reply to the call that carries a marked payload, or
the call itself, or hangs up while the server is still running it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlsplit

import psycopg
import pytest

from conveyor.backends.base import Enqueued, NewJob
from conveyor.backends.postgres.backend import PostgresBackend
from conveyor.backends.postgres.lostcall import Row, Undecided, answered
from conveyor.errors import BackendUnavailable
from tests.conftest import POSTGRES_URL, eventually, fresh_postgres
from tests.proxy import ReplyDropper

MARK = "lost-call-marker"
Enqueue = Callable[[PostgresBackend, int], list[str]]


def _jobs(count: int) -> list[NewJob]:
    return [NewJob("t.any", "default", f'[["{MARK}", {n}],{{}}]') for n in range(count)]


def _sync(backend: PostgresBackend, count: int) -> list[str]:
    return [e.id for e in backend.enqueue(_jobs(count))]


def _async(backend: PostgresBackend, count: int) -> list[str]:
    return [e.id for e in asyncio.run(backend.aenqueue(_jobs(count)))]


def _payloads(backend: PostgresBackend, count: int) -> list[str]:
    return backend.enqueue_payloads(_jobs(1)[0], [job.payload for job in _jobs(count)])


WAYS = {
    "one": (_sync, 1), "many": (_sync, 3), "async one": (_async, 1), "async many": (_async, 3),
    "payloads": (_payloads, 3),
}  # fmt: skip


# -- calls of several statements, in a transaction of their own ---------------------------
def _unique(backend: PostgresBackend, count: int) -> list[Enqueued]:
    """Jobs with unique keys between plain ones: one statement each, in one transaction."""
    jobs = _jobs(count)
    for n in range(0, count, 2):
        jobs[n].unique_key = f"key-{n}"
    return backend.enqueue(jobs)


def _flow(backend: PostgresBackend, count: int) -> list[Enqueued]:
    """A parent and its children: the inserts, then the links, in one transaction."""
    jobs = _jobs(count)
    jobs[0].waiting = True
    for job in jobs[1:]:
        job.parent = 0
    return backend.enqueue(jobs)


def _many_payloads(backend: PostgresBackend, count: int) -> list[Enqueued]:
    """More payloads than one statement takes (10,000): two, in one transaction."""
    return [Enqueued(i, True) for i in _payloads(backend, count)]


TX_WAYS = {"unique": (_unique, 3), "flow": (_flow, 3), "two statements": (_many_payloads, 10_001)}


def _ids(stored: list[Enqueued]) -> list[str]:
    return [e.id for e in stored]


@pytest.fixture(params=["server", "pgbouncer"])
def backend(request: pytest.FixtureRequest) -> Iterator[PostgresBackend]:
    fresh_postgres(POSTGRES_URL)
    PostgresBackend(f"{POSTGRES_URL}?migrate=1", prefix="lost").close()
    bounced = request.param == "pgbouncer"
    where = urlsplit(request.getfixturevalue("pgbouncer").url_for(POSTGRES_URL) if bounced else POSTGRES_URL)
    proxy = ReplyDropper((where.hostname or "127.0.0.1", where.port or 5432), marker=MARK.encode())
    proxied = where._replace(netloc=f"127.0.0.1:{proxy.port}").geturl()
    opened = PostgresBackend(f"{proxied}?timeout=3{'&pgbouncer=1' if bounced else ''}", prefix="lost")
    opened.proxy = proxy  # type: ignore[attr-defined]
    yield opened
    opened.close()
    proxy.close()


def _stored(backend: PostgresBackend) -> list[str]:
    """The ids of the marked jobs in the table, oldest first."""
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        rows = conn.execute("SELECT id FROM lost.jobs WHERE payload LIKE %s ORDER BY id", [f"%{MARK}%"])
        return [str(row[0]) for row in rows]


def _proxy(backend: PostgresBackend) -> ReplyDropper:
    proxy: ReplyDropper = backend.proxy  # type: ignore[attr-defined]
    return proxy


@pytest.mark.parametrize("way", WAYS)
def test_a_call_whose_reply_was_lost_answers_with_its_jobs(backend: PostgresBackend, way: str) -> None:
    enqueue, count = WAYS[way]
    _proxy(backend).drop_next.set()
    ids = enqueue(backend, count)
    assert not _proxy(backend).drop_next.is_set()  # the fault happened
    assert ids == _stored(backend) and len(ids) == count


@pytest.mark.parametrize("way", WAYS)
def test_a_call_lost_before_the_server_saw_it_is_sent_again(backend: PostgresBackend, way: str) -> None:
    enqueue, count = WAYS[way]
    _proxy(backend).swallow_next.set()
    ids = enqueue(backend, count)
    assert not _proxy(backend).swallow_next.is_set()
    assert ids == _stored(backend) and len(ids) == count


@contextlib.contextmanager
def _held_up(backend: PostgresBackend) -> Iterator[psycopg.Connection[Any]]:
    """A session that keeps the jobs table from taking inserts until it commits. The
    backend's insert is prepared first: a Parse would wait on the lock, not the call."""
    backend.enqueue([NewJob("t.warm", "default", "[[],{}]")])
    with psycopg.connect(POSTGRES_URL) as lock:
        lock.execute("LOCK TABLE lost.jobs IN SHARE MODE")
        yield lock


def _waiting_inserts() -> int:
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND wait_event_type = 'Lock' AND query LIKE '%INSERT INTO lost.%'"
        ).fetchone()
        return int(row[0]) if row else 0


def _looking() -> bool:
    """Whether a session other than this one has looked at pg_stat_activity (its last
    statement stays shown while it sleeps between looks)."""
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND pid <> pg_backend_pid() AND query LIKE 'SELECT 1 FROM pg_stat_activity%'"
        ).fetchone()
        return bool(row and row[0])


CUT_WAYS: dict[str, tuple[Callable[[PostgresBackend], list[str]], int]] = {
    "one statement": (lambda backend: _sync(backend, 1), 1),
    # The server finishes the held-up insert after the client hung up, then ends the
    # transaction uncommitted: the client waits for that, finds nothing, and sends it again.
    "transaction": (lambda backend: _ids(_unique(backend, 3)), 3),
}


@pytest.mark.parametrize("way", CUT_WAYS)
def test_the_client_waits_for_a_lost_call_the_server_is_still_running(
    backend: PostgresBackend, way: str
) -> None:
    # Without the wait, the look finds nothing and a resend stores the job a second time
    # once the lock goes.
    enqueue, count = CUT_WAYS[way]
    result: list[list[str]] = []
    with _held_up(backend) as lock:
        _proxy(backend).cut_next.set()
        caller = threading.Thread(target=lambda: result.append(enqueue(backend)))
        caller.start()
        eventually(lambda: _waiting_inserts() == 1, timeout=5, message="the lost insert waits on the lock")
        eventually(lambda: not _proxy(backend).cut_next.is_set(), timeout=5, message="the call was cut")
        # Only then: a resend that did not wait would be waiting on the lock too by now.
        eventually(_looking, timeout=5, message="the client waits for the lost call to end")
        lock.commit()
    caller.join(timeout=10)
    assert result and result[0] == _stored(backend) and len(result[0]) == count


def test_a_lost_call_still_running_after_the_timeout_raises_saying_the_job_may_exist(
    backend: PostgresBackend,
) -> None:
    with _held_up(backend) as lock:
        _proxy(backend).cut_next.set()
        with pytest.raises(BackendUnavailable, match=r"was still running it after 3s; the jobs may exist"):
            _sync(backend, 1)
        lock.commit()
    eventually(lambda: len(_stored(backend)) == 1, timeout=5, message="the lost call's job stored")


@pytest.mark.parametrize("way", TX_WAYS)
def test_a_transaction_whose_commit_was_answered_into_the_void_answers_with_its_jobs(
    backend: PostgresBackend, way: str, caplog: pytest.LogCaptureFixture
) -> None:
    enqueue, count = TX_WAYS[way]
    _proxy(backend).marker = b"COMMIT"
    _proxy(backend).drop_next.set()
    with caplog.at_level(logging.INFO, "conveyor.postgres"):
        stored = enqueue(backend, count)
    assert not _proxy(backend).drop_next.is_set()
    assert _ids(stored) == _stored(backend) and all(e.created for e in stored)
    assert "dropped after it was sent; had stored its jobs" in caplog.text


@pytest.mark.parametrize("way", TX_WAYS)
def test_a_transaction_lost_before_its_commit_is_sent_again(
    backend: PostgresBackend, way: str, caplog: pytest.LogCaptureFixture
) -> None:
    enqueue, count = TX_WAYS[way]
    _proxy(backend).drop_next.set()  # the reply to its first marked statement
    with caplog.at_level(logging.INFO, "conveyor.postgres"):
        stored = enqueue(backend, count)
    assert not _proxy(backend).drop_next.is_set()
    assert _ids(stored) == _stored(backend) and len(stored) == count
    assert "dropped after it was sent; had stored nothing: sent again" in caplog.text


def test_a_lost_transaction_answers_a_matched_unique_key_with_the_job_it_matched(
    backend: PostgresBackend,
) -> None:
    holder = backend.enqueue([NewJob("t.any", "default", f'[["{MARK}", "first"],{{}}]', unique_key="k")])[0]
    jobs = _jobs(2)
    jobs[0].unique_key = "k"
    _proxy(backend).marker = b"COMMIT"
    _proxy(backend).drop_next.set()
    stored = backend.enqueue(jobs)
    assert not _proxy(backend).drop_next.is_set()
    assert stored == [Enqueued(holder.id, False), Enqueued(_stored(backend)[1], True)]


def _row(job_id: int, unique_key: str | None = None) -> Row:
    return (job_id, "default", unique_key)


def test_a_lost_transactions_answer_maps_its_rows_to_its_jobs_in_order() -> None:
    jobs = [NewJob("t", "default", "[]", unique_key=key) for key in ("a", None, "b", "a")]
    holders = {"a": "10", "b": "7"}  # the second "a" matched the first, stored just before
    answer = answered(jobs, [_row(10, "a"), _row(11)], lambda job: holders.get(job.unique_key or ""))
    assert answer == [Enqueued("10", True), Enqueued("11", True), Enqueued("7", False), Enqueued("10", False)]


@pytest.mark.parametrize(
    ("rows", "reason"),
    [
        ([_row(10, "a")], "1 of its jobs were found, fewer than it stored"),
        ([_row(10, "a"), _row(11), _row(12)], "3 jobs were found, more than it stored"),
        ([_row(11)], "the job that unique key 'a' matched has ended since"),
    ],
)
def test_a_lost_transactions_answer_that_does_not_add_up_is_undecided(rows: list[Row], reason: str) -> None:
    jobs = [NewJob("t", "default", "[]", unique_key="a"), NewJob("t", "default", "[]")]
    with pytest.raises(Undecided, match=reason):
        answered(jobs, rows, lambda job: None)


@pytest.mark.parametrize("way", WAYS)
def test_a_resend_whose_reply_is_lost_too_is_looked_for_again(
    backend: PostgresBackend, way: str, caplog: pytest.LogCaptureFixture
) -> None:
    enqueue, count = WAYS[way]
    _proxy(backend).swallow_next.set()  # the call never reaches the server: it is sent again,
    _proxy(backend).drop_next.set()  # and the reply to that resend is lost in turn
    with caplog.at_level(logging.INFO, "conveyor.postgres"):
        ids = enqueue(backend, count)
    assert not _proxy(backend).swallow_next.is_set() and not _proxy(backend).drop_next.is_set()
    assert ids == _stored(backend) and len(ids) == count
    told = [
        r.getMessage().rsplit("; ", 1)[-1]
        for r in caplog.records
        if "dropped after it was sent" in r.getMessage()
    ]
    assert told == ["had stored nothing: sent again", "had stored its jobs"]
