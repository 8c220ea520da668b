"""PostgreSQL specifics: URLs, migrations, transactional enqueue, the SQL surface, faults."""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import psycopg
import pytest
from psycopg import sql

from conveyor import BackendUnavailable, ConfigError, Conveyor, Fail, Job, JobState
from conveyor.backends import open_backend
from conveyor.backends.base import NewJob
from conveyor.backends.postgres import backend as backend_module
from conveyor.backends.postgres import connect, migrate_database, pools
from conveyor.backends.postgres.backend import PostgresBackend
from conveyor.backends.postgres.connect import parse_postgres_url
from conveyor.backends.postgres.migrate import latest_version
from conveyor.events import JobEvent
from conveyor.task import Task
from tests.conftest import (
    POSTGRES_URL,
    eventually,
    fresh_postgres,
    rides_out_an_outage_quietly,
    running,
    runs_a_job,
    spy_part_sizes,
    waits_for_its_engine,
)
from tests.postgres import schema, server

ROOT = Path(__file__).resolve().parents[2]
SCHEMA_SQL = ROOT / "src/conveyor/backends/postgres/schema.sql"


@pytest.fixture
def url() -> str:
    fresh_postgres(POSTGRES_URL)
    return f"{POSTGRES_URL}?migrate=1"


@pytest.fixture
def app(url: str) -> Iterator[Conveyor]:
    application = Conveyor(url, prefix="pg")
    yield application
    application.close()


@pytest.fixture
def own_server() -> Iterator[server.Server]:
    found = server.server()
    yield found
    found.remove()


def psql(*sql: str) -> str:
    """Run statements the way an operator would, in psql, and return its unaligned output."""
    command = ["psql", POSTGRES_URL, "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1"]
    for statement in sql:
        command += ["-c", statement]
    return subprocess.run(command, capture_output=True, text=True, check=True, timeout=30).stdout


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("postgresql://h/db?pool=0", "pool='0' must be a number >= 1"),
        ("postgresql://h/db?timeout=soon", "timeout='soon' must be a number"),
        ("postgresql://h/db?migrate=maybe", "migrate='maybe' must be 1 or 0"),
        ("mysql://h/db", "not a PostgreSQL URL"),
    ],
)
def test_bad_urls_name_what_is_wrong(url: str, problem: str) -> None:
    with pytest.raises(ConfigError, match=problem):
        parse_postgres_url(url)


def test_url_options_are_taken_off_and_libpq_options_pass_through() -> None:
    target = parse_postgres_url("postgres://u:pw@db.example.com/app?sslmode=require&pool=3&pgbouncer=1")
    assert target.conninfo == "postgresql://u:pw@db.example.com/app?sslmode=require&connect_timeout=5"
    assert (target.pool, target.listen, target.prepare, target.migrate) == (3, False, False, False)


@pytest.mark.parametrize(
    ("url", "conninfo"),
    [
        ("postgresql:///app", "postgresql:///app?connect_timeout=5"),
        (
            "postgresql:///app?host=/run/postgresql&pool=2",
            "postgresql:///app?host=%2Frun%2Fpostgresql&connect_timeout=5",
        ),
        ("postgresql://h:5433/app", "postgresql://h:5433/app?connect_timeout=5"),
        ("postgresql://h", "postgresql://h?connect_timeout=5"),
    ],
)
def test_urls_keep_their_shape_for_libpq(url: str, conninfo: str) -> None:
    """With no host the URL came out as postgresql:/app, which libpq refuses."""
    assert parse_postgres_url(url).conninfo == conninfo


def test_the_local_socket_url_reaches_the_server(url: str) -> None:
    """postgresql:///db, as the README gives it for the local socket (it failed with
    "invalid connection option" until 2026-12-07)."""
    socket_dir = _socket_dir()
    if socket_dir is None:
        pytest.skip("no PostgreSQL socket on this machine (the server listens on TCP only)")
    parts = urlsplit(url)
    backend = open_backend(f"postgresql://{parts.path}?{parts.query}&host={socket_dir}", prefix="socketed")
    try:
        [stored] = backend.enqueue([NewJob("t", "q", "[]")])
        assert backend.get([stored.id])[0] is not None
    finally:
        backend.close()


def _socket_dir() -> str | None:
    for candidate in ("/var/run/postgresql", "/run/postgresql", "/tmp"):
        if any(name.startswith(".s.PGSQL.") for name in _listing(candidate)):
            return candidate
    return None


def _listing(directory: str) -> list[str]:
    try:
        return os.listdir(directory)
    except OSError:
        return []


