"""Every row of the transition table in conveyor.job (and docs/states.md) holds on every engine."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from conveyor.backends.base import Backend, NewJob, Outcome, OutcomeKind, Resumption
from conveyor.clock import FakeClock
from conveyor.job import TRANSITIONS, Event, JobRecord, JobState, Transition, next_state


def _new(clock: FakeClock, delayed: bool = False, max_attempts: int = 2) -> NewJob:
    run_at = clock.now() + 60 if delayed else None
    return NewJob("t.work", "default", "[[],{}]", max_attempts=max_attempts, retries=1, run_at=run_at)


def _claimed(backend: Backend, clock: FakeClock, max_attempts: int = 2) -> JobRecord:
    backend.enqueue([_new(clock, max_attempts=max_attempts)])
    return backend.claim("w", ["default"], 1, 10)[0]


def _finish(backend: Backend, job: JobRecord, kind: OutcomeKind, clock: FakeClock) -> str:
    backend.finish(
        [
            Outcome(
                job.id,
                job.lease_token or "",
                kind,
                result="1",
                error="E: x",
                retry_at=clock.now() + 5,
            )
        ]
    )
    return job.id


def _waiting(backend: Backend, clock: FakeClock) -> tuple[str, str]:
    """(parent, child): a flow of two jobs, the parent waiting for the child."""
    child = _new(clock)
    child.parent = 1
    parent = _new(clock)
    parent.waiting = True
    stored = backend.enqueue([child, parent])
    return stored[1].id, stored[0].id


def _in_state(backend: Backend, clock: FakeClock, state: JobState) -> str:
    """A job already in `state`, made the fastest way."""
    if state is JobState.WAITING:
        return _waiting(backend, clock)[0]
    if state is JobState.SCHEDULED:
        return backend.enqueue([_new(clock, delayed=True)])[0].id
    if state is JobState.QUEUED:
        return backend.enqueue([_new(clock)])[0].id
    if state is JobState.ACTIVE:
        return _claimed(backend, clock).id
    if state is JobState.DEAD:
        return _finish(backend, _claimed(backend, clock), OutcomeKind.DEAD, clock)
    if state is JobState.CANCELLED:
        job_id = backend.enqueue([_new(clock)])[0].id
        backend.cancel([job_id])
        return job_id
    raise AssertionError(state)


def _fire(backend: Backend, clock: FakeClock, t: Transition) -> str:
    e = Event
    if t.event is e.ENQUEUE:
        return backend.enqueue([_new(clock)])[0].id
    if t.event is e.ENQUEUE_DELAYED:
        return backend.enqueue([_new(clock, delayed=True)])[0].id
    if t.event is e.ENQUEUE_WAITING:
        return _in_state(backend, clock, JobState.WAITING)
    if t.event in (e.CHILDREN_DONE, e.CHILD_FAILED):
        parent_id, _ = _waiting(backend, clock)
        error = "ChildFailed: job x ended dead" if t.event is e.CHILD_FAILED else None
        assert backend.resume_waiting([Resumption(parent_id, error)]) == [True]
        assert backend.resume_waiting([Resumption(parent_id, error)]) == [False]  # moved once
        return parent_id
    if t.event is e.PROMOTE:
        job_id = _in_state(backend, clock, JobState.SCHEDULED)
        clock.advance(61)
        backend.wait_for_work(["default"], 0)
        backend.claim("w", ["other"], 1, 10)  # claiming elsewhere must not take it...
        record = backend.claim("w", ["default"], 1, 10)  # ...claiming here promotes it
        assert record and record[0].id == job_id
        backend.finish([Outcome(job_id, record[0].lease_token or "", OutcomeKind.RELEASED)])
        return job_id
    if t.event is e.CLAIM:
        job_id = _in_state(backend, clock, JobState.QUEUED)
        assert backend.claim("w", ["default"], 1, 10)[0].id == job_id
        return job_id
    kinds = {
        e.COMPLETE: OutcomeKind.COMPLETED,
        e.FAIL_RETRY: OutcomeKind.RETRY,
        e.FAIL_FINAL: OutcomeKind.DEAD,
        e.SNOOZE: OutcomeKind.SNOOZED,
        e.RELEASE: OutcomeKind.RELEASED,
    }
    if t.event in kinds:
        return _finish(backend, _claimed(backend, clock), kinds[t.event], clock)
    if t.event in (e.LEASE_EXPIRED_RETRY, e.LEASE_EXPIRED_FINAL):
        job = _claimed(backend, clock, max_attempts=2 if t.event is e.LEASE_EXPIRED_RETRY else 1)
        clock.advance(11)
        assert backend.recover_expired() == [job.id]
        return job.id
    if t.event is e.CANCEL:
        assert t.source is not None
        job_id = _in_state(backend, clock, t.source)
        assert backend.cancel([job_id]) == [True]
        return job_id
    if t.event is e.RETRY:
        assert t.source is not None
        job_id = _in_state(backend, clock, t.source)
        assert backend.retry([job_id]) == [True]
        return job_id
    raise AssertionError(f"no driver for {t}")


@pytest.mark.parametrize("transition", TRANSITIONS, ids=lambda t: f"{t.source}-{t.event}")
def test_transition(transition: Transition, make_backend: Callable[..., Backend]) -> None:
    clock = FakeClock()
    backend = make_backend(clock)
    job_id = _fire(backend, clock, transition)
    record = backend.get([job_id])[0]
    assert record is not None
    if transition.event is Event.PROMOTE:
        assert record.state is JobState.QUEUED  # released back after the promoting claim
    else:
        assert record.state is transition.target


def test_next_state_reads_the_table() -> None:
    assert next_state(JobState.ACTIVE, Event.COMPLETE) is JobState.COMPLETED
    with pytest.raises(ValueError, match="no transition"):
        next_state(JobState.COMPLETED, Event.CLAIM)


def test_terminal_states_have_no_way_out_but_retry() -> None:
    for t in TRANSITIONS:
        if t.source in (JobState.COMPLETED, JobState.DEAD, JobState.CANCELLED):
            assert t.event is Event.RETRY
