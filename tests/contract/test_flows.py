"""Flows on every engine: chains, groups, fan-in, failure policies, cancel, recovery."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from conveyor import (
    ChildFailed,
    Conveyor,
    Fail,
    JobFailed,
    JobNotFound,
    JobState,
    Signature,
    chain,
    current_job,
    flow,
    group,
)
from conveyor.backends.base import Backend, JobQuery, NewJob, Outcome, OutcomeKind, Resumption
from conveyor.clock import FakeClock
from conveyor.errors import ConfigError
from conveyor.worker.maintenance import Maintenance
from tests.conftest import running

QUEUES = "default,side"


def _tasks(app: Conveyor) -> dict[str, Any]:
    @app.task
    def add(x: int, y: int = 1) -> int:
        return x + y

    @app.task
    async def double(x: int) -> int:
        return x * 2

    @app.task(queue="side")
    def show(x: Any) -> str:
        return f"<{x}>"

    @app.task
    def total(values: list[int]) -> int:
        return sum(values)

    @app.task
    def report() -> list[Any]:
        return current_job().child_results()

    @app.task(retries=0)
    def broken(why: str) -> None:
        raise Fail(why)

    return {f.name.rsplit(".", 1)[1]: f for f in (add, double, show, total, report, broken)}


def test_a_chain_passes_each_result_to_the_next_step(app: Conveyor) -> None:
    t = _tasks(app)
    last = chain(t["add"].s(1), t["double"].s(), t["show"].s()).enqueue()
    first, middle = app.jobs(state="queued")[0], app.jobs(state="waiting")
    assert [j.task for j in middle] == [t["show"].name, t["double"].name]  # newest first
    assert first.task == t["add"].name
    assert last.state is JobState.WAITING and last.record.children == [middle[1].id]
    with running(app, queues=QUEUES):
        assert last.result(timeout=10) == "<4>"


def test_a_group_enqueues_independent_jobs_in_one_call(app: Conveyor) -> None:
    t = _tasks(app)
    jobs = group(t["add"].s(1), t["add"].s(2, y=5), t["double"].s(4)).enqueue()
    assert all(job.state is JobState.QUEUED for job in jobs)
    with running(app):
        assert [job.result(timeout=10) for job in jobs] == [2, 7, 8]


def test_a_flow_parent_reads_child_results_in_the_order_given(app: Conveyor) -> None:
    t = _tasks(app)
    children = [t["show"].s(1), t["add"].s(10), t["double"].s(3)]  # "show" runs on another queue
    parent = flow(parent=t["report"].s(), children=children).enqueue()
    kids = app.backend.get(parent.record.children)
    assert [k.task for k in kids if k] == [c.task for c in children]
    assert all(k is not None and k.parent_id == parent.id for k in kids)
    with running(app, queues=QUEUES, concurrency=3):
        assert parent.result(timeout=10) == ["<1>", 11, 6]


def test_flows_nest(app: Conveyor) -> None:
    t = _tasks(app)
    inner = flow(parent=t["total"].s([100]), children=[t["add"].s(1)])
    tree = flow(
        parent=t["report"].s(),
        children=[chain(t["add"].s(1), t["double"].s()), group(t["add"].s(5), inner)],
    )
    parent = tree.enqueue()
    with running(app, queues=QUEUES, concurrency=4):
        assert parent.result(timeout=10) == [4, 6, 100]


def test_a_step_after_a_group_receives_the_list_of_results(app: Conveyor) -> None:
    t = _tasks(app)
    last = chain(group(t["add"].s(1), t["add"].s(2)), t["total"].s(), t["double"].s()).enqueue()
    with running(app, concurrency=2):
        assert last.result(timeout=10) == 10


def test_a_failed_child_kills_its_parent_and_the_rest_of_the_chain(app: Conveyor) -> None:
    t = _tasks(app)
    last = chain(t["broken"].s("no input"), t["double"].s(), t["show"].s()).enqueue()
    with running(app, queues=QUEUES), pytest.raises(JobFailed, match="ChildFailed") as failure:
        last.result(timeout=10)
    middle = app.get_job(last.record.children[0])
    assert middle.state is JobState.DEAD
    first = middle.record.children[0]
    assert middle.error is not None and f"job {first}" in middle.error and "Fail: no input" in middle.error
    assert failure.value.job.error is not None and f"job {middle.id}" in failure.value.job.error


def test_ignore_runs_the_parent_with_the_completed_children_only(app: Conveyor) -> None:
    t = _tasks(app)
    children = [t["add"].s(1), t["broken"].s("x"), t["add"].s(2)]
    parent = flow(parent=t["report"].s(), children=children, on_child_failure="ignore").enqueue()
    with running(app, concurrency=3):
        assert parent.result(timeout=10) == [2, 3]


def test_continue_puts_a_child_failed_in_the_failed_childs_place(app: Conveyor) -> None:
    t = _tasks(app)
    seen: list[Any] = []

    @app.task
    def inspect_children() -> int:
        seen.extend(current_job().child_results())
        return len(seen)

    children = [t["add"].s(1), t["broken"].s("x")]
    parent = flow(parent=inspect_children.s(), children=children, on_child_failure="continue").enqueue()
    with running(app, concurrency=2):
        assert parent.result(timeout=10) == 2
    failed_id = parent.record.children[1]
    assert seen[0] == 2
    assert seen[1] == ChildFailed(failed_id, "dead", None)
    assert seen[1].error == "Fail: x"


def test_cancelling_a_flow_cancels_its_unfinished_children(app: Conveyor) -> None:
    t = _tasks(app)
    last = chain(t["add"].s(1), t["double"].s(), t["show"].s()).enqueue()
    assert last.cancel() is True
    everything = app.jobs(limit=10)
    assert len(everything) == 3
    assert {job.state for job in everything} == {JobState.CANCELLED}


def test_cancelling_a_child_fails_its_waiting_parent(app: Conveyor) -> None:
    t = _tasks(app)
    parent = flow(parent=t["report"].s(), children=[t["add"].s(1), t["add"].s(2)]).enqueue()
    assert app.cancel(parent.record.children[0]) == [True]
    assert parent.refresh().state is JobState.DEAD
    assert parent.error is not None and "ended cancelled" in parent.error


def test_deleting_an_unfinished_child_fails_its_waiting_parent(app: Conveyor) -> None:
    """Deleted, the child is cancelled first: the parent does not wait on a job that is gone."""
    t = _tasks(app)
    parent = flow(parent=t["report"].s(), children=[t["add"].s(1), t["add"].s(2)]).enqueue()
    gone, kept = parent.record.children
    assert app.delete(gone) == [True]
    assert app.get_job(kept).state is JobState.QUEUED
    assert parent.refresh().state is JobState.DEAD
    assert parent.error is not None and "ended cancelled" in parent.error
    assert {j.id for j in app.jobs(limit=10)} == {parent.id, kept}


def test_deleting_a_flows_parent_cancels_its_unfinished_children(app: Conveyor) -> None:
    t = _tasks(app)
    parent = flow(parent=t["report"].s(), children=[t["add"].s(1), t["add"].s(2)]).enqueue()
    assert parent.delete() is True
    children = [app.get_job(c) for c in parent.record.children]
    assert [c.state for c in children] == [JobState.CANCELLED] * 2
    with pytest.raises(JobNotFound):
        app.get_job(parent.id)


def test_a_bad_flow_is_refused_whole_before_anything_is_stored(app: Conveyor) -> None:
    t = _tasks(app)
    with pytest.raises(ConfigError, match="unique_key cannot be used inside a flow"):
        chain(t["add"].s(1), t["double"].options(unique_key="k").s()).enqueue()
    with pytest.raises(ConfigError, match="cannot have a delay"):
        chain(t["add"].s(1), t["double"].options(delay=5).s()).enqueue()
    assert app.jobs() == []


def test_flow_building_errors_name_what_is_wrong(app: Conveyor) -> None:
    t = _tasks(app)
    with pytest.raises(ConfigError, match="chain\\(\\) needs at least one step"):
        chain()
    with pytest.raises(ConfigError, match="a step after the first must be a task signature"):
        chain(t["add"].s(1), group(t["add"].s(2)))
    with pytest.raises(ConfigError, match="on_child_failure must be one of"):
        flow(parent=t["report"].s(), children=[t["add"].s(1)], on_child_failure="maybe")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="flow\\(\\) needs at least one child"):
        flow(parent=t["report"].s(), children=[])
    with pytest.raises(ConfigError, match="expected task signatures"):
        group(t["add"])
    with pytest.raises(ConfigError, match="pass app="):
        chain(Signature("by.name", (1,))).enqueue()
    assert chain(app.ref("a.b").s(1)).enqueue().task == "a.b"  # by name, app from the signature


def test_a_parent_left_waiting_by_a_crash_is_settled_by_maintenance(
    make_backend: Callable[..., Backend], clock: FakeClock
) -> None:
    backend = make_backend(clock)
    child, parent = NewJob("t.a", "default", "[[],{}]"), NewJob("t.b", "default", "[[],{}]", waiting=True)
    child.parent = 1
    child_id, parent_id = (s.id for s in backend.enqueue([child, parent]))
    claimed = backend.claim("w", ["default"], 5, 30)
    assert [j.id for j in claimed] == [child_id]  # the waiting parent is not claimable
    # The worker stores the child's result, then dies before settling the parent.
    backend.finish([Outcome(child_id, claimed[0].lease_token or "", OutcomeKind.COMPLETED, result="1")])
    assert backend.get([parent_id])[0].state is JobState.WAITING  # type: ignore[union-attr]
    maintenance = Maintenance(backend, None, 30, lambda: None, lambda: None)  # type: ignore[arg-type, return-value]
    assert maintenance.settle_flows() == [parent_id]
    assert backend.get([parent_id])[0].state is JobState.QUEUED  # type: ignore[union-attr]
    assert [j.id for j in backend.claim("w", ["default"], 5, 30)] == [parent_id]


def test_waiting_jobs_are_counted_and_listed(backend: Backend) -> None:
    child, parent = NewJob("t.a", "q", "[[],{}]"), NewJob("t.b", "q", "[[],{}]", waiting=True)
    child.parent = 1
    child_id, parent_id = (s.id for s in backend.enqueue([child, parent]))
    assert backend.counts()["q"][JobState.WAITING] == 1
    listed = backend.list_jobs(JobQuery(state=JobState.WAITING))
    assert [r.id for r in listed] == [parent_id]
    assert listed[0].children == [child_id] and listed[0].parent_id is None
    assert backend.get([child_id])[0].parent_id == parent_id  # type: ignore[union-attr]
    assert [r.id for r in backend.claim("w", ["q"], 5, 30)] == [child_id]
    # Listed twice in one call, a waiting job still moves once.
    assert backend.resume_waiting([Resumption(parent_id), Resumption(parent_id)]) == [True, False]
