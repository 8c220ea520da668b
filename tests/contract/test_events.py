"""Job events on every engine: app.events() follows them, from this process and others."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
from typing import Any

import pytest

from conveyor import ConfigError, Conveyor, current_job
from conveyor.events import EventStream, JobEvent
from tests.conftest import running


def _until(stream: EventStream, job_id: str, last: str) -> list[str]:
    """The kinds of `job_id`'s events, up to and including `last`."""
    kinds = []
    for event in stream:
        if event.job_id == job_id:
            kinds.append(event.kind)
            if event.kind == last:
                return kinds
    raise AssertionError(f"the stream ended before {last!r}: {kinds}")


def test_a_jobs_life_is_streamed_in_order(app: Conveyor) -> None:
    seen_progress = threading.Event()

    @app.task
    def work() -> str:
        current_job().progress(0.5)
        current_job().heartbeat()  # renew now: progress travels with the renewal
        assert seen_progress.wait(10)
        return "ok"

    stream = app.events(idle=15)
    job = work.enqueue()
    kinds = []
    with running(app):
        for event in stream:
            if event.job_id != job.id:
                continue
            kinds.append(event.kind)
            if event.kind == "progress":
                assert event.data["progress"] == 0.5
                seen_progress.set()
            if event.kind == "completed":
                break
    assert kinds == ["enqueued", "active", "progress", "completed"]
    assert stream.cursor is not None


def test_retries_deaths_and_cancels_are_streamed(app: Conveyor) -> None:
    @app.task(retries=1)
    def broken() -> None:
        raise ValueError("nope")

    stream = app.events(idle=15)
    job = broken.enqueue()
    with running(app):
        assert _until(stream, job.id, "dead") == ["enqueued", "active", "retried", "active", "dead"]
    queued = app.enqueue("never.runs")
    queued.cancel()
    assert _until(stream, queued.id, "cancelled") == ["enqueued", "cancelled"]


def test_a_bulk_enqueue_is_one_event_with_its_count(app: Conveyor) -> None:
    @app.task
    def item(i: int) -> int:
        return i

    stream = app.events(kinds=["enqueued"], idle=10)
    jobs = item.enqueue_many([(i,) for i in range(300)])
    event = next(iter(stream))
    assert (event.job_id, event.data) == (jobs[0].id, {"count": 300, "last": jobs[-1].id})


def test_events_from_another_process_arrive(app: Conveyor, engine: str, url: str) -> None:
    if engine == "memory":
        pytest.skip("the memory engine lives in one process")
    stream = app.events(idle=15)
    code = (
        f"from conveyor import Conveyor\napp = Conveyor({url!r}, prefix='t')\n"
        "app.enqueue('far.away', 1)\napp.close()\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=30)
    event = next(iter(stream))
    assert (event.kind, event.task) == ("enqueued", "far.away")


def test_async_iteration_and_filters(app: Conveyor) -> None:
    async def first_cancel() -> JobEvent:
        async for event in app.events(kinds=["cancelled"], idle=10):
            return event
        raise AssertionError("no event")

    async def main() -> JobEvent:
        waiter = asyncio.ensure_future(first_cancel())
        await asyncio.sleep(0)  # let the stream take its starting point first
        job = await app.aenqueue("a.b")
        await asyncio.to_thread(job.cancel)
        return await waiter

    # The stream's cursor is taken when it is created, so nothing published after is missed.
    event = asyncio.run(main())
    assert event.kind == "cancelled" and event.task == "a.b"


def test_publishing_can_be_switched_off(url: str) -> None:
    quiet = Conveyor(url, prefix="t", events=False)
    stream = quiet.events(idle=0.5)
    quiet.enqueue("a.b")
    assert list(stream) == []
    quiet.close()


def test_unknown_event_kinds_are_named(app: Conveyor) -> None:
    with pytest.raises(ConfigError, match="unknown event kind 'finished'"):
        app.events(kinds=["finished"])


def _unused(*_: Any) -> None: ...


def test_a_worker_starts_on_an_app_whose_engine_is_not_open_yet(url: str) -> None:
    fresh = Conveyor(url, prefix="t")  # the publisher must not take the app's lock twice
    assert fresh.worker(concurrency=1).run(burst=True, handle_signals=False) == 0
    fresh.close()
