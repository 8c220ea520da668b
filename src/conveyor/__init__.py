"""Conveyor: background jobs for Python, from embedded SQLite to Redis and PostgreSQL."""

from conveyor.app import Conveyor
from conveyor.context import JobContext, current_job
from conveyor.errors import (
    BackendUnavailable,
    ConfigError,
    ConveyorError,
    Fail,
    JobFailed,
    JobNotFound,
    PayloadTooLarge,
    Retry,
    SerializationError,
    Snooze,
)
from conveyor.flows import ChildFailed, chain, flow, group
from conveyor.job import Job, JobState
from conveyor.task import Signature, Task

__version__ = "0.1.0"

__all__ = [
    "BackendUnavailable",
    "ChildFailed",
    "ConfigError",
    "Conveyor",
    "ConveyorError",
    "Fail",
    "Job",
    "JobContext",
    "JobFailed",
    "JobNotFound",
    "JobState",
    "PayloadTooLarge",
    "Retry",
    "SerializationError",
    "Signature",
    "Snooze",
    "Task",
    "chain",
    "current_job",
    "flow",
    "group",
]