def test_libpq_options_with_spaces_reach_the_server(url: str) -> None:
    """`options` takes several `-c name=value` separated by spaces; libpq reads a "+"
    as itself, so the spaces must stay %20 (they came out as "+" until 2026-12-06 and
    the server refused the connection: unrecognized parameter "+statement_timeout")."""
    settings = "-c statement_timeout=4321 -c lock_timeout=987"
    app = Conveyor(f"{url}&options={quote(settings)}", prefix="spaced")
    try:
        backend = app.backend
        assert isinstance(backend, PostgresBackend)
        with backend._pool.connection() as conn:
            shown = [
                conn.execute(f"SHOW {name}").fetchone() for name in ("statement_timeout", "lock_timeout")
            ]
        assert shown == [("4321ms",), ("987ms",)]
    finally:
        app.close()


def test_a_prefix_must_be_a_plain_schema_name() -> None:
    with pytest.raises(ConfigError, match="cannot be a PostgreSQL schema name"):
        open_backend(POSTGRES_URL, prefix="My-App")


@pytest.mark.parametrize("prefix", ["left", "user", "order", "system_user"])
def test_a_prefix_postgresql_reserves_is_refused_before_migrating(prefix: str) -> None:
    """Until 2026-12-07 "left" passed the check and migrating failed with a syntax error."""
    with pytest.raises(
        ConfigError, match=f"prefix '{prefix}' is a word PostgreSQL reserves.*'{prefix}_jobs'"
    ):
        migrate_database(POSTGRES_URL, prefix=prefix)


def test_the_reserved_words_are_this_servers(url: str) -> None:
    """The list in connect.py holds every word this server reserves (catcode R and T)."""
    with psycopg.connect(POSTGRES_URL) as conn:
        rows = conn.execute("SELECT word FROM pg_get_keywords() WHERE catcode IN ('R', 'T')").fetchall()
    assert {word for (word,) in rows} <= connect._RESERVED


def test_a_password_never_shows_in_errors() -> None:
    with pytest.raises(BackendUnavailable) as caught:
        open_backend("postgresql://app:s3cret@127.0.0.1:1/db?timeout=1", prefix="x")
    assert "s3cret" not in str(caught.value) and "127.0.0.1:1" in str(caught.value)


def test_a_missing_database_fails_at_once_with_the_servers_reason() -> None:
    """The pool would retry until its timeout and then say only that it timed out."""
    started = time.monotonic()
    with pytest.raises(BackendUnavailable, match='database "no_such_db" does not exist'):
        open_backend(POSTGRES_URL.rsplit("/", 1)[0] + "/no_such_db?timeout=5", prefix="x")
    assert time.monotonic() - started < 2


