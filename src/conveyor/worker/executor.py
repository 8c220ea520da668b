"""Running one attempt: prepare the call, run it with its timeout, map the outcome.

Nothing here raises for a job's sake: a bad payload, an unknown task, arguments
that do not fit or an exception in the task all become an `Outcome`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import functools
import math
import os
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from conveyor.backends.base import Outcome, OutcomeKind
from conveyor.context import JobContext
from conveyor.errors import BackendUnavailable, Fail, Retry, SerializationError
from conveyor.flows import child_values, piped
from conveyor.job import JobRecord
from conveyor.retry import backoff_delay
from conveyor.settings import Settings
from conveyor.task import Task
from conveyor.worker.deadlines import Deadlines

if TYPE_CHECKING:
    from conveyor.app import Conveyor


@dataclass(slots=True)
class Running:
    """A claimed job inside the worker, from claim until its outcome is handed over."""

    record: JobRecord
    context: JobContext
    started: float = field(default_factory=time.monotonic)
    runner: asyncio.Task[None] | None = None
    thread: concurrent.futures.Future[Any] | None = None
    lost: bool = False  # the lease is gone (cancelled, or taken over): stop, store nothing
    expired: bool = False  # its timeout passed: Deadlines cancelled its task (async tasks)

    @property
    def id(self) -> str:
        return self.record.id

    @property
    def token(self) -> str:
        return self.record.lease_token or ""


@dataclass(slots=True)
class Call:
    """A prepared invocation: the task and decoded, signature-checked arguments."""

    task: Task[Any, Any]
    fn: Callable[..., Any]
    args: list[Any]
    kwargs: dict[str, Any]


class _Unrunnable(Exception):
    """A job that can never run; it goes to dead without retries."""


def prepare(app: Conveyor, record: JobRecord, leading: tuple[Any, ...] = ()) -> Call:
    """Find the task and decode and bind the arguments (after `leading`, a chain step's
    previous result); _Unrunnable says what is wrong."""
    task = app.registered(record.task)
    if task is None or task.fn is None:
        raise _Unrunnable(f"UnknownTask: no task named {record.task!r} is registered in this worker")
    try:
        args, kwargs = app.decode_payload(record.payload)
    except ValueError as exc:
        raise _Unrunnable(f"PayloadError: {exc}") from None
    if leading:
        args = [*leading, *args]
    try:
        task.check_arguments(args, kwargs)
    except TypeError as exc:
        raise _Unrunnable(f"ArgumentError: arguments do not fit {record.task}(): {exc}") from None
    return Call(task, task.fn, args, kwargs)


def timeout_of(record: JobRecord, task: Task[Any, Any], settings: Settings) -> float | None:
    """The job's own timeout, else the task's, else the worker default; None: no limit,
    which a job or task asks for with math.inf (None there means "inherit")."""
    timeout = record.timeout or task.defaults.timeout or settings.job_timeout
    return None if timeout == math.inf else timeout


async def run_attempt(
    app: Conveyor,
    settings: Settings,
    job: Running,
    pool: concurrent.futures.ThreadPoolExecutor,
    deadlines: Deadlines,
    worker_id: str,
) -> Outcome:
    """Run one attempt to its outcome. Must run in a context where the job is bound.

    Sync tasks run in `pool`; async tasks' timeouts are kept by `deadlines`."""
    record = job.record
    leading: tuple[Any, ...] = ()
    if record.children:
        try:
            kids = await asyncio.to_thread(app.backend.get, record.children)
        except BackendUnavailable:
            return released(job, worker_id)  # the engine is away: run it again later, attempt unspent
        values = child_values(record, kids, app.serializer.loads)
        job.context.set_child_results(values)
        pipe, value = piped(record, values)
        leading = (value,) if pipe else ()
    try:
        call = prepare(app, record, leading)
    except _Unrunnable as exc:
        return _outcome(job, OutcomeKind.DEAD, worker_id, error=str(exc))
    limit = timeout_of(record, call.task, settings)
    try:
        value = await _invoke(call, job, limit, pool, deadlines)
    except TimeoutError:
        job.context.mark_cancelled()
        late = TimeoutError(f"task exceeded its timeout of {limit:g}s")
        return failed(app, settings, job, worker_id, late, tb=None)
    except asyncio.CancelledError:
        raise
    except BaseException as exc:
        return failed(app, settings, job, worker_id, exc, tb=user_traceback(exc))
    try:
        result = app.serializer.dumps(value)
    except SerializationError as exc:
        error = f"SerializationError: result of {record.task} is {exc}"
        return _outcome(job, OutcomeKind.DEAD, worker_id, error=error)
    return _outcome(job, OutcomeKind.COMPLETED, worker_id, result=result)


