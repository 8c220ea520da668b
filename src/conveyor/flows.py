"""Flows: chains, groups and fan-in, stored as one atomic batch of linked jobs.

A flow is a tree. Every job that waits for others (a fan-in parent, or a chain's
later step) is stored `waiting` with its children's ids; each child knows its
parent. When a child finishes, whoever finished it calls `settle()` for its
parent, which reads the children and asks the engine to move the parent on,
to `queued` or (under the default failure policy) to `dead`. The engine's
`resume_waiting` moves a job only while it is still waiting, so racing
settlers move it once; a worker's maintenance pass settles any parent a crash
left behind.

    chain(a.s(1), b.s(), c.s())            a -> b(result of a) -> c(result of b)
    group(a.s(1), a.s(2))                  independent jobs, one round trip
    flow(parent=p.s(), children=[...])     p runs after every child; reads child_results()
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from conveyor.backends.base import Backend, Resumption
from conveyor.errors import ConfigError
from conveyor.job import TERMINAL_STATES, JobRecord, JobState
from conveyor.task import Signature

if TYPE_CHECKING:
    from conveyor.app import Conveyor
    from conveyor.job import Job

Policy = Literal["fail", "ignore", "continue"]
POLICIES: tuple[Policy, ...] = ("fail", "ignore", "continue")


class ChildFailed:
    """A failed child's place in `child_results()` under `on_child_failure="continue"`."""

    __slots__ = ("error", "job_id", "state")

    def __init__(self, job_id: str, state: str, error: str | None) -> None:
        self.job_id, self.state, self.error = job_id, state, error

    def __repr__(self) -> str:
        return f"<ChildFailed job {self.job_id} {self.state}: {self.error}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ChildFailed) and (other.job_id, other.state) == (self.job_id, self.state)

    def __hash__(self) -> int:
        return hash((self.job_id, self.state))


class _Enqueueable:
    """What chain, group and flow share: planning and finding the app."""

    def plan(self) -> _Plan:
        plan = _Plan()
        assert isinstance(self, Chain | Group | Flow)
        plan.roots = plan.add(self)
        return plan

    def _app(self, app: Conveyor | None) -> Conveyor:
        assert isinstance(self, Chain | Group | Flow)
        found = app or _first_app(self)
        if found is None:
            raise ConfigError("this flow has only tasks referenced by name: pass app= to enqueue()")
        return found


@dataclass(frozen=True, slots=True)
class Chain(_Enqueueable):
    """Steps run one after another; each later step receives the previous result first."""

    steps: tuple[Signature | Chain | Group | Flow, ...]

    def enqueue(self, app: Conveyor | None = None) -> Job[Any]:
        """Store the whole chain atomically; returns the last step's job."""
        plan = self.plan()
        return self._app(app).submit_flow(plan)[plan.roots[-1]]

    async def aenqueue(self, app: Conveyor | None = None) -> Job[Any]:
        return await asyncio.to_thread(self.enqueue, app)


@dataclass(frozen=True, slots=True)
class Group(_Enqueueable):
    """Members run independently (in parallel on free workers)."""

    members: tuple[Signature | Chain | Group | Flow, ...]

    def enqueue(self, app: Conveyor | None = None) -> list[Job[Any]]:
        """Store every member atomically; returns each member's final job, in order."""
        plan = self.plan()
        jobs = self._app(app).submit_flow(plan)
        return [jobs[i] for i in plan.roots]

    async def aenqueue(self, app: Conveyor | None = None) -> list[Job[Any]]:
        return await asyncio.to_thread(self.enqueue, app)


@dataclass(frozen=True, slots=True)
class Flow(_Enqueueable):
    """Fan-in: `parent` runs once every child has finished."""

    parent: Signature
    children: tuple[Signature | Chain | Group | Flow, ...]
    on_child_failure: Policy = "fail"

    def enqueue(self, app: Conveyor | None = None) -> Job[Any]:
        """Store the parent and every child atomically; returns the parent's job."""
        plan = self.plan()
        return self._app(app).submit_flow(plan)[plan.roots[-1]]

    async def aenqueue(self, app: Conveyor | None = None) -> Job[Any]:
        return await asyncio.to_thread(self.enqueue, app)


