"""`current_job()`: what a running task knows about its own job."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from contextvars import ContextVar
from typing import Any

from conveyor.job import JobRecord, LogEntry

_current: ContextVar[JobContext] = ContextVar("conveyor_current_job")


def current_job() -> JobContext:
    """The job the calling task is running; RuntimeError outside a task."""
    try:
        return _current.get()
    except LookupError:
        raise RuntimeError("current_job() was called outside a running Conveyor task") from None


class JobContext:
    """A running job's own view: ids, attempt, logging, progress and heartbeat.

    Logs and progress are buffered here and written by the worker in batches
    (with the next lease renewal or the job's finish), so a task that logs in a
    tight loop costs no round trip per line.
    """

    def __init__(self, record: JobRecord, request_heartbeat: Callable[[], None]) -> None:
        self._record = record
        self._request_heartbeat = request_heartbeat
        self._lock = threading.Lock()
        self._logs: list[LogEntry] = []
        self._progress: float | None = None
        self._cancelled = False  # written by the worker's loop, read by the task: a bool is enough
        self._child_results: list[Any] = []

    @property
    def id(self) -> str:
        return self._record.id

    @property
    def task(self) -> str:
        return self._record.task

    @property
    def queue(self) -> str:
        return self._record.queue

    @property
    def attempt(self) -> int:
        """This attempt's number, counting from 1."""
        return self._record.attempt

    @property
    def max_attempts(self) -> int:
        return self._record.max_attempts

    @property
    def meta(self) -> dict[str, Any]:
        return self._record.meta

    @property
    def parent_id(self) -> str | None:
        """The flow job waiting for this one, if any."""
        return self._record.parent_id

    def child_results(self) -> list[Any]:
        """The results of the jobs this one waited for, in the order the flow gave them.

        Under `on_child_failure="ignore"` failed children are left out; under
        "continue" each has a `ChildFailed` in its place. Empty for a job with no children.
        """
        return list(self._child_results)

    def set_child_results(self, values: list[Any]) -> None:
        """The worker hands over the children's results before the task runs."""
        self._child_results = values

    @property
    def cancelled(self) -> bool:
        """True once the worker gave up on this attempt (timeout, lost lease, shutdown)."""
        return self._cancelled

    def log(self, message: str, **fields: Any) -> None:
        """Append a line to the job's log, with optional structured fields."""
        with self._lock:
            self._logs.append(LogEntry(at=time.time(), message=str(message), fields=fields))

    def progress(self, value: float) -> None:
        """Record progress as a fraction from 0.0 to 1.0."""
        number = float(value)
        if math.isnan(number) or not 0.0 <= number <= 1.0:
            raise ValueError(f"progress must be between 0.0 and 1.0, got {value!r}")
        with self._lock:
            self._progress = number

    def heartbeat(self) -> None:
        """Renew this job's lease now, rather than at the next interval."""
        self._request_heartbeat()

    def drain(self) -> tuple[float | None, list[LogEntry]]:
        """Progress and log lines written since the last drain (the worker calls this)."""
        with self._lock:
            progress, logs = self._progress, self._logs
            self._progress, self._logs = None, []
        return progress, logs

    def mark_cancelled(self) -> None:
        self._cancelled = True


def bind(context: JobContext) -> None:
    """Make `context` the current job in the calling context."""
    _current.set(context)