async def _invoke(
    call: Call,
    job: Running,
    limit: float | None,
    pool: concurrent.futures.ThreadPoolExecutor,
    deadlines: Deadlines,
) -> Any:
    if call.task.is_async:
        if limit is None:
            return await call.fn(*call.args, **call.kwargs)
        slot = deadlines.add(job, limit)
        try:
            return await call.fn(*call.args, **call.kwargs)
        except asyncio.CancelledError:
            runner = asyncio.current_task()
            if job.expired and runner is not None and runner.uncancel() == 0:
                raise TimeoutError from None
            raise
        finally:
            deadlines.discard(job, slot)
    # A thread cannot be stopped from outside: on timeout the attempt fails, the job
    # context reads `cancelled`, and the worker keeps the slot until the thread returns.
    context = contextvars.copy_context()
    job.thread = pool.submit(context.run, functools.partial(call.fn, *call.args, **call.kwargs))
    return await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(job.thread)), limit)


def failed(
    app: Conveyor,
    settings: Settings,
    job: Running,
    worker_id: str,
    exc: BaseException,
    tb: str | None,
) -> Outcome:
    """Map a failed attempt: Fail goes dead, anything else retries while attempts remain."""
    record = job.record
    if isinstance(exc, Fail):
        return _outcome(job, OutcomeKind.DEAD, worker_id, error=f"Fail: {exc.reason}", tb=tb)
    if isinstance(exc, Retry) and not exc.count:
        snoozed = _outcome(job, OutcomeKind.SNOOZED, worker_id)
        delay = exc.delay if exc.delay is not None else settings.retry_backoff
        snoozed.retry_at = app.clock.now() + delay
        return snoozed
    error = f"{type(exc).__name__}: {exc}"
    if record.attempt >= record.max_attempts:
        return _outcome(job, OutcomeKind.DEAD, worker_id, error=error, tb=tb)
    if isinstance(exc, Retry) and exc.delay is not None:
        delay = exc.delay
    else:
        delay = backoff_delay(record.attempt, settings.retry_backoff, settings.retry_backoff_max)
    outcome = _outcome(job, OutcomeKind.RETRY, worker_id, error=error, tb=tb)
    outcome.retry_at = app.clock.now() + delay
    return outcome


_INTERNAL = (
    *tuple(os.path.dirname(module.__file__ or "") + os.sep for module in (asyncio, concurrent.futures)),
    os.path.dirname(__file__) + os.sep,
)


def user_traceback(exc: BaseException) -> str:
    """The traceback from the task's own frames down: worker and asyncio frames are noise."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename.startswith(_INTERNAL):
        tb = tb.tb_next
    return "".join(traceback.format_exception(type(exc), exc, tb or exc.__traceback__))


def released(job: Running, worker_id: str) -> Outcome:
    """Hand the job back untouched (shutdown): it runs again without spending an attempt."""
    return _outcome(job, OutcomeKind.RELEASED, worker_id)


def _outcome(
    job: Running,
    kind: OutcomeKind,
    worker_id: str,
    *,
    result: str | None = None,
    error: str | None = None,
    tb: str | None = None,
) -> Outcome:
    progress, logs = job.context.drain()
    return Outcome(
        job_id=job.id,
        token=job.token,
        kind=kind,
        result=result,
        error=error,
        traceback=tb,
        worker=worker_id,
        progress=progress,
        logs=logs,
    )