def chain(*steps: Signature | Chain | Group | Flow) -> Chain:
    """`chain(a.s(x), b.s(), c.s())`: run in order, each step getting the previous result
    as its first argument (a list of results after a group)."""
    if not steps:
        raise ConfigError("chain() needs at least one step")
    flat: list[Signature | Chain | Group | Flow] = []
    for step in steps:
        _check_node("chain", step)
        flat.extend(step.steps if isinstance(step, Chain) else (step,))
    for later in flat[1:]:
        if not isinstance(later, Signature):
            raise ConfigError(
                f"chain(): a step after the first must be a task signature, got {type(later).__name__}; "
                "a group or flow can start a chain, or use flow(parent=..., children=[...]) to fan in"
            )
    return Chain(tuple(flat))


def group(*members: Signature | Chain | Group | Flow) -> Group:
    """`group(a.s(1), a.s(2))`: independent jobs stored in one atomic round trip."""
    if not members:
        raise ConfigError("group() needs at least one member")
    for member in members:
        _check_node("group", member)
    return Group(tuple(members))


def flow(
    *,
    parent: Signature,
    children: Sequence[Signature | Chain | Group | Flow],
    on_child_failure: Policy = "fail",
) -> Flow:
    """`flow(parent=report.s(id), children=[a.s(1), b.s(2)])`: the parent runs when every
    child has finished and reads their results with `current_job().child_results()`.

    on_child_failure: "fail" (the default) kills the parent as soon as a child ends dead
    or cancelled; "ignore" runs it with the completed children's results only;
    "continue" runs it with one entry per child, a `ChildFailed` for each failed one.
    """
    if not isinstance(parent, Signature):
        raise ConfigError(f"flow(): parent must be a task signature (task.s(...)), got {parent!r}")
    if not children:
        raise ConfigError("flow() needs at least one child")
    for child in children:
        _check_node("flow", child)
    if on_child_failure not in POLICIES:
        raise ConfigError(
            f"flow(): on_child_failure must be one of {', '.join(POLICIES)}, got {on_child_failure!r}"
        )
    return Flow(parent, tuple(children), on_child_failure)


def _check_node(where: str, node: object) -> None:
    if not isinstance(node, Signature | Chain | Group | Flow):
        raise ConfigError(
            f"{where}(): expected task signatures (task.s(...)), chains, groups or flows, got {node!r}"
        )


def _first_app(node: Signature | Chain | Group | Flow) -> Conveyor | None:
    if isinstance(node, Signature):
        return node.app
    inner = (
        node.steps
        if isinstance(node, Chain)
        else node.members
        if isinstance(node, Group)
        else (node.parent, *node.children)
    )
    for child in inner:
        found = _first_app(child)
        if found is not None:
            return found
    return None


# -- planning ----------------------------------------------------------------
@dataclass(slots=True)
class PlannedJob:
    """One job of a flow: the call, the index of the job waiting for it, and, for a job
    that waits, its options (JSON in the record's `flow` field)."""

    call: Signature
    parent: int | None = None
    waiting: bool = False
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def flow_json(self) -> str | None:
        return json.dumps(self.options, separators=(",", ":")) if self.waiting else None


