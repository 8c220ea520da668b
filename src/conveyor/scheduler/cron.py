"""Schedules (cron with a time zone, or a fixed interval) and the scheduler task.

No leader: any number of workers run the scheduler. For each due tick they all
ask the engine to store "the job of schedule S at tick T"; the engine records
the last tick per schedule with a compare-and-set in the same transaction as the
job, so exactly one of them stores it. Interval ticks are aligned to the epoch
(multiples of the interval), so every process computes the same ticks.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter

from conveyor.backends.base import Backend, NewJob
from conveyor.errors import BackendUnavailable, ConfigError
from conveyor.outage import OutageLog

log = logging.getLogger("conveyor.scheduler")
Missed = Literal["skip", "run_once"]
_LATE = 60.0  # a tick older than this (or half its period, if shorter) was missed
_LONGEST_SLEEP = 60.0  # re-check at least this often (clock jumps, DST)
# A tick the engine refused while away is tried again after 1 s, doubling to 30 s. It
# waited for the next pass, up to _LONGEST_SLEEP, by when a missed="skip" tick was older
# than _LATE and dropped: a few seconds' outage cost an hourly job its run.
_RETRY_FIRST, _RETRY_MOST = 1.0, 30.0


@dataclass(frozen=True)
class Schedule:
    """When a task runs by itself: a cron expression in a time zone, or an interval."""

    name: str
    task: str
    cron: str | None = None
    every: float | None = None
    tz: str = "UTC"
    missed: Missed = "skip"
    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if (self.cron is None) == (self.every is None):
            raise ConfigError(f"schedule {self.name!r}: give either a cron expression or every=, not both")
        if self.cron is not None and not croniter.is_valid(self.cron):
            raise ConfigError(f"schedule {self.name!r}: invalid cron expression {self.cron!r}")
        if self.every is not None and not (isinstance(self.every, int | float) and self.every > 0):
            raise ConfigError(
                f"schedule {self.name!r}: every= must be a positive duration, got {self.every!r}"
            )
        if self.missed not in ("skip", "run_once"):
            raise ConfigError(f"schedule {self.name!r}: missed= must be 'skip' or 'run_once'")
        try:
            ZoneInfo(self.tz)
        except (ZoneInfoNotFoundError, ValueError):
            raise ConfigError(f"schedule {self.name!r}: unknown time zone {self.tz!r}") from None

    @property
    def when(self) -> str:
        """Human-readable timing, for listings."""
        return f"{self.cron} ({self.tz})" if self.cron else f"every {timedelta(seconds=self.every or 0)}"

    def latest_tick(self, now: float) -> float:
        """The most recent tick at or before `now` (epoch seconds)."""
        if self.every is not None:
            return math.floor(now / self.every) * self.every
        assert self.cron is not None
        start = datetime.fromtimestamp(now + 1e-3, ZoneInfo(self.tz))
        tick: datetime = croniter(self.cron, start).get_prev(datetime)
        return tick.timestamp()

    def next_tick(self, now: float) -> float:
        """The first tick after `now`."""
        if self.every is not None:
            return (math.floor(now / self.every) + 1) * self.every
        assert self.cron is not None
        tick: datetime = croniter(self.cron, datetime.fromtimestamp(now, ZoneInfo(self.tz))).get_next(
            datetime
        )
        return tick.timestamp()

    def is_missed(self, tick: float, now: float) -> bool:
        """True if `tick` is too old to run on time (its worker was down)."""
        period = self.next_tick(tick) - tick
        return now - tick > min(_LATE, max(1.0, period / 2))


class Scheduler:
    """The scheduler task a worker runs: enqueue each due tick, sleep until the next."""

    def __init__(
        self,
        backend: Backend,
        schedules: Sequence[Schedule],
        make_job: Callable[[Schedule, float], NewJob],
        now: Callable[[], float],
        outage: OutageLog | None = None,
    ) -> None:
        self.backend = backend
        self.outage = outage or OutageLog(log)
        self.schedules = list(schedules)
        self.make_job = make_job
        self.now = now
        self.thread = concurrent.futures.ThreadPoolExecutor(1, "conveyor-scheduler")
        self._handled: dict[str, float] = {}  # last tick this process dealt with, per schedule
        self._away = False  # the engine refused a tick in this pass: it was unavailable
        self._retry = 0.0  # seconds before the next pass while ticks are refused (0: none)

    async def run(self) -> None:
        """Tick forever; the worker cancels this task when it stops."""
        while True:
            # A timer, not synchronisation: ticks are wall-clock times.
            await asyncio.sleep(await self.run_once())

    async def run_once(self) -> float:
        """Enqueue every schedule's due tick; the seconds to wait before the next pass:
        until the next tick, at most _LONGEST_SLEEP, and sooner while the engine
        refuses ticks (_RETRY_FIRST doubling to _RETRY_MOST)."""
        now, self._away = self.now(), False
        for schedule in self.schedules:
            await self.tick(schedule, now)
        self._retry = min(_RETRY_MOST, self._retry * 2 or _RETRY_FIRST) if self._away else 0.0
        wake = min(s.next_tick(now) for s in self.schedules)
        pause = min(_LONGEST_SLEEP, max(0.0, wake - self.now()))
        return min(pause, self._retry) if self._retry else pause

    async def tick(self, schedule: Schedule, now: float) -> str | None:
        """Enqueue `schedule`'s latest due tick unless handled or missed; the job id if
        this process stored it."""
        tick = schedule.latest_tick(now)
        if tick <= self._handled.get(schedule.name, -math.inf):
            return None
        if schedule.missed == "skip" and schedule.is_missed(tick, now):
            log.info(
                "schedule %s: skipping the tick of %s, missed while no worker ran", schedule.name, _iso(tick)
            )
            self._handled[schedule.name] = tick
            return None
        try:
            job = self.make_job(schedule, tick)
            loop = asyncio.get_running_loop()
            job_id = await loop.run_in_executor(
                self.thread, self.backend.enqueue_tick, schedule.name, tick, job
            )
        except BackendUnavailable as exc:
            self._away = True
            if self.outage.failed(f"schedule {schedule.name}", exc):
                log.error("schedule %s: could not enqueue the tick of %s: %s", schedule.name, _iso(tick), exc)
            return None
        except Exception:  # a job it cannot build or the engine refuses: raised, it stopped the worker
            log.exception("schedule %s: could not enqueue the tick of %s", schedule.name, _iso(tick))
            return None
        self.outage.worked(f"schedule {schedule.name}")
        self._handled[schedule.name] = tick
        if job_id is not None:
            log.info("schedule %s: enqueued job %s for %s", schedule.name, job_id, _iso(tick))
        return job_id


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp).astimezone().isoformat(timespec="seconds")
