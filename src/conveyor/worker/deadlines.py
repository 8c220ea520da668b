"""Async jobs' timeouts on a few shared loop timers."""

from __future__ import annotations

import asyncio
import math
from typing import TYPE_CHECKING

from conveyor.worker._aio import loop_name

if TYPE_CHECKING:
    from conveyor.worker.executor import Running

RESOLUTION = 0.01  # seconds: a timeout fires at most this late (plus _UVLOOP_SLACK on uvloop)
# uvloop's clock counts whole milliseconds and its timers round to one, so a timer
# may fire up to 2 ms before its time: on uvloop each deadline is pushed 2 ms later.
_UVLOOP_SLACK = 0.002


class Deadlines:
    """Jobs whose deadlines fall in the same 10 ms share one timer on the loop.

    A timer per job cost a handle pushed onto the loop's heap and cancelled out of it
    again, about 15% of the worker's own CPU for a job that does little. Here a job
    costs a dict insert and a delete; at most one timer a slot is armed, and a slot
    whose jobs all finished in time goes with its timer. Until the second session of
    2026-12-07 such a slot stayed until it fired: a worker kept a slot and a timer for
    every 10 ms of the last `timeout` seconds, about 2 KB each. Its memory grew by
    1 MB every 5 s of a no-op drain and would have settled only after the default
    300 s, near 60 MB (an hour's timeout: 700 MB).

    The slot made last stays while empty, until a newer one is made: a job that ends
    before the next one starts (a no-op drain) emptied its slot each time, and the
    next job armed a new timer in the same slot: a 20,000-job drain armed 20,000 timers,
    and now arms one per 10 ms (140). The worker's CPU a job, alternating runs of that
    drain in one process on Redis: 57-67 us before, 49-63 after (2026-12-07).
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._slack = _UVLOOP_SLACK if loop_name(loop) == "uvloop" else 0.0
        self._slots: dict[int, dict[int, Running]] = {}  # jobs due in a slot, by identity
        self._timers: dict[int, asyncio.TimerHandle] = {}  # the timer of each slot
        self._newest = -1  # the slot made last, kept while empty

    def add(self, job: Running, seconds: float) -> int:
        """Cancel `job`'s task `seconds` from now unless discarded first; returns its slot."""
        slot = math.ceil((self._loop.time() + seconds + self._slack) / RESOLUTION)
        jobs = self._slots.get(slot)
        if jobs is None:
            if self._slots.get(self._newest) == {}:
                self._drop(self._newest)
            jobs = self._slots[slot] = {}
            self._timers[slot] = self._loop.call_at(slot * RESOLUTION, self._expire, slot)
            self._newest = slot
        jobs[id(job)] = job  # by identity: a job taken over and claimed again is another
        return slot

    def discard(self, job: Running, slot: int) -> None:
        jobs = self._slots.get(slot)
        if jobs is not None:
            jobs.pop(id(job), None)
            if not jobs and slot != self._newest:
                self._drop(slot)

    def _drop(self, slot: int) -> None:
        del self._slots[slot]
        self._timers.pop(slot).cancel()

    def _expire(self, slot: int) -> None:
        self._timers.pop(slot, None)
        for job in self._slots.pop(slot, {}).values():
            job.expired = True
            if job.runner is not None:
                job.runner.cancel()
