"""Every exception Conveyor raises, and the two that tasks raise to steer their job."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from conveyor.job import Job


class ConveyorError(Exception):
    """Base class of every error Conveyor raises."""


class ConfigError(ConveyorError):
    """A setting, URL or option has a value Conveyor cannot use."""


class SerializationError(ConveyorError):
    """Arguments or a result cannot be turned into the stored format."""


class PayloadTooLarge(ConveyorError):
    """A job's encoded arguments exceed the configured maximum."""


class JobNotFound(ConveyorError, LookupError):
    """No job with that id exists (it was never enqueued, or it was purged)."""


class BackendUnavailable(ConveyorError):
    """The storage engine could not be reached or answered with an error."""


class JobFailed(ConveyorError):
    """The job ended `dead` or `cancelled`; `error` carries its last error."""

    def __init__(self, job: Job[Any], message: str) -> None:
        super().__init__(message)
        self.job = job
        self.error = job.error


class Retry(Exception):
    """Raised inside a task: try this job again after `delay` seconds (default: backoff).

    With `count=False` the job is snoozed: it runs again later without spending an
    attempt, and nothing is added to its error history.
    """

    def __init__(self, delay: float | None = None, reason: str = "", *, count: bool = True) -> None:
        if delay is not None and delay < 0:
            raise ValueError(f"Retry delay must be >= 0 seconds, got {delay}")
        super().__init__(reason or ("snoozed" if not count else "retry requested"))
        self.delay = delay
        self.count = count


class Snooze(Retry):
    """Raised inside a task: run this job again after `delay` seconds, spending no attempt."""

    def __init__(self, delay: float, reason: str = "") -> None:
        super().__init__(delay, reason or f"snoozed for {delay:g}s", count=False)


class Fail(Exception):
    """Raised inside a task: the job goes straight to `dead`, whatever retries remain."""

    def __init__(self, reason: str = "failed") -> None:
        super().__init__(reason)
        self.reason = reason
