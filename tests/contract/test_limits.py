"""Rate and concurrency limits on every engine, held across several workers."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import pytest

from conveyor import ConfigError, Conveyor, JobState
from conveyor.backends.base import Backend, NewJob, Outcome, OutcomeKind
from conveyor.clock import Clock, FakeClock
from conveyor.limits import Claimed, Limit, QueueLimits, TaskLimit, parse_rate
from tests.conftest import STARTED, running


@contextmanager
def workers(app: Conveyor, count: int, **settings: Any) -> Iterator[None]:
    with ExitStack() as stack:
        for _ in range(count):
            stack.enter_context(running(app, **settings))
        yield


class Intervals:
    """When each job ran, by key, from inside the task."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.spans: dict[str, list[tuple[float, float]]] = {}
        self.running = 0
        self.most = 0

    @contextmanager
    def span(self, key: str) -> Iterator[None]:
        with self.lock:
            self.running += 1
            self.most = max(self.most, self.running)
        start = time.monotonic()
        try:
            yield
        finally:
            with self.lock:
                self.running -= 1
                self.spans.setdefault(key, []).append((start, time.monotonic()))

    def overlapping(self) -> list[str]:
        bad = []
        for key, spans in self.spans.items():
            spans.sort()
            bad += [key for a, b in itertools.pairwise(spans) if b[0] < a[1]]
        return bad


def test_a_rate_limit_of_10_per_second_holds_across_4_workers(app: Conveyor, engine: str) -> None:
    @app.task(rate_limit="10/s")
    async def ping(i: int) -> int:
        return i

    # 120 jobs are 12 windows of 4 workers racing (12 s at least). The Redis deployments
    # the session starts run the same Lua as the machine's server: 60 jobs (6 s) check
    # the same window there, and keep the suite's time in bounds.
    count = 60 if engine in STARTED else 120
    jobs = ping.enqueue_many([(i,) for i in range(count)])
    with workers(app, 4, concurrency=20):
        assert [job.result(timeout=40) for job in jobs] == list(range(count))
    starts = sorted(job.refresh().record.started_at or 0.0 for job in jobs)
    # The engine stamps started_at with the same clock it checks the window by.
    busiest = max(sum(1 for t in starts[i:] if t < s + 1.0) for i, s in enumerate(starts))
    assert busiest <= 10
    assert starts[-1] - starts[0] >= count / 10 - 1.5  # 120 starts at 10/s take 11 s at least
    assert all(job.record.attempt == 1 for job in jobs)  # held back, never failed


def test_a_per_key_concurrency_limit_of_1_never_overlaps_a_keys_jobs(app: Conveyor) -> None:
    seen = Intervals()

    @app.task(concurrency_limit=1, limit_key="customer")
    def charge(amount: int, *, customer: str) -> int:
        with seen.span(customer):
            time.sleep(0.03)
        return amount

    calls = [{"amount": i, "customer": f"c{i % 3}"} for i in range(18)]
    jobs = charge.enqueue_many(calls)
    assert jobs[0].record.limit_key == "c0"
    with workers(app, 3, concurrency=5):
        assert [job.result(timeout=20) for job in jobs] == list(range(18))
    assert seen.overlapping() == []
    assert seen.most > 1  # different customers did run side by side


def test_a_queue_concurrency_limit_caps_running_jobs(app: Conveyor) -> None:
    app.limit("narrow", concurrency=2)
    seen = Intervals()

    @app.task(queue="narrow")
    async def step(i: int) -> int:
        import asyncio

        with seen.span("all"):
            await asyncio.sleep(0.02)
        return i

    jobs = step.enqueue_many([(i,) for i in range(20)])
    with workers(app, 2, concurrency=10, queues="narrow"):
        assert [job.result(timeout=20) for job in jobs] == list(range(20))
    assert seen.most == 2


def test_a_limit_key_can_come_from_meta(app: Conveyor) -> None:
    @app.task(concurrency_limit=1, limit_key="tenant")
    def work() -> None: ...

    job = work.options(meta={"tenant": "acme"}).enqueue()
    assert job.record.limit_key == "acme" and app.get_job(job.id).record.limit_key == "acme"
    assert job.state is JobState.QUEUED


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"rate_limit": "fast"}, "task rate must look like '10/s'"),
        ({"rate_limit": "0/s"}, "task rate must look like"),
        ({"concurrency_limit": 0}, "task concurrency must be an integer >= 1"),
        ({"limit_key": "customer"}, "limit_key needs a rate_limit or concurrency_limit"),
    ],
)
def test_bad_task_limits_are_named(kwargs: dict[str, Any], message: str) -> None:
    app = Conveyor("memory://")
    with pytest.raises(ConfigError, match=message):
        app.task(**kwargs)


def test_bad_queue_limits_are_named() -> None:
    app = Conveyor("memory://")
    with pytest.raises(ConfigError, match="needs rate= or concurrency="):
        app.limit("q")
    with pytest.raises(ConfigError, match="queue 'q' rate must look like"):
        app.limit("q", rate="10 per second")


def test_rates_parse() -> None:
    assert parse_rate("10/s", "r") == (10, 1.0)
    assert parse_rate("100/m", "r") == (100, 60.0)
    assert parse_rate("20/10s", "r") == (20, 10.0)
    assert parse_rate("5/h", "r") == (5, 3600.0)


def test_the_engine_leases_only_what_fits_and_holds_the_rest_back(
    make_backend: Callable[[Clock], Backend], clock: FakeClock
) -> None:
    backend = make_backend(clock)
    limits = {
        "q": QueueLimits(
            tasks={
                "t.fast": TaskLimit(Limit(rate=2, per=10.0)),
                "t.slow": TaskLimit(Limit(rate=1, per=100.0)),
                "t.one": TaskLimit(Limit(concurrency=1), keyed=True),
            }
        )
    }

    def job(task: str, key: str | None = None) -> NewJob:
        new = NewJob(task, "q", "[[],{}]")
        new.limit_key = key
        return new

    def claim() -> Claimed:
        claimed = backend.claim("w", ["q"], 20, 300, limits)
        assert isinstance(claimed, Claimed)
        return claimed

    batch = [job("t.fast"), job("t.fast"), job("t.fast"), job("t.slow"), job("t.one", "a"), job("t.one", "a")]
    ids = [s.id for s in backend.enqueue([*batch, job("t.one", "b")])]
    first = claim()
    assert [r.id for r in first] == [ids[0], ids[1], ids[3], ids[4], ids[6]] and first.held_back
    waiting = backend.get([ids[2], ids[5]])
    assert all(r is not None and (r.state, r.attempt) == (JobState.QUEUED, 0) for r in waiting)
    done = next(r for r in first if r.id == ids[4])
    backend.finish([Outcome(done.id, done.lease_token or "", OutcomeKind.COMPLETED, result="1")])
    assert [r.id for r in claim()] == [ids[5]]  # key "a" is free again; the third fast start waits
    clock.advance(11)  # the fast window has slid past its two starts
    assert [r.id for r in claim()] == [ids[2]]
    slow = backend.enqueue([job("t.slow")])[0].id
    held = claim()
    assert held == [] and held.held_back  # 12 s after the first slow start: its 100 s window holds
    clock.advance(90)
    assert [r.id for r in claim()] == [slow]
    assert not claim().held_back
