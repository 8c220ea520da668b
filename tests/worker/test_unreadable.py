"""A claim that fails for a reason other than an outage, or leases a job whose stored
row cannot be read, never stops the worker: the unreadable job is stored dead, and an
unexpected claim error is logged with its traceback and retried after a pause."""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from conveyor import Conveyor
from conveyor.backends.base import JobQuery
from conveyor.errors import ConveyorError
from conveyor.job import JobState
from tests.conftest import POSTGRES_URL, REDIS_URL, engine_url, eventually, running
from tests.worker.test_lost_claims import _lose_first_reply


def _spoil_sqlite(app: Conveyor, job_id: str) -> None:
    # closing(): the connection's own `with` commits but leaves it open (3.13 warns).
    with contextlib.closing(sqlite3.connect(app.backend.path)) as conn, conn:  # type: ignore[attr-defined]
        conn.execute("UPDATE unread_jobs SET attempts = '[1]' WHERE id = ?", (int(job_id),))


def _spoil_postgres(app: Conveyor, job_id: str) -> None:
    import psycopg

    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        conn.execute("UPDATE unread.jobs SET attempts = '[1]' WHERE id = %s", (int(job_id),))


def _spoil_redis(app: Conveyor, job_id: str) -> None:
    import redis

    queue, seq = job_id.rsplit(":", 1)
    with redis.Redis.from_url(REDIS_URL) as client:
        client.hset(f"unread:{{{queue}}}:j:{seq}", "priority", "not a number")


SPOIL: dict[str, Callable[[Conveyor, str], None]] = {
    "sqlite": _spoil_sqlite,
    "postgres": _spoil_postgres,
    "redis": _spoil_redis,
}


