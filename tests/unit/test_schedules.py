"""Schedules: tick arithmetic, validation, missed ticks, and the scheduler's decisions."""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from conveyor import BackendUnavailable, ConfigError, Conveyor
from conveyor.backends.base import JobQuery
from conveyor.backends.memory import MemoryBackend
from conveyor.clock import FakeClock
from conveyor.scheduler import Schedule, Scheduler


def test_interval_ticks_are_aligned_to_the_epoch() -> None:
    s = Schedule(name="s", task="t", every=10)
    assert s.latest_tick(1005.0) == 1000.0
    assert s.latest_tick(1010.0) == 1010.0
    assert s.next_tick(1010.0) == 1020.0
    assert s.when == "every 0:00:10"


def test_cron_ticks_follow_the_time_zone_and_dst() -> None:
    paris = ZoneInfo("Europe/Paris")
    s = Schedule(name="s", task="t", cron="30 2 * * *", tz="Europe/Paris")
    before = datetime(2026, 3, 28, 12, 0, tzinfo=paris).timestamp()
    # 02:30 does not exist on 29 March 2026 in Paris (clocks jump 02:00 -> 03:00).
    nxt = datetime.fromtimestamp(s.next_tick(before), paris)
    assert (nxt.day, nxt.hour) in ((29, 3), (30, 2))
    on_tick = datetime(2026, 6, 1, 2, 30, tzinfo=paris).timestamp()
    assert s.latest_tick(on_tick) == on_tick
    assert s.latest_tick(on_tick + 59) == on_tick


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, "either a cron expression or every="),
        ({"cron": "* * * * *", "every": 5}, "either a cron expression or every="),
        ({"cron": "not cron"}, "invalid cron expression 'not cron'"),
        ({"every": 0}, "every= must be a positive duration"),
        ({"every": 5, "tz": "Mars/Olympus"}, "unknown time zone 'Mars/Olympus'"),
        ({"every": 5, "missed": "sometimes"}, "missed= must be 'skip' or 'run_once'"),
    ],
)
def test_bad_schedules_are_named(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Schedule(name="report", task="t", **kwargs)  # type: ignore[arg-type]


def _scheduler(app: Conveyor, clock: FakeClock) -> Scheduler:
    return Scheduler(app.backend, app.schedules, app.tick_job, clock.now)


def test_each_tick_is_enqueued_once_and_missed_ticks_follow_the_policy() -> None:
    clock = FakeClock(start=1_000_000.0)
    app = Conveyor("memory://", clock=clock)

    @app.periodic(every=timedelta(hours=1), name="hourly")
    def hourly() -> None:
        return None

    @app.periodic(every=3600, name="catch_up", missed="run_once", args=(7,))
    def catch_up(n: int) -> int:
        return n

    scheduler = _scheduler(app, clock)  # 1,000,000 s since the epoch is 46 min past an hour

    async def one_round() -> list[str | None]:
        return [await scheduler.tick(s, clock.now()) for s in app.schedules]

    first = asyncio.run(one_round())
    assert first[0] is None  # the hourly tick is >60 s old: skipped
    assert first[1] is not None  # run_once: the missed tick runs once
    assert asyncio.run(one_round()) == [None, None]  # handled: nothing twice
    clock.advance(3600 - (clock.now() % 3600))  # exactly on the next hour
    on_time = asyncio.run(one_round())
    assert on_time[0] is not None and on_time[1] is not None
    job = app.get_job(on_time[1])
    assert job.args == [7] and job.meta["schedule"] == "catch_up" and job.meta["tick"] == clock.now()
    scheduler.thread.shutdown()


def test_a_second_scheduler_never_duplicates_a_tick() -> None:
    clock = FakeClock(start=1_000_000.0)
    backend_app = Conveyor("memory://", clock=clock)

    @backend_app.periodic(every=10, name="often")
    def often() -> None:
        return None

    one, two = _scheduler(backend_app, clock), _scheduler(backend_app, clock)

    async def race() -> list[str | None]:
        schedule = backend_app.schedules[0]
        return list(await asyncio.gather(one.tick(schedule, clock.now()), two.tick(schedule, clock.now())))

    results = asyncio.run(race())
    assert sum(r is not None for r in results) == 1
    one.thread.shutdown()
    two.thread.shutdown()


def test_memory_backend_enqueue_tick_is_monotonic() -> None:
    from conveyor.backends.base import NewJob

    backend = MemoryBackend(clock=FakeClock())
    job = NewJob("t", "default", "[[],{}]")
    assert backend.enqueue_tick("s", 20.0, job) is not None
    assert backend.enqueue_tick("s", 20.0, job) is None
    assert backend.enqueue_tick("s", 10.0, job) is None  # an older tick never runs late
    assert backend.enqueue_tick("s", 30.0, job) is not None


def test_a_tick_that_cannot_be_enqueued_is_logged_and_tried_again(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The engine refuses a tick's job for what it holds (not because it is away): the
    scheduler logs the traceback and tries again, where the error used to end its task,
    and with it the worker."""
    clock = FakeClock(start=1_000_000.0)
    app = Conveyor("memory://", clock=clock)

    @app.periodic(every=10, name="often")
    def often() -> None:
        return None

    enqueue_tick, refusals = app.backend.enqueue_tick, list[int]()

    def refuse_once(*args: Any) -> Any:
        if not refusals:
            refusals.append(1)
            raise ValueError("cannot store this job")
        return enqueue_tick(*args)

    monkeypatch.setattr(app.backend, "enqueue_tick", refuse_once)
    scheduler = _scheduler(app, clock)
    schedule = app.schedules[0]
    with caplog.at_level(logging.ERROR, "conveyor.scheduler"):
        assert asyncio.run(scheduler.tick(schedule, clock.now())) is None
    assert "schedule often: could not enqueue the tick of" in caplog.text and "Traceback" in caplog.text
    assert asyncio.run(scheduler.tick(schedule, clock.now())) is not None  # the same tick, again
    scheduler.thread.shutdown()


def test_a_tick_refused_in_an_outage_is_tried_again_within_seconds(monkeypatch: pytest.MonkeyPatch) -> None:
    """It waited for the next pass, up to a minute: an hourly job ran that late after a
    few seconds' outage. Now 1 s, doubling to 30 s, while the engine is away."""
    clock = FakeClock(start=1_000_800.0)  # on an hourly tick: it is due now
    app = Conveyor("memory://", clock=clock)

    @app.periodic(every=timedelta(hours=1), name="hourly")
    def hourly() -> None:
        return None

    enqueue_tick, refusals = app.backend.enqueue_tick, [3]

    def away_three_times(*args: Any) -> Any:
        if refusals[0]:
            refusals[0] -= 1
            raise BackendUnavailable("Redis: Connection refused")
        return enqueue_tick(*args)

    monkeypatch.setattr(app.backend, "enqueue_tick", away_three_times)
    scheduler = _scheduler(app, clock)
    pauses = [asyncio.run(scheduler.run_once()) for _ in range(4)]
    assert pauses[:3] == [1.0, 2.0, 4.0]
    assert pauses[3] == 60.0  # back to the next tick (an hour away), at most a minute
    assert len(app.backend.list_jobs(JobQuery())) == 1
    scheduler.thread.shutdown()