@dataclass(slots=True)
class _Plan:
    """The jobs of a flow in storing order (children before the job that waits)."""

    jobs: list[PlannedJob] = field(default_factory=list)
    roots: list[int] = field(default_factory=list)  # the outermost node's final jobs

    def add(self, node: Signature | Chain | Group | Flow) -> list[int]:
        """Add `node`'s jobs; returns the indexes whose results finish it, in order."""
        if isinstance(node, Signature):
            self.jobs.append(PlannedJob(node))
            return [len(self.jobs) - 1]
        if isinstance(node, Group):
            return [i for member in node.members for i in self.add(member)]
        if isinstance(node, Flow):
            children = [i for child in node.children for i in self.add(child)]
            return [self._wait(node.parent, children, {"on_child_failure": node.on_child_failure})]
        exits = self.add(node.steps[0])
        for before, step in zip(node.steps, node.steps[1:], strict=False):
            assert isinstance(step, Signature)
            pipe = "all" if isinstance(before, Group) else "one"
            exits = [self._wait(step, exits, {"on_child_failure": "fail", "pipe": pipe})]
        return exits

    def _wait(self, call: Signature, children: list[int], options: dict[str, Any]) -> int:
        self.jobs.append(PlannedJob(call, waiting=True, options=options))
        index = len(self.jobs) - 1
        for child in children:
            self.jobs[child].parent = index
        return index


# -- reading results and settling parents --------------------------------------
def options_of(record: JobRecord) -> dict[str, Any]:
    """A waiting job's flow options ({} for a plain job)."""
    return json.loads(record.flow) if record.flow else {}


def _failed(child: JobRecord | None) -> bool:
    return child is None or child.state in (JobState.DEAD, JobState.CANCELLED)


def decide(parent: JobRecord, children: Sequence[JobRecord | None]) -> Resumption | None:
    """What to do with a waiting parent given its children now; None: keep waiting."""
    policy = options_of(parent).get("on_child_failure", "fail")
    if policy == "fail":
        for child_id, child in zip(parent.children, children, strict=True):
            if _failed(child):
                why = (
                    "was deleted"
                    if child is None
                    else f"({child.task}) ended {child.state.value}: {child.error}"
                )
                return Resumption(parent.id, f"ChildFailed: job {child_id} {why}")
    if all(child is None or child.state in TERMINAL_STATES for child in children):
        return Resumption(parent.id)
    return None


def settle(backend: Backend, parent_ids: Sequence[str]) -> list[str]:
    """Move on every waiting job among `parent_ids` whose children allow it, and their
    parents in turn when they die; returns the ids moved."""
    moved: list[str] = []
    pending = list(dict.fromkeys(p for p in parent_ids if p))
    while pending:
        parents = [p for p in backend.get(pending) if p is not None and p.state is JobState.WAITING]
        child_ids = [c for p in parents for c in p.children]
        found = dict(zip(child_ids, backend.get(child_ids), strict=True)) if child_ids else {}
        decisions = [d for p in parents if (d := decide(p, [found[c] for c in p.children])) is not None]
        if not decisions:
            break
        applied = backend.resume_waiting(decisions)
        by_id = {p.id: p for p in parents}
        pending = []
        for decision, ok in zip(decisions, applied, strict=True):
            if ok:
                moved.append(decision.job_id)
                grandparent = by_id[decision.job_id].parent_id
                if decision.error is not None and grandparent:
                    pending.append(grandparent)  # a dead parent is a failed child one level up
    return moved


def child_values(parent: JobRecord, children: Sequence[JobRecord | None], loads: Any) -> list[Any]:
    """The children's results for `current_job().child_results()`, by the parent's policy."""
    policy = options_of(parent).get("on_child_failure", "fail")
    values: list[Any] = []
    for child_id, child in zip(parent.children, children, strict=True):
        if child is not None and child.state is JobState.COMPLETED:
            values.append(loads(child.result or "null"))
        elif policy == "continue":
            state = "deleted" if child is None else child.state.value
            values.append(ChildFailed(child_id, state, None if child is None else child.error))
    return values


def piped(parent: JobRecord, results: list[Any]) -> tuple[bool, Any]:
    """(True, value) when this job is a chain step that receives the previous result."""
    pipe = options_of(parent).get("pipe")
    if pipe == "one":
        return True, results[0] if results else None
    if pipe == "all":
        return True, results
    return False, None