def test_an_unmigrated_schema_asks_for_conveyor_migrate_which_installs_it() -> None:
    fresh_postgres(POSTGRES_URL)
    with pytest.raises(ConfigError, match="has no Conveyor tables.*conveyor migrate"):
        open_backend(POSTGRES_URL, prefix="fresh")
    command = [sys.executable, "-m", "conveyor", "--url", POSTGRES_URL, "--prefix", "fresh", "migrate"]
    out = subprocess.run(command, capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert "applied 1" in out.stdout
    open_backend(POSTGRES_URL, prefix="fresh").close()
    again = subprocess.run(command, capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert "already current" in again.stdout


def test_a_schema_newer_than_this_conveyor_is_refused(url: str) -> None:
    open_backend(url, prefix="newer").close()
    psql("INSERT INTO newer.migrations VALUES (999, 'future', now())")
    with pytest.raises(ConfigError, match="version 999, newer than this Conveyor knows .*migration 999"):
        open_backend(url, prefix="newer")


def test_a_newer_schema_whose_migrations_say_this_version_reads_it_is_accepted(url: str) -> None:
    # A rolling upgrade: `conveyor migrate` first, and processes of this version still start.
    latest = latest_version()
    open_backend(url, prefix="newer").close()
    psql(f"INSERT INTO newer.migrations VALUES ({latest + 1}, 'additive', now(), {latest})")
    psql(f"INSERT INTO newer.migrations VALUES ({latest + 2}, 'additive_too', now(), {latest - 1})")
    backend = open_backend(url, prefix="newer")  # migrate=1: nothing to apply
    try:
        assert backend.get([backend.enqueue([NewJob("t.any", "default", "[[],{}]")])[0].id])[0] is not None
    finally:
        backend.close()
    assert migrate_database(POSTGRES_URL, "newer") == ([], latest + 2)
    command = [sys.executable, "-m", "conveyor", "--url", POSTGRES_URL, "--prefix", "newer", "migrate"]
    out = subprocess.run(command, capture_output=True, text=True, timeout=60, cwd=ROOT)
    said = f"newer than this Conveyor's {latest}, which still reads it; schema version {latest + 2}"
    assert said in " ".join(out.stdout.split()), out.stdout + out.stderr  # rich wraps at 80
    psql(f"INSERT INTO newer.migrations VALUES ({latest + 3}, 'breaking', now(), {latest + 1})")
    with pytest.raises(ConfigError, match=f"migration {latest + 3} changed what it reads"):
        open_backend(url, prefix="newer")


def test_all_migrations_applied_equal_schema_sql() -> None:
    fresh_postgres(POSTGRES_URL)
    assert schema.dump(POSTGRES_URL) == SCHEMA_SQL.read_text(), (
        "schema.sql is stale: regenerate it with `python -m tests.postgres.schema`"
    )


def test_schema_sql_applied_by_hand_counts_as_migrated() -> None:
    fresh_postgres(POSTGRES_URL)
    subprocess.run(["psql", POSTGRES_URL, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-f", str(SCHEMA_SQL)],
                   check=True, capture_output=True, timeout=60)  # fmt: skip
    assert migrate_database(POSTGRES_URL, "conveyor")[0] == []
    open_backend(POSTGRES_URL, prefix="conveyor").close()


def test_concurrent_migrations_apply_each_version_once() -> None:
    fresh_postgres(POSTGRES_URL)
    applied: list[list[int]] = []
    threads = [
        threading.Thread(target=lambda: applied.append(migrate_database(POSTGRES_URL, "race")[0]))
        for _ in range(4)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    every = list(range(1, latest_version() + 1))
    assert sorted(applied) == [[], [], [], every]


def test_prefixes_keep_apps_apart_on_one_server(url: str) -> None:
    first, second = Conveyor(url, prefix="app_a"), Conveyor(url, prefix="app_b")
    job = first.enqueue("t.any", 1)
    assert second.jobs() == [] and [j.id for j in first.jobs()] == [job.id]
    first.close()
    second.close()


def test_enqueue_joins_the_callers_transaction(app: Conveyor, url: str) -> None:
    @app.task
    def signup(email: str) -> str:
        return f"welcome {email}"

    with running(app), psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        conn.execute("CREATE TEMPORARY TABLE users (email text)")
        with conn.transaction(), app.transaction(conn):
            conn.execute("INSERT INTO users VALUES ('a@example.com')")
            kept = signup.enqueue("a@example.com")
            assert app.jobs() == []  # not visible outside the transaction until it commits
        assert kept.result(timeout=10) == "welcome a@example.com"

        with pytest.raises(RuntimeError, match="request failed"):
            _sign_up_then_fail(conn, app, signup)
        assert [j.id for j in app.jobs()] == [kept.id]  # the rollback took the jobs with it
        assert conn.execute("SELECT count(*) FROM users").fetchone() == (1,)


def _sign_up_then_fail(conn: psycopg.Connection[Any], app: Conveyor, signup: Task[..., str]) -> None:
    with conn.transaction(), app.transaction(conn):
        conn.execute("INSERT INTO users VALUES ('b@example.com')")
        signup.enqueue_many([("b@example.com",), ("c@example.com",)])
        raise RuntimeError("the request failed")


def test_enqueue_joins_a_transaction_through_pgbouncer(pgbouncer: Any) -> None:
    """Transaction mode: the caller's transaction holds one server connection until it
    ends, so its jobs commit or roll back with it; between transactions the connection
    may change, and nothing Conveyor runs relies on a prepared statement."""
    fresh_postgres(POSTGRES_URL)
    through = pgbouncer.url_for(POSTGRES_URL)
    app = Conveyor(f"{through}?migrate=1&pgbouncer=1", prefix="bounced")

    @app.task
    def signup(email: str) -> str:
        return f"welcome {email}"

    kept = []
    with running(app), psycopg.connect(through, autocommit=True, prepare_threshold=None) as conn:
        for i in range(8):  # past psycopg's default prepare_threshold of 5
            with conn.transaction(), app.transaction(conn):
                kept.append(signup.enqueue(f"{i}@example.com"))
        with pytest.raises(RuntimeError, match="request failed"):
            _enqueue_then_fail(conn, app, signup)
        assert [job.result(timeout=10) for job in kept] == [f"welcome {i}@example.com" for i in range(8)]
    assert sorted(j.id for j in app.jobs()) == sorted(j.id for j in kept)
    assert migrate_database(f"{through}?pgbouncer=1", prefix="bounced")[1] == latest_version()
    app.close()


def test_behind_pgbouncer_without_pgbouncer_1_errors_say_what_to_add(pgbouncer: Any) -> None:
    """Two processes' statements, prepared on the one server connection PgBouncer lends
    them in turn, collide. Each error is BackendUnavailable naming the fix, which a
    worker backs off from; until 2026-12-07 it was psycopg's own error, unexplained, and
    a worker's pump died of it."""
    fresh_postgres(POSTGRES_URL)
    through = pgbouncer.url_for(POSTGRES_URL)
    migrate_database(f"{through}?pgbouncer=1", prefix="forgot")
    # No events: their publisher is a third client, and a server connection it holds
    # at the wrong moment sent the two apps' statements to different ones (once in 6
    # runs of tests/postgres on 4 workers, 2026-12-07).
    first, second = (Conveyor(through, prefix="forgot", events=False) for _ in range(2))
    said: list[str] = []
    for i in range(12):  # past psycopg's prepare_threshold of 5, taking turns
        for app in (first, second):
            try:
                # Two jobs: psycopg's prepared statements (a single enqueue's is named for
                # its text, so both processes' are the same statement; see direct.py).
                app.ref("double").enqueue_many([(i,), (i,)])
            except BackendUnavailable as exc:
                said.append(str(exc))
    assert said and all("add ?pgbouncer=1 to the URL" in text for text in said)
    first.close()
    second.close()


def test_a_role_without_privileges_is_told_which_it_needs(url: str) -> None:
    """Until 2026-12-07 a missing privilege surfaced as psycopg's InsufficientPrivilege
    with a traceback. Now migrate names the role and the grants; a producer or worker
    gets BackendUnavailable with them, and works once they are granted; and once the
    owner has migrated, migrate=1 asks nothing of the role."""
    role = f"conveyor_weak_{secrets.token_hex(3)}"
    parts = urlsplit(POSTGRES_URL)
    weak = urlunsplit(parts._replace(netloc=f"{role}@{parts.netloc}"))
    with psycopg.connect(POSTGRES_URL, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
        try:
            with pytest.raises(
                ConfigError, match=f"role '{role}' may not migrate schema 'roles'.*USAGE on the"
            ):
                migrate_database(weak, prefix="roles")
            migrate_database(POSTGRES_URL, prefix="roles")  # the owner migrates
            with pytest.raises(BackendUnavailable, match="the role lacks a privilege: it needs USAGE on the"):
                Conveyor(weak, prefix="roles").enqueue("double", 1)
            for grant in (
                "GRANT USAGE ON SCHEMA roles TO {}",
                "GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA roles TO {}",
                "GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA roles TO {}",
            ):
                admin.execute(sql.SQL(grant).format(sql.Identifier(role)))
            app = Conveyor(f"{weak}?migrate=1", prefix="roles")
            runs_a_job(app)
            app.close()
        finally:
            admin.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
            admin.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def _enqueue_then_fail(conn: psycopg.Connection[Any], app: Conveyor, signup: Task[..., str]) -> None:
    with conn.transaction(), app.transaction(conn):
        signup.enqueue("lost@example.com")
        raise RuntimeError("the request failed")


def test_transactional_enqueue_needs_postgres_and_a_connection(app: Conveyor, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="needs a psycopg 3 connection, got str"), app.transaction("conn"):
        pass
    other = Conveyor(f"sqlite:///{tmp_path / 'x.db'}")
    with pytest.raises(ConfigError, match="needs the PostgreSQL engine"), other.transaction(object()):
        pass
    other.close()


def test_operators_work_jobs_from_psql(app: Conveyor) -> None:
    first = app.enqueue("t.report", 1)
    urgent = app.ref("t.report").options(priority=5).enqueue(2)
    later = app.ref("t.report").options(delay=3600).enqueue(3)
    pending = psql("SELECT id, position, state FROM pg.pending ORDER BY position")
    assert pending.split() == [f"{urgent.id}|1|queued", f"{first.id}|2|queued", f"{later.id}|3|scheduled"]

    claimed = psql("SELECT id || ' ' || lease_token FROM pg.claim('psql', ARRAY['default'], 2)").split("\n")
    (id1, token1), (id2, token2) = sorted(line.split() for line in claimed if line)
    assert psql("SELECT worker FROM pg.active_jobs ORDER BY id").split() == ["psql", "psql"]
    assert psql(f"SELECT pg.complete({id1}, '{token1}', '\"done\"')").strip() == "t"
    assert psql(f"SELECT pg.complete({id1}, '{token1}')").strip() == "f"  # already finished
    assert psql(f"SELECT pg.fail({id2}, '{token2}', 'ValueError: bad row')").strip() == "t"
    assert app.get_job(id1).result() == "done"
    failed = app.get_job(id2)
    assert failed.state is JobState.SCHEDULED and failed.error == "ValueError: bad row"  # retries left
    (again,) = psql("SELECT id || ' ' || lease_token FROM pg.claim('psql', ARRAY['default'], 1)").split("\n")[
        :1
    ]
    job_id, token = again.split()
    assert psql(f"SELECT pg.fail({job_id}, '{token}', 'ValueError: no', final => true)").strip() == "t"
    assert app.get_job(job_id).state is JobState.DEAD
    stats = psql("SELECT state || '=' || jobs FROM pg.queue_stats ORDER BY state")
    assert stats.split() == ["completed=1", "dead=1", "scheduled=1"]


def test_notify_wakes_a_waiting_worker_long_before_its_timeout(url: str) -> None:
    waiter, producer = open_backend(url, prefix="wake"), Conveyor(url, prefix="wake")
    woke = threading.Event()
    thread = threading.Thread(target=lambda: woke.set() if waiter.wait_for_work(["default"], 30) else None)
    thread.start()
    eventually(lambda: waiter._listener.listening, message="LISTEN")  # type: ignore[attr-defined]
    producer.enqueue("t.any", 1)
    assert woke.wait(10), "the worker slept through the notification"
    thread.join(timeout=5)
    waiter.close()
    producer.close()


def test_a_plain_sql_insert_notifies_each_of_its_queues_once_at_commit(app: Conveyor) -> None:
    assert app.backend is not None  # connected: the schema is migrated
    with psycopg.connect(POSTGRES_URL, autocommit=True) as listener:
        listener.execute('LISTEN "pg.wake"')
        with psycopg.connect(POSTGRES_URL) as writer:
            writer.execute(
                "INSERT INTO pg.jobs (task, queue, state, payload, run_at, enqueued_at) "
                "SELECT 't', q, 'queued', '[]', 0, 0 FROM unnest(ARRAY['a', 'b', 'a', 'b', 'a']) AS q"
            )
            assert list(listener.notifies(timeout=0.2)) == []  # nothing before the commit
        got = sorted(n.payload for n in listener.notifies(timeout=2, stop_after=3))
    assert got == ["a", "b"]


def test_result_blocks_on_notify_instead_of_polling(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    app = Conveyor(url, prefix="results")
    release = threading.Event()

    @app.task
    def slow() -> str:
        assert release.wait(10)
        return "done"

    job = slow.enqueue()
    looks: list[str] = []
    get = app.backend.get

    def counted(ids: Any) -> Any:
        looks.append("get")
        return get(ids)

    monkeypatch.setattr(app.backend, "get", counted)
    with running(app):
        eventually(lambda: app.backend._listener.listening, message="LISTEN")  # type: ignore[attr-defined]
        waiter = threading.Thread(target=lambda: looks.append(job.result(timeout=20)))
        waiter.start()
        eventually(lambda: len(looks) >= 1, message="first look")
        time.sleep(0.3)  # the waiter blocks here; a poll (2 ms doubling to 100 ms) would look ~7 times
        release.set()
        waiter.join(timeout=20)
    assert looks[-1] == "done"
    assert looks.count("get") <= 3  # the first look, the look after ' done', at most one more
    app.close()


def test_without_listen_workers_poll_and_still_run_everything(url: str) -> None:
    app = Conveyor(f"{url}&pgbouncer=1", prefix="bouncer")

    @app.task
    def double(x: int) -> int:
        return 2 * x

    with running(app):
        jobs = double.enqueue_many([(i,) for i in range(20)])
        assert [job.result(timeout=10) for job in jobs] == [2 * i for i in range(20)]
    app.close()


def test_workers_claim_and_store_on_the_async_path(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The worker awaits claims and finishes on psycopg's async pool; only a queue with
    limits takes the threaded claim (its admission runs in one locked transaction)."""
    app = Conveyor(url, prefix="aio")
    app.limit("limited", concurrency=2)
    threaded: list[str] = []
    claim = app.backend.claim

    def spy_claim(*args: Any, **kwargs: Any) -> Any:
        threaded.append("claim")
        return claim(*args, **kwargs)

    def refuse_finish(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the worker stored outcomes through the threaded path")

    monkeypatch.setattr(app.backend, "claim", spy_claim)
    monkeypatch.setattr(app.backend, "finish", refuse_finish)

    @app.task
    def double(x: int) -> int:
        return 2 * x

    with running(app):
        assert [j.result(timeout=10) for j in double.enqueue_many([(i,) for i in range(30)])] == [
            2 * i for i in range(30)
        ]
    assert threaded == []
    with running(app, queues=["limited"]):
        assert double.options(queue="limited").enqueue(5).result(timeout=10) == 10
    assert threaded
    app.close()


def test_the_async_path_warms_up_both_connections_before_claiming(url: str) -> None:
    """Both connections made and claim() planned on each before a worker's first claim,
    which else waits for a connection and plans the function (a first claim took 11.5 ms
    here, later ones about 3); the claim that plans it takes nothing."""
    backend = open_backend(url, prefix="warm")
    backend.enqueue([NewJob("t.any", "default", "[[],{}]")])

    async def warm_then_claim() -> tuple[int, int]:
        work = backend.async_work()
        assert work is not None
        try:
            await work.warm_up()
            size = work._pool.get_stats()["pool_size"]  # type: ignore[attr-defined]
            return size, len(await work.claim("w", ["default"], 5, 30))
        finally:
            await work.aclose()

    assert asyncio.run(warm_then_claim()) == (2, 1)
    assert set(backend.counts()) == {"default"}
    backend.close()


TRICKY = ['a "quote" and a \\ backslash', "{braces, and commas}", "NULL", "ünïcødé ✓", ""]


def test_text_crosses_the_binary_arrays_unchanged(app: Conveyor) -> None:
    """Arrays of strings go in binary: payloads, results and errors with quotes,
    backslashes, braces and non-ASCII text arrive as they left, on both insert paths."""

    @app.task(name="echo")
    async def echo(text: str) -> str:
        return text

    @app.task(name="refuse")
    async def refuse(text: str) -> None:
        raise Fail(text)

    shared = echo.enqueue_many([(t,) for t in TRICKY])  # one template, payloads only
    own = echo.enqueue_many([echo.options(timeout=t + 1).s(text) for t, text in enumerate(TRICKY)])
    failing = refuse.enqueue_many([(t,) for t in TRICKY])
    with running(app):
        assert [j.result(timeout=10) for j in shared] == TRICKY
        assert [j.result(timeout=10) for j in own] == TRICKY
        eventually(lambda: all(j.refresh().state is JobState.DEAD for j in failing))
    assert [j.record.error for j in failing] == [f"Fail: {t}" for t in TRICKY]


def test_a_bulk_enqueue_over_one_statement_is_one_transaction(
    app: Conveyor, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch of payloads goes in statements of _PAYLOADS_PER_INSERT (10,000; 3 here):
    one alone runs without BEGIN; more run in one transaction, so the ids follow the
    payloads across statements, and a statement that fails takes the earlier ones back."""
    monkeypatch.setattr(backend_module, "_PAYLOADS_PER_INSERT", 3)
    backend = app.backend
    template = NewJob("echo", "bulk", "")
    ids = backend.enqueue_payloads(template, [f"[[{i}],{{}}]" for i in range(7)])
    assert [int(i) for i in ids] == sorted(int(i) for i in ids) and len(set(ids)) == 7
    assert [r.payload for r in backend.get(ids) if r is not None] == [f"[[{i}],{{}}]" for i in range(7)]
    assert len(backend.enqueue_payloads(template, ["[[1],{}]", "[[2],{}]"])) == 2
    # PostgreSQL's text cannot hold a NUL: the third statement fails after two ran.
    with pytest.raises(psycopg.DataError):
        backend.enqueue_payloads(template, [f"[[{i}],{{}}]" for i in range(6)] + ["\x00"])
    assert backend.counts()["bulk"][JobState.QUEUED] == 9


@pytest.mark.parametrize("query", ["complete_batch", "release_batch", "extend_leases"])
def test_batch_updates_never_walk_the_index_of_active_jobs(app: Conveyor, query: str) -> None:
    """Statistics taken while no job was active once made the planner walk every active
    job for every row of a batch (23 s for 7,900 completions): the partial index of
    active jobs must not be the way in."""
    backend = app.backend
    assert isinstance(backend, PostgresBackend)
    psql(
        "INSERT INTO pg.jobs (task, queue, state, payload, run_at, enqueued_at, finished_at) "
        "SELECT 't', 'old', 'completed', '[]', 0, 0, 0 FROM generate_series(1, 20000)",
        "ANALYZE pg.jobs",
    )
    app.ref("t.any").enqueue_many([(i,) for i in range(300)])
    claimed = backend.claim("w1", ["default"], 300, 60)
    ids, tokens = [int(r.id) for r in claimed], [r.lease_token for r in claimed]
    params = {"at": None, "ids": ids, "tokens": tokens, "progress": [None] * 300, "results": ["1"] * 300,
              "run_at": [None] * 300, "lease": 60}  # fmt: skip
    with psycopg.connect(POSTGRES_URL) as conn:
        plan = "\n".join(row[0] for row in conn.execute("EXPLAIN " + backend.query(query), params))
    assert "jobs_leases" not in plan, plan  # the primary key, or a hash join on a small table


def test_an_idle_queues_look_probes_its_index_whatever_waits_elsewhere(app: Conveyor) -> None:
    """With a few queues the statistics say each holds half the jobs, and the look of an
    idle worker's queue was planned as a scan of every queued job (76 ms with 92,000
    waiting in another queue): it must go through the indexes of queued and scheduled jobs."""
    backend = app.backend
    assert isinstance(backend, PostgresBackend)
    psql(
        "INSERT INTO pg.jobs (task, queue, state, payload, run_at, enqueued_at) "
        "SELECT 't', 'backlog', 'queued', '[]', 0, 0 FROM generate_series(1, 20000)",
        "ANALYZE pg.jobs",
    )
    with psycopg.connect(POSTGRES_URL) as conn:
        explain = "EXPLAIN " + backend.query("look")
        plan = "\n".join(row[0] for row in conn.execute(explain, {"queues": ["idle"], "at": None}))
    assert "Seq Scan on jobs" not in plan, plan
    assert "jobs_ready" in plan and "jobs_due" in plan, plan
    assert backend.wait_for_work(["backlog"], 0.1)


def test_a_pool_of_two_connections_serves_a_worker_of_twenty(url: str) -> None:
    app = Conveyor(f"{url}&pool=2", prefix="small")

    @app.task
    async def nap(i: int) -> int:
        await asyncio.sleep(0.02)
        return i

    with running(app, concurrency=20):
        jobs = nap.enqueue_many([(i,) for i in range(200)])
        assert [job.result(timeout=60) for job in jobs] == list(range(200))
    app.close()


def test_events_go_on_a_connection_of_their_own_that_comes_back_after_a_kill(app: Conveyor) -> None:
    backend = app.backend
    assert isinstance(backend, PostgresBackend)
    cursor = backend.event_cursor()
    backend.publish([JobEvent("enqueued", "q:1", "q", "t", 1.0)])
    app.enqueue("t.any", 1)  # the application's own calls stay on the pool's one connection
    assert backend._pool.get_stats()["pool_size"] == 1
    killed = backend._events._conn
    assert killed is not None
    psql(f"SELECT pg_terminate_backend({killed.info.backend_pid})")
    eventually(lambda: pools.ended(killed), timeout=10, message="the session never ended")
    backend.publish([JobEvent("enqueued", "q:2", "q", "t", 2.0)])  # on a new connection
    assert backend._events._conn is not killed
    events, _ = backend.read_events(cursor, 0)
    assert [e.job_id for e in events if e.queue == "q"] == ["q:1", "q:2"]


def test_a_read_only_server_is_named_and_its_connection_dropped_and_multi_host_urls_find_the_primary(
    own_server: server.Server,
) -> None:
    """A standby (here: a server whose sessions default to read-only) refuses writes:
    the error says so and what to do, and the pool drops that connection rather than
    fail on it for its hour of life. With every host in the URL and
    target_session_attrs=read-write, libpq skips the standby for the primary."""
    primary = urlsplit(POSTGRES_URL)
    database = primary.path.lstrip("/")  # this test process's own (see conftest)
    psql_on = ["psql", own_server.url, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-c"]
    subprocess.run([*psql_on, f'CREATE DATABASE "{database}"'], check=True, capture_output=True, timeout=30)
    standby_url = own_server.url.rsplit("/", 1)[0] + f"/{database}"
    migrated = Conveyor(f"{standby_url}?migrate=1", prefix="standby")
    assert migrated.backend is not None  # opened, so migrated, while it still takes writes
    migrated.close()
    for statement in ["ALTER SYSTEM SET default_transaction_read_only = on", "SELECT pg_reload_conf()"]:
        subprocess.run([*psql_on, statement], check=True, capture_output=True, timeout=30)
    standby = Conveyor(standby_url, prefix="standby")
    try:
        with pytest.raises(BackendUnavailable, match="the server is read-only \\(a standby\\?\\)") as refused:
            standby.enqueue("t.any", 1)
        assert "target_session_attrs=read-write" in str(refused.value)
        backend = standby.backend
        assert isinstance(backend, PostgresBackend)
        assert backend._pool.get_stats().get("returns_bad", 0) == 1  # closed, so replaced
    finally:
        standby.close()
    both = f"postgresql://postgres@127.0.0.1:{own_server.port},{primary.netloc}/{database}"
    app = Conveyor(f"{both}?target_session_attrs=read-write&migrate=1", prefix="multihost")
    try:
        job = app.enqueue("t.any", 1)
        assert isinstance(app.backend, PostgresBackend)
        assert app.backend.where.endswith(f"127.0.0.1:{own_server.port},{primary.netloc}/{database}")
    finally:
        app.close()
    assert psql(f"SELECT count(*) FROM multihost.jobs WHERE id = {job.id}").strip() == "1"


def test_enqueue_while_the_server_is_down_fails_within_its_timeout(own_server: server.Server) -> None:
    app = Conveyor(f"{own_server.url}?migrate=1&timeout=1", prefix="down")
    job = app.enqueue("t.any", 1)
    own_server.stop()
    for _ in range(2):  # the pool's dropped connection, then a wait for a new one
        started = time.monotonic()
        with pytest.raises(BackendUnavailable, match=f"127.0.0.1:{own_server.port}") as failed:
            app.enqueue("t.any", 2)
        assert time.monotonic() - started < 5
    assert "Connection refused" in str(failed.value)  # why, not only the pool's timeout
    own_server.start()
    eventually(lambda: _reachable(app), timeout=15, message="pool reconnect")
    assert [j.id for j in app.jobs()] == [job.id]  # the failed enqueue stored nothing
    app.close()


def _reachable(app: Conveyor) -> bool:
    try:
        app.backend.ping()
    except BackendUnavailable:
        return False
    return True


@pytest.mark.parametrize(("sleep", "concurrency"), [(0.01, 10), (0.03, 40)], ids=["short", "long"])
@pytest.mark.parametrize("mode", ["fast", "immediate"])
def test_workers_ride_out_a_server_restart_and_lose_nothing(
    own_server: server.Server,
    mode: str,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    sleep: float,
    concurrency: int,
) -> None:
    """Long jobs (30 ms) claim in parts (see Workers in the README), short ones whole."""
    app = Conveyor(f"{own_server.url}?migrate=1&timeout=2", prefix="restart")
    planned = spy_part_sizes(monkeypatch)

    @app.task(retries=0)
    async def work(i: int) -> int:
        await asyncio.sleep(sleep)
        return i

    stored: list[Job[Any]] = []
    # The lease outlasts the outage: retries=0 then proves each job ran exactly once.
    with caplog.at_level(logging.WARNING), running(app, concurrency=concurrency, lease_timeout=30):
        stored += work.enqueue_many([(i,) for i in range(100)])
        eventually(lambda: any(j.refresh().state is JobState.COMPLETED for j in stored))
        own_server.stop(mode)  # immediate: like a crash; committed work survives in the WAL
        eventually(lambda: "PostgreSQL" in caplog.text, timeout=10, message="worker noticed")
        own_server.start()
        stored += _enqueue_when_up(lambda: work.enqueue_many([(i,) for i in range(100, 150)]))
        results = [job.result(timeout=60) for job in stored]
    assert results == list(range(150))
    assert bool(planned) is (sleep > 0.02)
    app.close()


def test_an_outage_is_told_once_when_it_begins_and_once_when_it_ends(
    own_server: server.Server, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """psycopg_pool's warnings of each failed attempt to connect and each closed
    connection (30 in a 40 s outage, over two lines each) come down to one a pool. And
    its retries, 1 s doubling, no longer keep the worker waiting once the server is
    back: 16 s down, they came at 15 s and 31 s; a 40 s outage's next job ran 24 s late."""
    app = Conveyor(f"{own_server.url}?migrate=1&timeout=1", prefix="quiet")
    stop, start = lambda: own_server.stop("immediate"), own_server.start
    said = rides_out_an_outage_quietly(app, caplog, monkeypatch, stop, start, lasting=16)
    assert not [m for m in said if m.startswith("discarding closed connection")], said
    for pool in ("'conveyor-quiet'", "'conveyor-quiet-async'"):
        assert sum(m.startswith(f"error connecting in {pool}") for m in said) <= 1, said
    assert sum(m.startswith("PostgreSQL LISTEN connection lost") for m in said) <= 1, said
    app.close()


def test_a_worker_started_before_its_server_waits_and_then_works(
    own_server: server.Server, caplog: pytest.LogCaptureFixture
) -> None:
    """A container that starts before PostgreSQL: the worker keeps trying, then migrates
    (migrate=1) and runs jobs, no restart needed."""
    own_server.stop()
    app = Conveyor(f"{own_server.url}?migrate=1&timeout=1", prefix="late")
    try:
        waits_for_its_engine(app, caplog, own_server.start)
    finally:
        app.close()


def _enqueue_when_up(enqueue: Callable[[], list[Job[Any]]]) -> list[Job[Any]]:
    """Enqueue as a producer would after an outage: retry until the pool reconnects."""
    deadline = time.monotonic() + 20
    while True:
        try:
            return enqueue()
        except BackendUnavailable:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
