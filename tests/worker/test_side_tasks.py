"""The lease keeper and maintenance, driven directly with an injected clock."""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging

import pytest

from conveyor.backends.base import JobQuery, NewJob, WorkerInfo
from conveyor.backends.memory import MemoryBackend
from conveyor.clock import FakeClock
from conveyor.context import JobContext
from conveyor.errors import BackendUnavailable
from conveyor.job import JobState
from conveyor.worker.executor import Running
from conveyor.worker.lease import LeaseKeeper
from conveyor.worker.maintenance import Maintenance


def _running(backend: MemoryBackend, count: int) -> dict[str, Running]:
    backend.enqueue([NewJob("t", "default", "[[],{}]", max_attempts=2) for _ in range(count)])
    jobs = {}
    for record in backend.claim("w", ["default"], count, 10):
        jobs[record.id] = Running(record, JobContext(record, lambda: None))
    return jobs


def test_renewal_extends_every_lease_in_one_call_and_carries_logs() -> None:
    clock = FakeClock()
    backend = MemoryBackend(clock=clock)
    running = _running(backend, 3)
    first = next(iter(running.values()))
    first.context.log("working", step=1)
    first.context.progress(0.25)

    async def scenario() -> None:
        keeper = LeaseKeeper(backend, lambda: running, lease_seconds=10, every=60)
        clock.advance(8)
        await keeper.renew(list(running.values()))
        keeper.thread.shutdown()

    asyncio.run(scenario())
    clock.advance(8)  # 16 s after the claim, 8 s after the renewal: still leased
    assert backend.recover_expired() == []
    record = backend.get([first.id])[0]
    assert record is not None and record.progress == 0.25
    assert [e.message for e in backend.logs(first.id)] == ["working"]


def test_a_lost_lease_flags_only_that_job() -> None:
    clock = FakeClock()
    backend = MemoryBackend(clock=clock)
    running = _running(backend, 2)
    lost, kept = running.values()
    backend.cancel([lost.id])

    async def scenario() -> None:
        keeper = LeaseKeeper(backend, lambda: running, lease_seconds=10, every=60)
        await keeper.renew(list(running.values()))
        keeper.thread.shutdown()

    asyncio.run(scenario())
    assert lost.context.cancelled and not kept.context.cancelled


def test_maintenance_recovers_expired_leases_and_reports_the_worker() -> None:
    clock = FakeClock()
    backend = MemoryBackend(clock=clock)
    running = _running(backend, 1)
    woken: list[bool] = []
    info = WorkerInfo(id="w", host="h", pid=1, queues=("default",), concurrency=1, started_at=clock.now())
    thread = concurrent.futures.ThreadPoolExecutor(1)

    async def scenario() -> None:
        sweeper = Maintenance(backend, thread, 10, lambda: info, lambda: woken.append(True))
        assert sweeper.interval == 2.5
        clock.advance(11)
        await sweeper.sweep()

    asyncio.run(scenario())
    thread.shutdown()
    [job_id] = running
    record = backend.get([job_id])[0]
    assert record is not None and record.state is JobState.QUEUED
    assert woken == [True]
    assert [w.id for w in backend.workers()] == ["w"]


def test_retention_prunes_old_finished_jobs_in_batches() -> None:
    from conveyor.backends.base import Outcome, OutcomeKind
    from conveyor.worker import maintenance as module

    clock = FakeClock()
    backend = MemoryBackend(clock=clock)
    backend.enqueue([NewJob("t", "default", "[[],{}]") for _ in range(7)])
    claimed = backend.claim("w", ["default"], 7, 10)
    backend.finish(
        [Outcome(r.id, r.lease_token or "", OutcomeKind.COMPLETED, result="1") for r in claimed[:5]]
    )
    backend.finish([Outcome(r.id, r.lease_token or "", OutcomeKind.DEAD, error="E: x") for r in claimed[5:]])
    clock.advance(100)
    thread = concurrent.futures.ThreadPoolExecutor(1)
    keep = {JobState.COMPLETED: 50.0, JobState.CANCELLED: 50.0, JobState.DEAD: 500.0}
    sweeper = Maintenance(backend, thread, 10, lambda: None, lambda: None, retention=keep, now=clock.now)  # type: ignore[arg-type, return-value]
    original = module._PRUNE_BATCH
    module._PRUNE_BATCH = 2  # several batches
    try:
        assert asyncio.run(sweeper.prune()) == 5  # completed: 100 s old > 50 s; dead kept
    finally:
        module._PRUNE_BATCH = original
    thread.shutdown()
    assert {r.state for r in backend.list_jobs(JobQuery())} == {JobState.DEAD}


def test_retention_by_count_keeps_the_newest_per_queue_and_state() -> None:
    from conveyor.backends.base import Outcome, OutcomeKind

    clock = FakeClock()
    backend = MemoryBackend(clock=clock)
    for queue in ("a", "b"):
        backend.enqueue([NewJob("t", queue, "[[],{}]") for _ in range(4)])
        for record in backend.claim("w", [queue], 4, 10):
            clock.advance(1)
            backend.finish([Outcome(record.id, record.lease_token or "", OutcomeKind.COMPLETED, result="1")])
    newest = {q: [r.id for r in backend.list_jobs(JobQuery(queue=q))][:2] for q in ("a", "b")}
    thread = concurrent.futures.ThreadPoolExecutor(1)
    counts = {JobState.COMPLETED: 2, JobState.DEAD: None}
    sweeper = Maintenance(backend, thread, 10, lambda: None, lambda: None, keep_counts=counts)  # type: ignore[arg-type, return-value]
    assert asyncio.run(sweeper.prune()) == 4
    thread.shutdown()
    assert {q: [r.id for r in backend.list_jobs(JobQuery(queue=q))] for q in ("a", "b")} == newest


def test_a_failing_maintenance_step_does_not_skip_the_others(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The heartbeat refused (as at Redis maxmemory) and the flow pass broken (a row the
    engine cannot read): recovery and the prune still run, and the sweep returns."""
    from conveyor.backends.base import Outcome, OutcomeKind

    clock = FakeClock()
    backend = MemoryBackend(clock=clock)
    backend.enqueue([NewJob("t", "default", "[[],{}]", max_attempts=2) for _ in range(2)])
    record, _ = backend.claim("w", ["default"], 2, 10)
    backend.finish([Outcome(record.id, record.lease_token or "", OutcomeKind.COMPLETED, result="1")])
    clock.advance(100)  # the completed job is past retention, the other's lease has expired

    def refused(*args: object) -> None:
        raise BackendUnavailable("OOM command not allowed when used memory > 'maxmemory'")

    def broken(*args: object) -> None:
        raise ValueError("a row that cannot be read")

    monkeypatch.setattr(backend, "report_worker", refused)
    monkeypatch.setattr(backend, "list_jobs", broken)
    thread = concurrent.futures.ThreadPoolExecutor(1)
    keep = {JobState.COMPLETED: 50.0}
    sweeper = Maintenance(backend, thread, 10, lambda: None, lambda: None, retention=keep, now=clock.now)  # type: ignore[arg-type, return-value]
    with caplog.at_level(logging.ERROR, "conveyor.worker"):
        asyncio.run(sweeper.sweep())
    thread.shutdown()
    assert backend.counts()["default"] == {JobState.QUEUED: 1}  # one recovered, one pruned
    assert "maintenance: reporting this worker failed: OOM command not allowed" in caplog.text
    assert "maintenance: settling flows failed" in caplog.text and "Traceback" in caplog.text