@pytest.mark.parametrize("engine", sorted(SPOIL))
def test_a_job_the_engine_cannot_read_is_stored_dead_and_the_rest_run(
    engine: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A field edited by hand (or written by another version) fails the row's reading:
    that job is stored dead, and the jobs claimed with it run. Raised, the error used to
    stop the worker, and every worker the row was claimed by after its lease ran out."""
    app = Conveyor(engine_url(engine, tmp_path), prefix="unread")

    @app.task
    def echo(text: str) -> str:
        return text

    jobs = echo.enqueue_many([(f"fine {i}",) for i in range(10)] + [("spoilt",)])
    SPOIL[engine](app, jobs[-1].id)
    with caplog.at_level(logging.ERROR, "conveyor.worker"), running(app, concurrency=20, lease_timeout=30):
        assert [job.result(timeout=10) for job in jobs[:-1]] == [f"fine {i}" for i in range(10)]
        # The row still cannot be read, so its state is counted, not read.
        eventually(lambda: app.backend.counts()["default"].get(JobState.DEAD) == 1)  # lease: 30 s
        assert echo.enqueue("after").result(timeout=10) == "after"  # still at work
    assert f"job {jobs[-1].id}: the engine could not read it; storing it dead: " in caplog.text
    assert app.backend.counts()["default"] == {JobState.COMPLETED: 11, JobState.DEAD: 1}
    cannot_read = f"job {jobs[-1].id}: its stored row cannot be read \\(.+\\); correct the field, or delete"
    with pytest.raises(ConveyorError, match=cannot_read):
        jobs[-1].refresh()
    with pytest.raises(ConveyorError, match=cannot_read):
        app.backend.list_jobs(JobQuery(state=JobState.DEAD))
    assert app.delete(jobs[0].id, jobs[-1].id, jobs[-1].id) == [True, True, True]  # as the error says
    assert app.backend.list_jobs(JobQuery(state=JobState.DEAD)) == []
    assert app.backend.counts()["default"] == {JobState.COMPLETED: 10}
    app.close()


def test_an_unexpected_claim_error_is_logged_and_retried(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A claim that raises something other than BackendUnavailable (here once, as a bug
    in an engine would): the worker logs the traceback, pauses, and claims again."""
    app = Conveyor("memory://")
    claim, failures = app.backend.claim, list[int]()

    def buggy(*args: Any, **kwargs: Any) -> Any:
        if not failures:
            failures.append(1)
            raise KeyError("a bug in the engine")
        return claim(*args, **kwargs)

    @app.task
    def echo(text: str) -> str:
        return text

    monkeypatch.setattr(app.backend, "claim", buggy)
    job = echo.enqueue("hello")
    with caplog.at_level(logging.ERROR, "conveyor.worker"), running(app):
        assert job.result(timeout=10) == "hello"
    assert failures == [1]
    assert "could not claim jobs, retrying in 0.1s: the engine failed to claim: KeyError" in caplog.text
    assert "Traceback" in caplog.text and "a bug in the engine" in caplog.text
    assert job.refresh().state is JobState.COMPLETED
    app.close()


def test_a_lost_claim_whose_jobs_cannot_be_listed_is_left_to_the_lease(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """After a claim's reply was lost, the listing of what it leased fails for a reason
    other than an outage: those jobs are left to their lease, and the worker goes on."""
    app = Conveyor("memory://")
    lost = threading.Event()

    @app.task
    def echo(text: str) -> str:
        return text

    def unlistable(*args: Any, **kwargs: Any) -> Any:
        raise ValueError("a row that cannot be read")

    _lose_first_reply(app, lost)
    monkeypatch.setattr(app.backend, "list_jobs", unlistable)
    first = echo.enqueue("first")
    with caplog.at_level(logging.ERROR, "conveyor.worker"), running(app, lease_timeout=30):
        eventually(lost.is_set)
        assert echo.enqueue("second").result(timeout=10) == "second"
    assert "could not list the jobs a lost claim may have leased" in caplog.text
    assert first.refresh().state is JobState.ACTIVE  # its lease runs out in 30 s
    app.close()


def test_a_flow_parent_that_cannot_be_settled_does_not_stop_the_worker(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Settling a finished child's parent fails for a reason other than an outage (a
    parent row it cannot read): the worker logs it and goes on, and maintenance settles
    the parent later. Raised, it used to stop the worker."""
    from conveyor import chain
    from conveyor.flows import settle

    app = Conveyor("memory://")
    failures = list[int]()

    def flaky(*args: Any) -> Any:
        if not failures:
            failures.append(1)
            raise ValueError("a row that cannot be read")
        return settle(*args)

    @app.task
    def echo(text: str) -> str:
        return text

    monkeypatch.setattr("conveyor.worker.store.settle", flaky)
    monkeypatch.setattr("conveyor.worker.maintenance._FLOWS_EVERY", 0.0)  # settle at every sweep
    last = chain(echo.s("first"), echo.s()).enqueue()
    with caplog.at_level(logging.ERROR, "conveyor.worker"), running(app, lease_timeout=1):
        assert echo.enqueue("after").result(timeout=10) == "after"
        assert last.result(timeout=10) == "first"  # settled by a later sweep
    assert failures == [1]
    assert "could not settle 1 flow job(s); maintenance will try again" in caplog.text
    app.close()


def test_a_stop_whose_unregistering_fails_still_ends_cleanly(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Removing the worker from the engine's list fails for a reason other than an
    outage as it stops: logged, and the worker still exits 0 (running() checks it)."""
    app = Conveyor("memory://")
    report = app.backend.report_worker

    def no_removal(info: Any, *, remove: str | None = None) -> Any:
        if remove is not None:
            raise ValueError("cannot remove this worker")
        return report(info)

    @app.task
    def echo(text: str) -> str:
        return text

    monkeypatch.setattr(app.backend, "report_worker", no_removal)
    with caplog.at_level(logging.ERROR, "conveyor.worker"), running(app):
        assert echo.enqueue("hello").result(timeout=10) == "hello"
    assert "could not unregister worker" in caplog.text and "cannot remove this worker" in caplog.text
    app.close()
