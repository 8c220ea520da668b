"""The backend protocol, asserted identically against every engine (see ENGINES)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from conveyor.backends.base import (
    Backend,
    Enqueued,
    Fence,
    JobQuery,
    NewJob,
    Outcome,
    OutcomeKind,
    Renewal,
    WorkerInfo,
)
from conveyor.clock import Clock, FakeClock
from conveyor.events import JobEvent, JobEvents
from conveyor.job import JobRecord, JobState, LogEntry
from tests.conftest import ENGINES


@pytest.fixture(params=[*ENGINES, "postgres-async", "postgres-18"])
def engine(request: pytest.FixtureRequest) -> str:
    """Every engine; PostgreSQL once more with claim and finish on its async path, and
    once on PostgreSQL 18 (the machine's is 15; every SQL path runs here, in 6 s)."""
    return str(request.param)


def new(queue: str = "default", priority: int = 0, **kw: Any) -> NewJob:
    return NewJob(
        task="t.work",
        queue=queue,
        payload="[[],{}]",
        priority=priority,
        max_attempts=int(kw.pop("max_attempts", 3)),
        retries=2,
        **kw,
    )


def claim_one(backend: Backend, queue: str = "default", lease: float = 30) -> JobRecord:
    claimed = backend.claim("w1", [queue], 1, lease)
    assert len(claimed) == 1
    return claimed[0]


def state_of(backend: Backend, job_id: str) -> JobState:
    record = backend.get([job_id])[0]
    assert record is not None
    return record.state


def done(job: JobRecord, kind: OutcomeKind = OutcomeKind.COMPLETED, **kw: object) -> Outcome:
    return Outcome(job_id=job.id, token=job.lease_token or "", kind=kind, **kw)  # type: ignore[arg-type]


def test_enqueue_returns_ids_in_order_and_stores_everything(backend: Backend) -> None:
    stored = backend.enqueue([new(meta={"brief": "7"}), new(queue="media", priority=5)])
    assert all(s.created for s in stored)
    assert len({s.id for s in stored}) == 2
    first, second = backend.get([s.id for s in stored])
    assert first is not None and second is not None
    assert first.state is JobState.QUEUED and first.meta == {"brief": "7"}
    assert (second.queue, second.priority, second.max_attempts) == ("media", 5, 3)
    assert first.attempt == 0 and first.enqueued_at > 0


def test_bulk_enqueue_of_many_jobs_keeps_order(backend: Backend) -> None:
    stored = backend.enqueue([new() for _ in range(250)])
    claimed = backend.claim("w1", ["default"], 250, 30)
    assert [c.id for c in claimed] == [s.id for s in stored]


def test_claim_takes_higher_priority_first_then_fifo(backend: Backend) -> None:
    low1, high, low2, mid = backend.enqueue(
        [new(priority=0), new(priority=10), new(priority=0), new(priority=5)]
    )
    claimed = backend.claim("w1", ["default"], 10, 30)
    assert [c.id for c in claimed] == [high.id, mid.id, low1.id, low2.id]


def test_claim_never_takes_more_than_the_limit(backend: Backend) -> None:
    backend.enqueue([new() for _ in range(5)])
    assert len(backend.claim("w1", ["default"], 3, 30)) == 3
    assert len(backend.claim("w1", ["default"], 3, 30)) == 2
    assert backend.claim("w1", ["default"], 3, 30) == []


def test_claim_drains_queues_in_the_order_given(backend: Backend) -> None:
    low = backend.enqueue([new(queue="low")])[0]
    high = backend.enqueue([new(queue="high")])[0]
    backend.enqueue([new(queue="other")])
    claimed = backend.claim("w1", ["high", "low"], 5, 30)
    assert [c.id for c in claimed] == [high.id, low.id]


def test_warm_up_from_several_threads_leaves_no_trace_and_claims_work(backend: Backend) -> None:
    ids = [e.id for e in backend.enqueue([new(), new()])]
    threads = [threading.Thread(target=backend.warm_up) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    backend.warm_up()  # again on a thread that already has its connection
    assert set(backend.counts()) == {"default"}
    claimed = backend.claim("w1", ["default"], 5, 30)
    assert sorted(r.id for r in claimed) == sorted(ids)
    assert backend.finish([done(r) for r in claimed]) == [Fence.OK, Fence.OK]


def test_claim_leases_the_job_and_counts_the_attempt(backend: Backend, clock: FakeClock) -> None:
    backend.enqueue([new()])
    job = claim_one(backend, lease=30)
    assert job.state is JobState.ACTIVE and job.attempt == 1
    assert job.lease_owner == "w1" and job.lease_token
    assert job.lease_expires == pytest.approx(clock.now() + 30)


def test_delayed_job_waits_for_its_time(backend: Backend, clock: FakeClock) -> None:
    job = backend.enqueue([new(run_at=clock.now() + 60)])[0]
    assert state_of(backend, job.id) is JobState.SCHEDULED
    assert backend.claim("w1", ["default"], 1, 30) == []
    clock.advance(61)
    assert claim_one(backend).id == job.id


def test_complete_stores_result_and_releases_the_lease(backend: Backend) -> None:
    backend.enqueue([new()])
    job = claim_one(backend)
    assert backend.finish([done(job, result='{"ok":true}', progress=1.0)]) == [Fence.OK]
    record = backend.get([job.id])[0]
    assert record is not None
    assert record.state is JobState.COMPLETED and record.result == '{"ok":true}'
    assert record.lease_token is None and record.finished_at is not None and record.progress == 1.0


def test_finish_with_a_stale_token_is_lease_lost(backend: Backend) -> None:
    backend.enqueue([new()])
    job = claim_one(backend)
    stale = Outcome(job_id=job.id, token="not-the-token", kind=OutcomeKind.COMPLETED, result="1")
    assert backend.finish([stale]) == [Fence.LEASE_LOST]
    assert state_of(backend, job.id) is JobState.ACTIVE


def test_a_finished_job_cannot_be_finished_twice(backend: Backend) -> None:
    backend.enqueue([new()])
    job = claim_one(backend)
    assert backend.finish([done(job, result="1")]) == [Fence.OK]
    assert backend.finish([done(job, OutcomeKind.DEAD, error="E: x")]) == [Fence.LEASE_LOST]
    assert state_of(backend, job.id) is JobState.COMPLETED


def test_mixed_batch_reports_each_fence(backend: Backend) -> None:
    backend.enqueue([new(), new()])
    a, b = backend.claim("w1", ["default"], 2, 30)
    lost = Outcome(job_id=b.id, token="stale", kind=OutcomeKind.COMPLETED, result="2")
    assert backend.finish([done(a, result="1"), lost]) == [Fence.OK, Fence.LEASE_LOST]
    assert state_of(backend, a.id) is JobState.COMPLETED
    assert state_of(backend, b.id) is JobState.ACTIVE


def test_retry_outcome_schedules_the_job_and_keeps_the_error(backend: Backend, clock: FakeClock) -> None:
    backend.enqueue([new()])
    job = claim_one(backend)
    outcome = done(job, OutcomeKind.RETRY, error="ValueError: boom", traceback="tb", retry_at=clock.now() + 5)
    assert backend.finish([outcome]) == [Fence.OK]
    record = backend.get([job.id])[0]
    assert record is not None and record.state is JobState.SCHEDULED
    assert record.error == "ValueError: boom"
    assert [(a.attempt, a.error, a.traceback) for a in record.attempts] == [(1, "ValueError: boom", "tb")]
    assert backend.claim("w1", ["default"], 1, 30) == []
    clock.advance(6)
    again = claim_one(backend)
    assert again.id == job.id and again.attempt == 2


def test_dead_outcome_keeps_every_attempt(backend: Backend, clock: FakeClock) -> None:
    backend.enqueue([new()])
    job = claim_one(backend)
    backend.finish([done(job, OutcomeKind.RETRY, error="E: one", retry_at=clock.now())])
    job = claim_one(backend)
    backend.finish([done(job, OutcomeKind.DEAD, error="E: two", traceback="tb2")])
    record = backend.get([job.id])[0]
    assert record is not None and record.state is JobState.DEAD
    assert [a.error for a in record.attempts] == ["E: one", "E: two"]
    assert [a.attempt for a in record.attempts] == [1, 2]


def test_release_requeues_without_spending_the_attempt(backend: Backend) -> None:
    backend.enqueue([new()])
    job = claim_one(backend)
    assert backend.finish([done(job, OutcomeKind.RELEASED)]) == [Fence.OK]
    again = claim_one(backend)
    assert again.id == job.id and again.attempt == 1


def test_extend_leases_pushes_the_deadline_and_saves_progress(backend: Backend, clock: FakeClock) -> None:
    backend.enqueue([new()])
    job = claim_one(backend, lease=10)
    clock.advance(8)
    logs = [LogEntry(at=clock.now(), message="halfway", fields={"n": 1})]
    renewal = Renewal(job.id, job.lease_token or "", progress=0.5, logs=logs)
    assert backend.extend_leases([renewal, Renewal(job.id, "stale")], 10) == [
        Fence.OK,
        Fence.LEASE_LOST,
    ]
    clock.advance(8)
    assert backend.recover_expired() == []
    record = backend.get([job.id])[0]
    assert record is not None and record.progress == 0.5
    assert [(e.message, e.fields) for e in backend.logs(job.id)] == [("halfway", {"n": 1})]


def test_expired_lease_requeues_and_counts_the_attempt(backend: Backend, clock: FakeClock) -> None:
    backend.enqueue([new(max_attempts=2)])
    job = claim_one(backend, lease=10)
    clock.advance(11)
    assert backend.recover_expired() == [job.id]
    record = backend.get([job.id])[0]
    assert record is not None and record.state is JobState.QUEUED
    assert record.error is not None and record.error.startswith("LeaseExpired")
    # The old holder is fenced out.
    assert backend.finish([done(job, result="1")]) == [Fence.LEASE_LOST]
    second = claim_one(backend, lease=10)
    assert second.attempt == 2 and second.lease_token != job.lease_token
    clock.advance(11)
    assert backend.recover_expired() == [job.id]
    assert state_of(backend, job.id) is JobState.DEAD


def test_recovery_reaches_expired_leases_in_every_queue(backend: Backend, clock: FakeClock) -> None:
    queues = [f"tenant-{n}" for n in range(12)]
    backend.enqueue([new(queue=queue) for queue in queues])
    claimed = backend.claim("w1", queues, len(queues), 10)
    assert len(claimed) == len(queues)
    clock.advance(11)
    assert sorted(backend.recover_expired()) == sorted(job.id for job in claimed)
    assert {state_of(backend, job.id) for job in claimed} == {JobState.QUEUED}


def test_server_cpu_is_told_by_redis_and_valkey_and_grows(backend: Backend, engine: str) -> None:
    before = backend.server_cpu()
    backend.enqueue([new() for _ in range(500)])
    after = backend.server_cpu()
    if engine.startswith("redis") or engine == "valkey":  # INFO cpu, every node's on Cluster
        assert before is not None and after is not None and after >= before > 0
    else:
        assert before is None and after is None


def test_unique_key_returns_the_live_job(backend: Backend) -> None:
    first = backend.enqueue([new(unique_key="brief-7")])[0]
    again = backend.enqueue([new(unique_key="brief-7"), new(unique_key="brief-8")])
    assert again[0].id == first.id and not again[0].created
    assert again[1].created
    job = claim_one(backend)
    assert backend.enqueue([new(unique_key="brief-7")])[0].id == first.id  # still active
    backend.finish([done(job, result="1")])
    after = backend.enqueue([new(unique_key="brief-7")])[0]
    assert after.created and after.id != first.id


def test_unique_keys_are_scoped_to_their_queue(backend: Backend) -> None:
    a, b, again = backend.enqueue(
        [new(unique_key="k"), new(queue="q2", unique_key="k"), new(queue="q2", unique_key="k")]
    )
    assert a.created and b.created and a.id != b.id
    assert again == (b.id, False)


def test_cancel_unfinished_jobs_only(backend: Backend) -> None:
    queued, scheduled, active = backend.enqueue([new(), new(run_at=time.time() * 2), new(queue="q2")])
    job = claim_one(backend, queue="q2")
    assert backend.cancel([queued.id, scheduled.id, active.id, "999999"]) == [
        True,
        True,
        True,
        False,
    ]
    assert backend.cancel([queued.id]) == [False]
    assert state_of(backend, active.id) is JobState.CANCELLED
    assert backend.finish([done(job, result="1")]) == [Fence.LEASE_LOST]
    assert backend.claim("w1", ["default", "q2"], 10, 30) == []


def test_an_id_listed_twice_is_cancelled_once(backend: Backend) -> None:
    job = backend.enqueue([new()])[0]
    assert backend.cancel([job.id, job.id]) == [True, False]


def test_retry_requeues_dead_and_cancelled_with_a_fresh_budget(backend: Backend) -> None:
    a, b, c = backend.enqueue([new(max_attempts=1), new(), new()])
    job = claim_one(backend)
    backend.finish([done(job, OutcomeKind.DEAD, error="E: x")])
    backend.cancel([b.id])
    assert backend.retry([a.id, b.id, c.id]) == [True, True, False]
    record = backend.get([a.id])[0]
    assert record is not None and record.state is JobState.QUEUED
    assert record.max_attempts == record.attempt + record.retries + 1


def test_retry_refuses_when_a_live_job_holds_the_unique_key(backend: Backend) -> None:
    first = backend.enqueue([new(unique_key="k")])[0]
    backend.cancel([first.id])
    backend.enqueue([new(unique_key="k")])
    assert backend.retry([first.id]) == [False]
    assert state_of(backend, first.id) is JobState.CANCELLED


def test_list_counts_and_get(backend: Backend) -> None:
    ids = [s.id for s in backend.enqueue([new(), new(queue="media"), new()])]
    backend.cancel([ids[2]])
    listed = backend.list_jobs(JobQuery())
    assert [r.id for r in listed] == list(reversed(ids))
    assert [r.id for r in backend.list_jobs(JobQuery(queue="media"))] == [ids[1]]
    assert [r.id for r in backend.list_jobs(JobQuery(state=JobState.CANCELLED))] == [ids[2]]
    assert [r.id for r in backend.list_jobs(JobQuery(limit=1, offset=1))] == [ids[1]]
    assert backend.counts() == {
        "default": {JobState.QUEUED: 1, JobState.CANCELLED: 1},
        "media": {JobState.QUEUED: 1},
    }
    assert backend.get(["424242", "not-an-id"]) == [None, None]
    assert [r.id if r else None for r in backend.get([ids[2], "424242", ids[0], ids[2]])] == [
        ids[2],
        None,
        ids[0],
        ids[2],
    ]


def test_purge_deletes_finished_jobs_only(backend: Backend, clock: FakeClock) -> None:
    keep, gone, also_gone = backend.enqueue([new(), new(), new()])
    backend.cancel([gone.id, also_gone.id])
    assert backend.purge(states=[JobState.COMPLETED]) == 0
    assert backend.purge(older_than=clock.now() - 10) == 0
    assert backend.purge() == 2
    assert backend.get([keep.id, gone.id]) == [backend.get([keep.id])[0], None]


def test_delete_removes_any_job(backend: Backend) -> None:
    job = backend.enqueue([new()])[0]
    assert backend.delete([job.id, "777777"]) == 1
    assert backend.get([job.id]) == [None]


def test_workers_are_reported_and_removed(backend: Backend, clock: FakeClock) -> None:
    info = WorkerInfo(id="w1", host="h", pid=1, queues=("a", "b"), concurrency=5, started_at=clock.now())
    backend.report_worker(info)
    [seen] = backend.workers()
    assert (seen.id, seen.queues, seen.concurrency) == ("w1", ("a", "b"), 5)
    backend.report_worker(None, remove="w1")
    assert backend.workers() == []


def test_workers_that_stopped_reporting_drop_out_after_a_minute(backend: Backend, clock: FakeClock) -> None:
    info = WorkerInfo(id="w1", host="h", pid=1, queues=("a",), concurrency=1, started_at=clock.now())
    backend.report_worker(info)
    clock.advance(59)
    assert [w.id for w in backend.workers()] == ["w1"]
    clock.advance(2)  # 61 s without a report: presumed dead
    assert backend.workers() == []


def test_a_group_of_events_reads_back_as_one_event_per_job(backend: Backend) -> None:
    cursor = backend.event_cursor()
    data = {"worker": "w1", "attempt": 1}
    backend.publish(
        [JobEvents("active", ["1", "2"], "q", "t", 5.0, data), JobEvent("completed", "3", "q", "t", 6.0)]
    )
    events, cursor = backend.read_events(cursor, 5)
    assert [(e.kind, e.job_id, e.queue, e.task, e.at) for e in events] == [
        ("active", "1", "q", "t", 5.0),
        ("active", "2", "q", "t", 5.0),
        ("completed", "3", "q", "t", 6.0),
    ]
    assert events[0].data == events[1].data == data
    events[0].data["mine"] = True  # each event has its own data
    assert "mine" not in events[1].data
    assert backend.read_events(cursor, 0.01)[0] == []


def test_wait_for_work_wakes_on_enqueue_from_another_thread(
    make_backend: Callable[[Clock], Backend],
) -> None:
    from conveyor.clock import SystemClock

    backend = make_backend(SystemClock())
    backend.wait_for_work(["default"], 0.01)  # first call may return at once
    while backend.wait_for_work(["default"], 0.01):
        pass  # drain spurious wake-ups
    timer = threading.Timer(0.2, lambda: backend.enqueue([new()]))
    timer.start()
    started = time.monotonic()
    assert backend.wait_for_work(["default"], 5.0)
    assert time.monotonic() - started < 2.0
    timer.join()


def test_wait_for_work_returns_when_a_delayed_job_falls_due(
    make_backend: Callable[[Clock], Backend],
) -> None:
    from conveyor.clock import SystemClock

    backend = make_backend(SystemClock())
    due = time.time() + 0.3
    backend.enqueue([new(run_at=due)])
    started = time.monotonic()
    claimed: list[JobRecord] = []
    wakes = 0
    # The enqueue's own notice may wake a waiter before the job is due (PostgreSQL's
    # trigger notifies every insert, and on a loaded machine it can arrive late), so
    # a wake-up can be spurious; a waiter that spins instead of blocking cannot pass.
    while not claimed and time.monotonic() - started < 2.0:
        if backend.wait_for_work(["default"], 5.0):
            wakes += 1
            claimed = backend.claim("w1", ["default"], 1, 30)
    assert len(claimed) == 1
    assert time.time() >= due - 0.05  # the servers' clocks are this machine's
    assert wakes <= 3


def test_wait_finished_returns_the_finished_record(backend: Backend) -> None:
    backend.enqueue([new()])
    job = claim_one(backend)
    timer = threading.Timer(0.1, lambda: backend.finish([done(job, result="7")]))
    timer.start()
    record = backend.wait_finished(job.id, time.monotonic() + 5)
    timer.join()
    assert record is not None and record.state is JobState.COMPLETED and record.result == "7"
    assert backend.wait_finished("123456", None) is None


def test_a_paused_queue_is_not_claimed_until_resumed(backend: Backend) -> None:
    held, other = backend.enqueue([new(queue="media"), new(queue="default")])
    backend.set_paused(["media"], True)
    assert backend.paused() == ["media"]
    assert [c.id for c in backend.claim("w1", ["media", "default"], 10, 30)] == [other.id]
    assert not backend.wait_for_work(["media"], 0.05) or backend.claim("w1", ["media"], 1, 30) == []
    backend.set_paused(["media"], False)
    assert backend.paused() == []
    assert [c.id for c in backend.claim("w1", ["media"], 10, 30)] == [held.id]


def test_a_queue_emptied_by_purge_and_delete_keeps_its_pause_and_comes_back_with_a_job(
    backend: Backend,
) -> None:
    """Redis takes an emptied queue off its list of queues (see Engines: Redis): a paused
    one must stay paused, and the next job must show in counts and be claimed."""
    paused, emptied = backend.enqueue([new(queue="media"), new(queue="mail")])
    backend.set_paused(["media"], True)
    backend.cancel([emptied.id])
    assert backend.delete([paused.id]) == 1
    assert backend.purge(states=[JobState.CANCELLED]) == 1
    assert backend.counts() == {} and backend.paused() == ["media"]
    again = backend.enqueue([new(queue="mail")])[0]
    assert backend.counts() == {"mail": {JobState.QUEUED: 1}}
    assert [c.id for c in backend.claim("w1", ["media", "mail"], 10, 30)] == [again.id]


def test_a_paused_queue_with_due_jobs_does_not_wake_workers(backend: Backend, clock: FakeClock) -> None:
    backend.set_paused(["media"], True)
    backend.enqueue([new(queue="media"), new(queue="media", run_at=clock.now() + 5)])
    clock.advance(10)  # the scheduled job is due, but its queue is paused
    wakes = 0
    deadline = time.monotonic() + 0.3
    while time.monotonic() < deadline:
        if backend.wait_for_work(["media"], 0.05):
            wakes += 1
            assert backend.claim("w1", ["media"], 10, 30) == []
    assert wakes <= 1, f"a paused queue woke the worker {wakes} times in 0.3 s (the first call may)"


def test_enqueue_tick_stores_one_job_per_tick_even_when_raced(backend: Backend) -> None:
    job = new(meta={"schedule": "nightly"})
    assert backend.enqueue_tick("nightly", 100.0, job) is not None
    assert backend.enqueue_tick("nightly", 100.0, job) is None
    assert backend.enqueue_tick("nightly", 50.0, job) is None  # older ticks never run late
    winners: list[str | None] = []
    lock = threading.Lock()

    def race() -> None:
        result = backend.enqueue_tick("nightly", 200.0, job)
        with lock:
            winners.append(result)

    threads = [threading.Thread(target=race) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(w is not None for w in winners) == 1
    assert len(backend.list_jobs(JobQuery())) == 2


def test_purge_with_a_limit_deletes_in_batches(backend: Backend) -> None:
    ids = [s.id for s in backend.enqueue([new() for _ in range(5)])]
    backend.cancel(ids)
    assert backend.purge(limit=2) == 2
    assert backend.purge(limit=2) == 2
    assert backend.purge(limit=2) == 1
    assert backend.purge() == 0


def test_purge_with_a_limit_deletes_the_longest_finished_first(backend: Backend, clock: FakeClock) -> None:
    ids = [s.id for s in backend.enqueue([new() for _ in range(3)])]
    for job_id in (ids[2], ids[0], ids[1]):  # finished in another order than enqueued
        backend.cancel([job_id])
        clock.advance(1)
    assert backend.purge(queue="default", states=[JobState.CANCELLED], limit=2) == 2
    assert [r.id for r in backend.list_jobs(JobQuery())] == [ids[1]]


def _done(backend: Backend, job_id: str, kind: OutcomeKind) -> None:
    [record] = backend.claim("w", ["default"], 1, 30)
    assert record.id == job_id
    backend.finish([Outcome(job_id, record.lease_token or "", kind, result="1", error="E: x")])


def test_unique_for_keeps_the_key_taken_after_the_job_completed(backend: Backend, clock: FakeClock) -> None:
    first = backend.enqueue([new(unique_key="k")])[0].id
    _done(backend, first, OutcomeKind.COMPLETED)
    clock.advance(10)
    windowed = NewJob("t.a", "default", "[[],{}]", unique_key="k", unique_for=60)
    assert backend.enqueue([windowed]) == [Enqueued(first, False)]
    assert backend.enqueue([NewJob("t.a", "other", "[[],{}]", unique_key="k", unique_for=60)])[0].created
    clock.advance(60)  # 70 s after it completed: the window has passed
    later = backend.enqueue([windowed])[0]
    assert later.created and later.id != first


def test_unique_for_does_not_count_a_dead_job(backend: Backend, clock: FakeClock) -> None:
    first = backend.enqueue([new(unique_key="k")])[0].id
    _done(backend, first, OutcomeKind.DEAD)
    again = backend.enqueue([NewJob("t.a", "default", "[[],{}]", unique_key="k", unique_for=60)])[0]
    assert again.created and again.id != first


def test_debounce_replaces_the_payload_and_time_of_a_job_not_yet_started(
    backend: Backend, clock: FakeClock
) -> None:
    def debounced(payload: str, delay: float) -> NewJob:
        job = NewJob("t.a", "default", payload, unique_key="k", run_at=clock.now() + delay)
        job.debounce = True
        return job

    first = backend.enqueue([debounced("[[1],{}]", 5)])[0]
    assert first.created
    clock.advance(3)
    assert backend.enqueue([debounced("[[2],{}]", 5)]) == [Enqueued(first.id, False)]
    record = backend.get([first.id])[0]
    assert record is not None and record.payload == "[[2],{}]"
    assert record.state is JobState.SCHEDULED and record.run_at == clock.now() + 5
    clock.advance(4)  # 7 s after the first enqueue, 4 s after the second: not due yet
    assert backend.claim("w", ["default"], 5, 30) == []
    clock.advance(2)
    [claimed] = backend.claim("w", ["default"], 5, 30)
    assert claimed.id == first.id and claimed.payload == "[[2],{}]"
    assert backend.enqueue([debounced("[[3],{}]", 5)]) == [Enqueued(first.id, False)]  # running: kept
    assert backend.get([first.id])[0].payload == "[[2],{}]"  # type: ignore[union-attr]
