"""Helpers for testing code that uses Conveyor, on the real memory engine.

app = Conveyor("memory://")
signup(...)                       # your code enqueues
assert_enqueued(app, send_welcome, args=["ada@example.com"])
drain(app)                        # runs every ready job in this process
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

from conveyor.app import Conveyor
from conveyor.job import Job, JobState
from conveyor.task import Task


def drain(app: Conveyor, queues: Sequence[str] | None = None, *, concurrency: int = 10) -> int:
    """Run jobs in this process until none is ready on `queues` (default: every queue
    with jobs); returns how many attempts ran. Retries that fall due meanwhile run too."""
    names = tuple(queues or sorted(app.backend.counts()) or ["default"])
    worker = app.worker(queues=names, concurrency=concurrency)
    result: list[int] = []

    def run() -> None:
        result.append(worker.run(burst=True, handle_signals=False))

    # Run on a fresh thread so drain() also works from inside a running event loop.
    thread = threading.Thread(target=run, name="conveyor-drain")
    thread.start()
    thread.join()
    if result != [0]:
        raise RuntimeError("the drain worker crashed; see the log above")
    return worker.processed


def enqueued(app: Conveyor, task: Task[Any, Any] | str, *, state: JobState | None = None) -> list[Job[Any]]:
    """Jobs of `task` still waiting to run (or in `state`), oldest first."""
    name = task if isinstance(task, str) else task.name
    states = [state] if state else [JobState.QUEUED, JobState.SCHEDULED]
    jobs = [j for s in states for j in app.jobs(task=name, state=s, limit=10_000)]
    return sorted(jobs, key=lambda j: (j.enqueued_at, int(j.id) if j.id.isdigit() else 0))


def assert_enqueued(
    app: Conveyor,
    task: Task[Any, Any] | str,
    *,
    args: Sequence[Any] | None = None,
    kwargs: dict[str, Any] | None = None,
    count: int | None = None,
) -> list[Job[Any]]:
    """Assert that jobs of `task` wait to run (matching args/kwargs if given); returns them."""
    name = task if isinstance(task, str) else task.name
    jobs = [
        j
        for j in enqueued(app, name)
        if (args is None or j.args == list(args)) and (kwargs is None or j.kwargs == kwargs)
    ]
    wanted = "at least 1" if count is None else str(count)
    if (count is None and not jobs) or (count is not None and len(jobs) != count):
        others = [(j.args, j.kwargs) for j in enqueued(app, name)]
        raise AssertionError(
            f"expected {wanted} enqueued job(s) of {name} with args={args} kwargs={kwargs}; "
            f"found {len(jobs)}; waiting calls of {name}: {others}"
        )
    return jobs


def run_job(job: Job[Any], *, timeout: float = 30.0) -> Any:
    """Run jobs on this job's queue until it finishes; return its result or raise JobFailed."""
    app = job._app
    drain(app, [job.queue])
    return job.result(timeout=timeout)
