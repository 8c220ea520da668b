"""Workers vacuum the jobs table once its dead rows reach the URL's `vacuum=` (see vacuum.py)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator

import psycopg
import pytest

from conveyor import ConfigError, Conveyor
from conveyor.backends.base import Outcome, OutcomeKind
from conveyor.backends.postgres import vacuum
from conveyor.backends.postgres.backend import PostgresBackend
from conveyor.backends.postgres.connect import DEFAULT_VACUUM, parse_postgres_url
from conveyor.backends.postgres.vacuum import CHECK_EVERY, EVENTS_DEAD, MOST_WAIT, Vacuumer, next_wait
from conveyor.events import KEEP, JobEvent
from tests.conftest import POSTGRES_URL, eventually, fresh_postgres, running


def _app(vacuum_at: int, *, events: bool = True) -> Conveyor:
    fresh_postgres(POSTGRES_URL)
    return Conveyor(f"{POSTGRES_URL}?migrate=1&vacuum={vacuum_at}", prefix="vac", events=events)


@pytest.fixture
def app() -> Iterator[Conveyor]:
    # The tests below vacuum by hand. No events: the publisher writes them in transactions
    # of its own in this database, and one open across the VACUUM keeps the dead rows its
    # snapshot may still see. The likely cause of a CI run that read 132 index pages after
    # the VACUUM (2 expected); nothing else of the test's app writes in the background.
    application = _app(0, events=False)
    yield application
    application.close()


def _pg(app: Conveyor) -> PostgresBackend:
    backend = app.backend
    assert isinstance(backend, PostgresBackend)
    return backend


def _pages_to_next_job(queue: str) -> int:
    """Index pages a look for the queue's next job reads (EXPLAIN's shared buffers)."""
    sql = (
        "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) SELECT id FROM vac.jobs WHERE state = 'queued' "
        "AND queue = %s ORDER BY priority DESC, id LIMIT 1"
    )
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        conn.execute("SET enable_seqscan = off")  # the small test table would be read whole
        (plan,) = conn.execute(sql, (queue,)).fetchone() or ((),)
    top = plan[0]["Plan"]
    return int(top["Shared Hit Blocks"]) + int(top["Shared Read Blocks"])


def _run_through(app: Conveyor, queue: str, count: int) -> None:
    """Jobs that were queued, claimed and completed: what a drain leaves behind."""
    backend = _pg(app)
    app.ref("t.any").options(queue=queue).enqueue_many([(i,) for i in range(count)])
    while claimed := backend.claim("w1", [queue], 500, 60):
        backend.finish([Outcome(r.id, r.lease_token or "", OutcomeKind.COMPLETED) for r in claimed])


def test_the_url_sets_the_dead_rows_that_start_a_vacuum() -> None:
    assert parse_postgres_url("postgresql://h/db").vacuum == DEFAULT_VACUUM == 50_000
    assert parse_postgres_url("postgresql://h/db?vacuum=0").vacuum == 0
    assert (
        parse_postgres_url("postgresql://h/db?vacuum=2000").conninfo == "postgresql://h/db?connect_timeout=5"
    )
    with pytest.raises(ConfigError, match="vacuum='some' must be a number >= 0"):
        parse_postgres_url("postgresql://h/db?vacuum=some")


def test_jobs_run_through_a_queue_slow_its_next_look_until_a_vacuum(app: Conveyor) -> None:
    """Why workers vacuum: each claimed job leaves a dead entry at the front of its
    queue's index, and every look for the next job reads past all of them."""
    app.ref("t.any").options(queue="busy").enqueue(0)  # the job a look finds
    fresh = _pages_to_next_job("busy")
    _run_through(app, "busy", 6_000)
    app.ref("t.any").options(queue="busy").enqueue(0)
    assert _pages_to_next_job("busy") >= fresh + 10  # 6,000 dead entries, a few hundred a page
    assert _pg(app).vacuumer.vacuum("vac.jobs")
    assert _pages_to_next_job("busy") <= fresh + 1


