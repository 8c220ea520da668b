"""How a worker claims: for long jobs, free slots claim before the finished batch is
stored and claims go in parts (each part's jobs started as it lands); short jobs claim
whole; every engine thread connects before the first claim."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Sequence
from typing import Any

import pytest

from conveyor import Conveyor, JobState
from conveyor.backends.base import Fence, Outcome
from conveyor.errors import BackendUnavailable
from conveyor.task import Task
from conveyor.worker import worker as worker_module
from conveyor.worker.worker import part_sizes
from tests.conftest import run_with_one_part_refused, spy_part_sizes


class Calls:
    """The engine calls a worker makes, in order: ("claim", limit), ("claimed", n),
    ("finish", n), ("warm_up", thread)."""

    def __init__(self, app: Conveyor) -> None:
        self.seen: list[tuple[str, Any]] = []
        self._lock = threading.Lock()
        backend = app.backend
        claim, finish, warm_up = backend.claim, backend.finish, backend.warm_up

        def traced_claim(worker_id: str, queues: Sequence[str], limit: int, *args: Any, **kw: Any) -> Any:
            self.add("claim", limit)
            claimed = claim(worker_id, queues, limit, *args, **kw)
            self.add("claimed", len(claimed))
            return claimed

        def traced_finish(outcomes: Sequence[Outcome]) -> list[Fence]:
            self.add("finish", len(outcomes))
            return finish(outcomes)

        def traced_warm_up() -> None:
            self.add("warm_up", threading.current_thread().name.rsplit("_", 1)[0])  # pool threads end _0
            warm_up()

        backend.claim = traced_claim  # type: ignore[method-assign]
        backend.finish = traced_finish  # type: ignore[method-assign]
        backend.warm_up = traced_warm_up  # type: ignore[method-assign]

    def add(self, kind: str, value: Any) -> None:
        with self._lock:
            self.seen.append((kind, value))

    def limits(self) -> list[int]:
        return [value for kind, value in self.seen if kind == "claim"]


def _in_a_row(limits: list[int], run: list[int]) -> bool:
    """Whether `run` appears in `limits`, one after another."""
    return any(limits[i : i + len(run)] == run for i in range(len(limits)))


def _all_completed_once(jobs: Sequence[Any], app: Conveyor) -> None:
    records = app.backend.get([j.id for j in jobs])
    assert [(r.state, r.attempt) for r in records if r is not None] == [(JobState.COMPLETED, 1)] * len(jobs)


def _quick_app(*, yields: bool = False) -> tuple[Conveyor, Task[[int], int]]:
    """An app on the memory engine with a task that returns its argument at once, or
    (`yields`) after one pass of the loop: on Python 3.12+ a job that never awaits ends
    within its own start (the worker's eager tasks), before the claim that started it
    returns. Only a test of the order of claims and stores needs that; the others keep
    jobs that end at once, which count as short whatever the machine's load."""
    app = Conveyor("memory://")

    @app.task
    async def quick(i: int) -> int:
        if yields:
            await asyncio.sleep(0)
        return i

    return app, quick


def test_part_sizes_double_from_eight_and_the_last_part_takes_the_rest() -> None:
    assert part_sizes(10) == [10]
    assert part_sizes(16) == [8, 8]
    assert part_sizes(50) == [8, 16, 26]
    assert part_sizes(100) == [8, 16, 32, 44]
    assert all(sum(part_sizes(n)) == n and min(part_sizes(n)) > 0 for n in range(1, 300))


def test_long_jobs_claim_in_parts_and_each_job_runs_once(monkeypatch: pytest.MonkeyPatch) -> None:
    app = Conveyor("memory://")

    @app.task
    async def wait(i: int) -> int:
        await asyncio.sleep(0.03)  # over the 20 ms a slot must be held on average
        return i

    calls, planned = Calls(app), spy_part_sizes(monkeypatch)
    jobs = wait.enqueue_many([(i,) for i in range(200)])
    app.worker(concurrency=40).run(burst=True, handle_signals=False)
    limits = calls.limits()
    assert limits[0] == 40  # nothing has run yet: the first claim goes whole
    assert planned and len(planned[0]) > 1, limits
    # The first claim in parts, made while the queue is full, takes every part in turn (a
    # later one may end early, when a part comes back short as the queue runs dry).
    assert _in_a_row(limits, planned[0]), (planned, limits)
    _all_completed_once(jobs, app)
    assert [j.result(timeout=1) for j in jobs] == list(range(200))
    app.close()


def test_short_jobs_claim_whole(monkeypatch: pytest.MonkeyPatch) -> None:
    app, quick = _quick_app()

    planned = spy_part_sizes(monkeypatch)
    jobs = quick.enqueue_many([(i,) for i in range(300)])
    app.worker(concurrency=40).run(burst=True, handle_signals=False)
    assert planned == []
    _all_completed_once(jobs, app)
    app.close()


def test_a_part_refused_after_another_landed_is_logged_and_the_rest_run(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(worker_module, "_LONG_JOB", 0.0)  # every job counts as long
    app, quick = _quick_app()
    jobs = quick.enqueue_many([(i,) for i in range(100)])
    # The first claim is 8, 16, 16: its second part is refused.
    run_with_one_part_refused(app, 40, caplog, refuse=lambda limit: limit == 16)
    _all_completed_once(jobs, app)
    app.close()


def test_long_jobs_freed_slots_claim_before_their_finished_batch_is_stored(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(worker_module, "_LONG_JOB", 0.0)  # every job counts as long
    app, quick = _quick_app(yields=True)

    calls = Calls(app)
    claim = app.backend.claim

    def slow_second_claim(*args: Any, **kw: Any) -> Any:
        if calls.limits().count(4) == 1:  # the second claim (it is recorded after this)
            time.sleep(0.05)  # an engine slow to answer: a store sent first would go ahead
        return claim(*args, **kw)

    app.backend.claim = slow_second_claim  # type: ignore[method-assign]
    jobs = quick.enqueue_many([(i,) for i in range(8)])
    app.worker(concurrency=4).run(burst=True, handle_signals=False)
    first_store = next(i for i, (kind, _) in enumerate(calls.seen) if kind == "finish")
    answered = [n for kind, n in calls.seen[:first_store] if kind == "claimed"]
    assert answered[:2] == [4, 4], calls.seen
    _all_completed_once(jobs, app)
    app.close()


def test_every_engine_thread_connects_before_the_first_claim() -> None:
    app = Conveyor("memory://")
    app.backend.claim_lanes = 2

    @app.task
    async def quick(i: int) -> int:
        return i

    calls = Calls(app)
    job = quick.enqueue(1)
    app.worker().run(burst=True, handle_signals=False)
    first_claim = next(i for i, (kind, _) in enumerate(calls.seen) if kind == "claim")
    warmed = {thread for kind, thread in calls.seen[:first_claim] if kind == "warm_up"}
    assert warmed == {"conveyor-engine", "conveyor-engine-2", "conveyor-store", "conveyor-wait"}
    assert job.result(timeout=1) == 1
    app.close()


def test_a_failed_warm_up_is_logged_and_the_worker_runs_on(caplog: pytest.LogCaptureFixture) -> None:
    app, quick = _quick_app()

    def unreachable() -> None:
        raise BackendUnavailable("the engine is away")

    app.backend.warm_up = unreachable  # type: ignore[method-assign]
    job = quick.enqueue(1)
    with caplog.at_level(logging.WARNING, logger="conveyor.worker"):
        app.worker().run(burst=True, handle_signals=False)
    assert "could not connect the engine threads before claiming: the engine is away" in caplog.text
    assert job.result(timeout=1) == 1
    app.close()
