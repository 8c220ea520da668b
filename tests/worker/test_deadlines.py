"""Async jobs' timeouts on shared timers: one timer per 10 ms slot, a job's own discard."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from conveyor.backends.base import NewJob
from conveyor.backends.memory import MemoryBackend
from conveyor.context import JobContext
from conveyor.worker.deadlines import RESOLUTION, Deadlines
from conveyor.worker.executor import Running


def _jobs(count: int) -> list[Running]:
    backend = MemoryBackend()
    backend.enqueue([NewJob("t", "default", "[[],{}]") for _ in range(count)])
    return [Running(r, JobContext(r, lambda: None)) for r in backend.claim("w", ["default"], count, 10)]


def test_jobs_due_together_share_one_timer_and_a_discarded_job_is_spared(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        armed: list[float] = []
        call_at = loop.call_at

        def counted(when: float, callback: Any, *args: Any, **kwargs: Any) -> asyncio.TimerHandle:
            if callback == deadlines._expire:  # not the sleeps' own timers
                armed.append(when)
            return call_at(when, callback, *args, **kwargs)

        deadlines = Deadlines(loop)
        monkeypatch.setattr(loop, "call_at", counted)
        jobs = _jobs(3)
        for job in jobs:
            job.runner = asyncio.create_task(asyncio.sleep(30))
        while loop.time() % RESOLUTION > RESOLUTION / 2:  # not astride two slots
            await asyncio.sleep(0)
        start = loop.time()
        slots = [deadlines.add(job, 0.05) for job in jobs]
        deadlines.discard(jobs[1], slots[1])
        runners = [job.runner for job in jobs if job.runner is not None]
        await asyncio.wait([runners[0], runners[2]], timeout=5)
        late = loop.time() - start
        assert len(armed) == 1, armed  # one timer for the three
        assert [job.expired for job in jobs] == [True, False, True]
        assert runners[0].cancelled() and runners[2].cancelled() and not runners[1].done()
        assert 0.05 <= late < 0.05 + RESOLUTION + 0.05  # never early, at most a slot late
        runners[1].cancel()

    asyncio.run(scenario())


def test_a_slot_whose_jobs_all_finished_goes_with_its_timer() -> None:
    """Kept until its time, as until the second session of 2026-12-07, every slot of
    the last `timeout` seconds held memory: with the default 300 s, about 60 MB. The
    newest slot alone stays while empty, until a newer one is made."""

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        deadlines = Deadlines(loop)
        jobs = _jobs(4)
        slots = [deadlines.add(job, 300 + i) for i, job in enumerate(jobs[:3])]  # three slots
        timers = [deadlines._timers[slot] for slot in slots]
        for job, slot in zip(jobs[:2], slots[:2], strict=True):
            deadlines.discard(job, slot)
        assert list(deadlines._slots) == list(deadlines._timers) == slots[2:]
        assert [timer.cancelled() for timer in timers] == [True, True, False]
        deadlines.discard(jobs[2], slots[2])
        deadlines.discard(jobs[2], slots[2])  # a second discard finds nothing
        assert list(deadlines._slots) == slots[2:] and not timers[2].cancelled()  # the newest
        newer = deadlines.add(jobs[3], 310)
        assert list(deadlines._slots) == list(deadlines._timers) == [newer] and timers[2].cancelled()
        deadlines.discard(jobs[3], newer)
        assert not any(job.expired for job in jobs)

    asyncio.run(scenario())


def test_jobs_that_end_before_the_next_starts_share_their_slots_timer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A no-op drain: each job's slot emptied before the next job came, and until
    2026-12-07 each job armed a timer of its own."""

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        deadlines = Deadlines(loop)
        armed: list[float] = []
        call_at = loop.call_at

        def counted(when: float, callback: Any, *args: Any, **kwargs: Any) -> asyncio.TimerHandle:
            armed.append(when)
            return call_at(when, callback, *args, **kwargs)

        monkeypatch.setattr(loop, "call_at", counted)
        loop_time = loop.time()
        monkeypatch.setattr(loop, "time", lambda: loop_time)  # all within one slot
        for job in _jobs(50):
            deadlines.discard(job, deadlines.add(job, 300))
        assert len(armed) == 1

    asyncio.run(scenario())