def test_a_worker_vacuums_once_the_dead_rows_reach_the_threshold(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(vacuum, "CHECK_EVERY", 0.05)
    app = _app(1_000)

    @app.task
    async def noop(i: int) -> None:
        """Leaves two dead rows: the job as queued, and as active."""

    backend = _pg(app)
    try:
        with running(app, concurrency=50):
            jobs = noop.enqueue_many([(i,) for i in range(2_000)])
            eventually(lambda: backend.vacuumer.vacuums >= 1, timeout=60, message="no vacuum ran")
            assert all(job.result(timeout=60) is None for job in jobs)
        sql = "SELECT last_vacuum FROM pg_stat_user_tables WHERE relid = 'vac.jobs'::regclass"
        with psycopg.connect(POSTGRES_URL) as conn:
            assert (conn.execute(sql).fetchone() or (None,))[0] is not None  # by hand, not autovacuum
    finally:
        app.close()


def test_no_thread_looks_at_the_table_with_vacuum_0(app: Conveyor) -> None:
    names = {t.name for t in threading.enumerate()}
    _pg(app).maintain()
    assert "conveyor-vacuum" not in names | {t.name for t in threading.enumerate()}


def test_a_failing_look_is_logged_once_and_tried_again(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The server restarting, say: the thread carries on, and says so once, not every second."""
    monkeypatch.setattr(vacuum, "CHECK_EVERY", 0.01)
    looks: list[int] = []

    def dead_rows() -> dict[str, int]:
        looks.append(1)
        if len(looks) <= 5:
            raise psycopg.OperationalError("the server is restarting")
        return {"vac.jobs": 0}

    vacuumer = Vacuumer(POSTGRES_URL, {"autocommit": True}, {"vac.jobs": 100}, dead_rows)
    with caplog.at_level(logging.WARNING, logger="conveyor.postgres"):
        vacuumer.start()
        eventually(lambda: len(looks) > 8, timeout=10)
        vacuumer.close()
    failures = [r for r in caplog.records if "vacuum failed, trying again" in r.getMessage()]
    assert len(failures) == 1 and "the server is restarting" in failures[0].getMessage()
    assert vacuumer.vacuums == 0


def test_a_role_that_may_not_vacuum_the_table_says_so_once_and_stops(
    app: Conveyor, caplog: pytest.LogCaptureFixture
) -> None:
    """An app that runs as a role of its own, which only uses the schema another role owns."""
    _pg(app)  # the schema exists
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_roles WHERE rolname = 'vac_reader'").fetchone():
            conn.execute("CREATE ROLE vac_reader LOGIN")
        conn.execute("GRANT USAGE ON SCHEMA vac TO vac_reader")
    reader = psycopg.conninfo.make_conninfo(POSTGRES_URL, user="vac_reader")
    vacuumer = Vacuumer(reader, {"autocommit": True}, {"vac.jobs": 100}, lambda: {"vac.jobs": 1_000})
    with caplog.at_level(logging.INFO, logger="conveyor.postgres"):
        assert vacuumer.vacuum("vac.jobs") is False
    assert "not vacuuming vac.jobs: only its owner may" in caplog.text
    vacuumer.close()


def test_a_vacuum_that_removes_nothing_waits_longer_each_time() -> None:
    """Dead rows a long transaction still sees stay after VACUUM: trying again every
    second would read the table's indexes for nothing."""
    waits = [CHECK_EVERY]
    for _ in range(8):
        waits.append(next_wait(waits[-1], still_dead=True))
    assert waits == [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 64.0, 64.0] and MOST_WAIT == 64.0
    assert next_wait(64.0, still_dead=False) == CHECK_EVERY


def test_the_thread_backs_off_while_vacuums_leave_the_rows_and_looks_each_second_once_cleared(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    counts = iter([100, 100, 100, 100, 5, 5])  # look, after the VACUUM; look, after; look; look
    vacuumer = Vacuumer(POSTGRES_URL, {}, {"vac.jobs": 10}, lambda: {"vac.jobs": next(counts)})
    vacuumed: list[str] = []

    def vacuum_now(table: str) -> bool:
        vacuumed.append(table)
        return True

    monkeypatch.setattr(vacuumer, "vacuum", vacuum_now)

    class Waits:
        """The thread's stop event: records each wait, and stops it after four."""

        def __init__(self) -> None:
            self.seen: list[float] = []

        def wait(self, timeout: float) -> bool:
            self.seen.append(timeout)
            return len(self.seen) > 4

    waits = Waits()
    monkeypatch.setattr(vacuumer, "_stop", waits)
    vacuumer._run()
    assert waits.seen == [1.0, 2.0, 4.0, 1.0, 1.0]
    assert vacuumed == ["vac.jobs", "vac.jobs"]


def test_the_events_table_is_vacuumed_once_its_trims_leave_enough_dead_rows(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each publish trims the batches past the newest 1,000, and that trim reads every
    dead row in front of them until a VACUUM."""
    monkeypatch.setattr(vacuum, "CHECK_EVERY", 0.05)
    app = _app(DEFAULT_VACUUM)
    backend = _pg(app)
    try:
        event = JobEvent("enqueued", "default:1", "default", "t", 0.0)
        for _ in range(KEEP + EVENTS_DEAD + 100):
            backend.publish([event])
        backend._events.close()  # its server process reports its dead rows as it exits, not 10 s idle
        backend.maintain()
        sql = "SELECT last_vacuum FROM pg_stat_user_tables WHERE relid = 'vac.events'::regclass"
        with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:  # statistics read afresh
            eventually(lambda: (conn.execute(sql).fetchone() or (None,))[0] is not None, timeout=30)
    finally:
        app.close()
