"""Leases from the worker's side: renewed while a job runs, fenced when lost."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from conveyor import Conveyor, JobState, current_job
from conveyor.testing import assert_enqueued, drain, enqueued, run_job
from tests.conftest import eventually, running


def test_a_job_longer_than_its_lease_keeps_it(app: Conveyor) -> None:
    @app.task(retries=0)
    async def long() -> int:
        await asyncio.sleep(1.5)
        return current_job().attempt

    job = long.enqueue()
    # Lease 0.6 s, renewed every 0.2 s; maintenance sweeps every 0.15 s.
    with running(app, lease_timeout=0.6):
        assert job.result(timeout=10) == 1
    assert job.attempts == []


def test_a_lost_lease_flags_the_job_and_its_result_is_discarded(app: Conveyor) -> None:
    flags: list[bool] = []

    @app.task(retries=0)
    def cooperative() -> str:
        # Stops as soon as the worker flags it (lease lost), or after 10 s at most.
        deadline = time.monotonic() + 10
        while not current_job().cancelled and time.monotonic() < deadline:
            time.sleep(0.01)
        flags.append(current_job().cancelled)
        return "late"

    job = cooperative.enqueue()
    with running(app, lease_timeout=0.6):
        eventually(lambda: job.refresh().state is JobState.ACTIVE)
        assert job.cancel()
        eventually(lambda: len(flags) == 1, timeout=10)
    assert flags == [True]
    assert job.refresh().state is JobState.CANCELLED and job.record.result is None


@pytest.mark.parametrize("events", [True, False])
def test_a_result_stored_after_its_lease_was_lost_is_logged(
    app: Conveyor, events: bool, caplog: pytest.LogCaptureFixture
) -> None:
    """The warning names each discarded result, whether or not events are on."""

    @app.task(retries=0)
    async def cancels_itself() -> str:
        await asyncio.to_thread(app.cancel, current_job().id)  # gone before it returns
        return "late"

    jobs = [cancels_itself.enqueue() for _ in range(2)]
    with caplog.at_level("WARNING", logger="conveyor.worker"), running(app, events=events):
        eventually(lambda: all(j.refresh().state is JobState.CANCELLED for j in jobs))
        eventually(lambda: all(f"job {j.id}: result discarded" in caplog.text for j in jobs))


def test_testing_helpers(tmp_path: Path) -> None:
    app = Conveyor("memory://")

    @app.task
    def send_welcome(email: str) -> str:
        return f"sent to {email}"

    job = send_welcome.enqueue("ada@example.com")
    assert assert_enqueued(app, send_welcome, args=["ada@example.com"]) == [job]
    assert len(enqueued(app, "send_welcome")) == 0
    with pytest.raises(AssertionError, match="ada@example.com"):
        assert_enqueued(app, send_welcome, args=["bob@example.com"])
    assert drain(app) == 1
    assert job.refresh().state is JobState.COMPLETED
    assert run_job(send_welcome.enqueue("bob@example.com")) == "sent to bob@example.com"


def test_drain_works_inside_a_running_event_loop() -> None:
    app = Conveyor("memory://")

    @app.task
    async def ping() -> str:
        return "pong"

    async def main() -> str:
        job = await ping.aenqueue()
        drain(app)
        value: str = await job.aresult(timeout=5)
        return value

    assert asyncio.run(main()) == "pong"


def test_demo_runs_end_to_end(tmp_path: Path) -> None:
    from rich.console import Console

    from conveyor.demo import run_demo

    console = Console(record=True, width=160)
    run_demo(briefs=8, url=f"sqlite:///{tmp_path / 'demo.db'}", console=console)
    text = console.export_text()
    assert "8 briefs in" in text and "brief-07" in text
    assert "font 'Brand Sans' is not installed" in text
    app = Conveyor(f"sqlite:///{tmp_path / 'demo.db'}", prefix="demo")
    stats = app.stats()["totals"]
    assert stats["dead"] == 1 and stats["completed"] == 8 * 4 - 1
    app.close()


def test_a_store_waits_for_a_renewal_that_starts_as_the_last_one_ends() -> None:
    """One renewal ends and an asked-for one starts in the same step of the loop, before
    the store waiting for the first runs: the store must wait for the second too, as it
    may carry the last line of a job the store is about to end."""
    from conveyor.worker.lease import LeaseKeeper

    async def scenario() -> None:
        keeper = LeaseKeeper(app.backend, dict, lease_seconds=30, every=10)  # any engine: none is called
        keeper._idle.clear()  # a renewal on its way
        store = asyncio.create_task(keeper.quiet())
        await asyncio.sleep(0)
        keeper._idle.set()  # it ends ...
        keeper._idle.clear()  # ... and the next begins, in the same step
        await asyncio.sleep(0.05)
        assert not store.done()
        keeper._idle.set()
        await asyncio.wait_for(store, 1)
        keeper.thread.shutdown()

    app = Conveyor("memory://")
    asyncio.run(scenario())
    app.close()
