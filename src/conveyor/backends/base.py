"""The backend protocol: the narrow waist between Conveyor and a storage engine.

Every operation is atomic in its engine and batch-first (a single job is a
batch of one). Every state change on a claimed job is fenced by its lease
token: a worker that lost a job's lease gets `Fence.LEASE_LOST`, never a
silent overwrite. No engine object (connection, cursor, client) crosses here.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import time
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, NamedTuple, ParamSpec, TypeVar, cast

from conveyor.clock import SYSTEM_CLOCK, Clock
from conveyor.errors import BackendUnavailable, ConfigError, ConveyorError
from conveyor.events import Entry, JobEvent
from conveyor.job import TERMINAL_STATES, JobRecord, JobState, LogEntry
from conveyor.limits import QueueLimits

P = ParamSpec("P")
T = TypeVar("T")

LEASE_EXPIRED = "LeaseExpired: the worker holding this job stopped renewing its lease"
WORKER_SEEN_SECONDS = 60.0  # `workers()` lists those that reported within this window


@dataclass(slots=True)
class NewJob:
    """A job to store; `payload` is already serialized."""

    task: str
    queue: str
    payload: str
    priority: int = 0
    max_attempts: int = 1
    retries: int = 0
    timeout: float | None = None
    run_at: float | None = None
    unique_key: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    # Flows: `parent` is the index, within the same enqueue batch, of the job that waits
    # for this one; `waiting` marks a job that has children (it starts `waiting`);
    # `flow` is its flow options as JSON, stored as given.
    parent: int | None = None
    waiting: bool = False
    flow: str | None = None
    # With a unique key: a job with the key that completed less than `unique_for` seconds
    # ago is returned as well; `debounce` makes a later enqueue replace the payload and
    # run_at of a matching job that has not started (it is returned, not created).
    unique_for: float | None = None
    debounce: bool = False
    limit_key: str | None = None  # the value its task's per-key limit counts it by

    def initial_state(self, run_at: float, now: float) -> JobState:
        if self.waiting:
            return JobState.WAITING
        return JobState.SCHEDULED if run_at > now else JobState.QUEUED

    def to_record(self, job_id: str, now: float, links: Links | None = None) -> JobRecord:
        """The record this job has the moment it is stored at `now`; `links` gives its
        parent and children ids when it belongs to a flow."""
        run_at = now if self.run_at is None else self.run_at
        parent, children = links if links is not None else (None, [])
        return JobRecord(
            id=job_id,
            task=self.task,
            queue=self.queue,
            state=self.initial_state(run_at, now),
            payload=self.payload,
            priority=self.priority,
            max_attempts=self.max_attempts,
            retries=self.retries,
            timeout=self.timeout,
            run_at=run_at,
            enqueued_at=now,
            unique_key=self.unique_key,
            meta=dict(self.meta),
            parent_id=parent,
            children=children,
            flow=self.flow,
            limit_key=self.limit_key,
        )


Links = tuple[str | None, list[str]]  # (parent id, children ids) of one job in a batch


def flow_links(jobs: Sequence[NewJob], ids: Sequence[str]) -> list[Links] | None:
    """Each job's (parent id, children ids) once the batch's ids are known; None when
    the batch holds no flow, so engines skip the linking step."""
    if all(job.parent is None for job in jobs):
        return None
    links: list[Links] = [(None, []) for _ in jobs]
    for index, job in enumerate(jobs):
        if job.parent is not None:
            links[index] = (ids[job.parent], links[index][1])
            links[job.parent][1].append(ids[index])
    return links


@dataclass(frozen=True, slots=True)
class Resumption:
    """What becomes of a waiting job: run it (error None) or kill it with `error`."""

    job_id: str
    error: str | None = None


class Enqueued(NamedTuple):
    """Where a NewJob ended up: `created` is False when a unique key matched a live job."""

    id: str
    created: bool


class OutcomeKind(StrEnum):
    """How an attempt ended, from the worker's side."""

    COMPLETED = "completed"
    RETRY = "retry"
    DEAD = "dead"
    RELEASED = "released"
    SNOOZED = "snoozed"


@dataclass(slots=True)
class Outcome:
    """The result of one attempt, to be persisted by `finish`."""

    job_id: str
    token: str
    kind: OutcomeKind
    result: str | None = None
    error: str | None = None
    traceback: str | None = None
    retry_at: float | None = None
    worker: str | None = None
    progress: float | None = None
    logs: list[LogEntry] = field(default_factory=list)


@dataclass(slots=True)
class Renewal:
    """A lease to extend, with progress and log lines written since the last renewal."""

    job_id: str
    token: str
    progress: float | None = None
    logs: list[LogEntry] = field(default_factory=list)


class Fence(StrEnum):
    """Answer to a fenced write: applied, or refused because the lease is gone."""

    OK = "ok"
    LEASE_LOST = "lease_lost"


@dataclass(frozen=True, slots=True)
class JobQuery:
    """Filters for listing jobs; newest first."""

    queue: str | None = None
    state: JobState | None = None
    task: str | None = None
    limit: int = 50
    offset: int = 0


@dataclass(slots=True)
class WorkerInfo:
    """A worker's self-report, refreshed with every maintenance pass."""

    id: str
    host: str
    pid: int
    queues: tuple[str, ...]
    concurrency: int
    started_at: float
    last_seen: float = 0.0
    active: int = 0
    processed: int = 0


class Backend(ABC):
    """One storage engine; thread-safe; every method may raise BackendUnavailable."""

    url: str
    prefix: str
    clock: Clock = SYSTEM_CLOCK
    # How many claims of one worker the engine serves well at once: a worker splits a
    # large claim (without limits) into this many, each from an engine thread of its own.
    claim_lanes: int = 1
    # Whether claim() itself takes back the jobs of an earlier claim whose reply was lost
    # (Redis, by the lease token it sent); else the worker asks for them (see Worker).
    reclaims_lost_claims: bool = False

    # -- producing ---------------------------------------------------------
    @abstractmethod
    def enqueue(self, jobs: Sequence[NewJob]) -> list[Enqueued]:
        """Store jobs atomically, in order; a live job's unique key returns that job
        (see NewJob for `unique_for` and `debounce`)."""

    @abstractmethod
    def enqueue_tick(self, schedule: str, tick: float, job: NewJob) -> str | None:
        """Store `job` for `schedule`'s `tick` unless that tick (or a later one) already
        has its job; the id when this call stored it. Atomic: of many schedulers racing
        for one tick, exactly one stores the job."""

    # -- working -----------------------------------------------------------
    @abstractmethod
    def claim(
        self,
        worker_id: str,
        queues: Sequence[str],
        limit: int,
        lease_seconds: float,
        limits: Mapping[str, QueueLimits] | None = None,
    ) -> list[JobRecord]:
        """Lease up to `limit` ready jobs, due scheduled ones included.

        `limits` (per queue) holds back jobs over a rate or concurrency limit, counted
        atomically with the claim; a claim that held any back returns a `Claimed` with
        `held_back` set.

        Paused queues are skipped. Queues are taken in the order given (the first is drained first); within a
        queue, higher priority first, then enqueue order. Each job's attempt is
        incremented and it carries a fresh `lease_token`.
        """

    @abstractmethod
    def extend_leases(self, renewals: Sequence[Renewal], lease_seconds: float) -> list[Fence]:
        """Push lease deadlines forward and store progress and logs; one Fence per renewal."""

    @abstractmethod
    def finish(self, outcomes: Sequence[Outcome]) -> list[Fence]:
        """Persist attempt outcomes, releasing their leases; one Fence per outcome."""

    @abstractmethod
    def recover_expired(self) -> list[str]:
        """Requeue (or kill, when out of attempts) jobs whose lease has expired."""

    @abstractmethod
    def wait_for_work(self, queues: Sequence[str], timeout: float) -> bool:
        """Block until work may be ready on `queues` (or a scheduled job falls due);
        paused queues do not count.

        Returns False on timeout. Spurious wake-ups are allowed; missed ones are not.
        """

    @abstractmethod
    def resume_waiting(self, resumptions: Sequence[Resumption]) -> list[bool]:
        """Move waiting jobs on: to `queued`, or to `dead` with the given error. True for
        each job this call moved; a job no longer waiting is left alone (False), so
        racing callers move it once."""

    # -- reading -----------------------------------------------------------
    @abstractmethod
    def get(self, ids: Sequence[str]) -> list[JobRecord | None]:
        """The records of `ids`, None for each unknown id."""

    @abstractmethod
    def list_jobs(self, query: JobQuery) -> list[JobRecord]:
        """Jobs matching `query`, newest first."""

    @abstractmethod
    def counts(self) -> dict[str, dict[JobState, int]]:
        """Number of jobs per queue and state."""

    @abstractmethod
    def logs(self, job_id: str) -> list[LogEntry]:
        """A job's log lines, oldest first."""

    # -- events ------------------------------------------------------------
    @abstractmethod
    def publish(self, events: Sequence[Entry]) -> None:
        """Append a batch of events to the engine's event log, as one write (it keeps
        the newest events.KEEP batches); a JobEvents group reads back as its jobs' events."""

    @abstractmethod
    def event_cursor(self) -> str:
        """A cursor just after the newest event: reading from it returns only later ones."""

    @abstractmethod
    def read_events(self, cursor: str, timeout: float) -> tuple[list[JobEvent], str]:
        """Events after `cursor`, oldest first (up to 50 batches), and the cursor after
        them; blocks up to `timeout` seconds while there are none."""

    # -- operating ---------------------------------------------------------
    @abstractmethod
    def cancel(self, ids: Sequence[str]) -> list[bool]:
        """Cancel unfinished jobs; True for each one this call cancelled."""

    @abstractmethod
    def retry(self, ids: Sequence[str]) -> list[bool]:
        """Requeue dead or cancelled jobs with a fresh retry budget; True if requeued."""

    @abstractmethod
    def set_paused(self, queues: Sequence[str], paused: bool) -> None:
        """Pause or resume queues: no worker claims from a paused queue; its jobs wait."""

    @abstractmethod
    def paused(self) -> list[str]:
        """The paused queues, by name."""

    @abstractmethod
    def purge(
        self,
        *,
        queue: str | None = None,
        states: Sequence[JobState] = (),
        older_than: float | None = None,
        limit: int | None = None,
    ) -> int:
        """Delete finished jobs (and their logs), at most `limit` per state, the longest
        finished first (within each queue); returns how many were deleted. Batches keep
        the engine's write lock short."""

    @abstractmethod
    def delete(self, ids: Sequence[str]) -> int:
        """Delete jobs whatever their state; returns how many existed."""

    @abstractmethod
    def report_worker(self, info: WorkerInfo | None, *, remove: str | None = None) -> None:
        """Record a worker's heartbeat, or remove a worker that stopped."""

    @abstractmethod
    def workers(self) -> list[WorkerInfo]:
        """Workers that reported within WORKER_SEEN_SECONDS, newest heartbeat first."""

    @abstractmethod
    def ping(self) -> None:
        """Raise BackendUnavailable if the engine cannot be reached."""

    @abstractmethod
    def close(self) -> None:
        """Release connections; the backend is unusable afterwards."""

    # -- provided ----------------------------------------------------------
    def enqueue_payloads(self, template: NewJob, payloads: Sequence[str]) -> list[str]:
        """Store one job per payload, every other field from `template` (which has no
        unique key), atomically and in order; returns their ids. Engines override this
        when a batch of look-alike jobs has a cheaper path than one NewJob each."""
        jobs = [
            NewJob(template.task, template.queue, payload, template.priority, template.max_attempts,
                   template.retries, template.timeout, template.run_at, None, template.meta)
            for payload in payloads
        ]  # fmt: skip
        return [stored.id for stored in self.enqueue(jobs)]

    async def aenqueue(self, jobs: Sequence[NewJob]) -> list[Enqueued]:
        """`enqueue` awaited from async code, in a thread by default. An engine with an
        async driver overrides it to await on the running loop: a thread hop costs two
        thread switches, 60-85 us on this project's VM."""
        return await asyncio.to_thread(self.enqueue, jobs)

    def enqueue_on(self, connection: Any, jobs: Sequence[NewJob]) -> list[Enqueued]:
        """Store jobs on the application's own database connection, inside whatever
        transaction it has open; only an engine in the application's database can."""
        from conveyor.backends import redact_url

        raise ConfigError(
            f"transactional enqueue needs the PostgreSQL engine; this app uses {redact_url(self.url)}"
        )

    def async_work(self) -> AsyncWork | None:
        """A worker's native async path for claiming and finishing, or None (default):
        the worker then calls claim and finish from its engine threads. Called inside
        the worker's running event loop, which the returned object belongs to."""
        return None

    def preflight(self) -> None:  # noqa: B027 - an optional hook: most engines have nothing to check
        """Refuse (ConfigError) to run workers on an engine set up to lose jobs; default: nothing."""

    def warm_up(self) -> None:  # noqa: B027 - an optional hook: most engines open on first use
        """Open the calling thread's connection and load what claims and finishes need.

        A worker calls it on each of its engine threads before it claims, so its first
        claim costs what later ones do (default: nothing)."""

    def maintain(self) -> None:  # noqa: B027 - an optional hook: most engines need no upkeep
        """Engine upkeep that any worker may run off the hot path (default: nothing)."""

    def server_cpu(self) -> float | None:
        """CPU seconds the engine's server has used so far, where it tells (Redis: INFO
        cpu), else None. `conveyor bench` reports the server's CPU per job from it."""
        return None

    def wait_finished(self, job_id: str, deadline: float | None) -> JobRecord | None:
        """The job's record once it is finished, or as it is at `deadline` (monotonic).

        Engines with notifications override this; the default polls with a
        backoff from 2 ms to 100 ms, so short jobs answer fast and long waits stay cheap.
        """
        pause = 0.002
        while True:
            record = self.get([job_id])[0]
            if record is None or record.state in TERMINAL_STATES:
                return record
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    return record
                pause = min(pause, left)
            time.sleep(pause)
            pause = min(pause * 2, 0.1)


class AsyncWork(ABC):
    """Claim and finish awaited on the worker's event loop, on the engine's async driver:
    no thread hop per call. The same semantics as Backend.claim (without limits, which
    take the threaded path) and Backend.finish, errors included (BackendUnavailable)."""

    @abstractmethod
    async def claim(
        self, worker_id: str, queues: Sequence[str], limit: int, lease_seconds: float
    ) -> list[JobRecord]:
        """As Backend.claim, for queues without rate or concurrency limits."""

    @abstractmethod
    async def finish(self, outcomes: Sequence[Outcome]) -> list[Fence]:
        """As Backend.finish."""

    async def warm_up(self) -> None:  # noqa: B027 - optional, as Backend.warm_up
        """As Backend.warm_up, for this path's connections (default: nothing)."""

    @abstractmethod
    async def aclose(self) -> None:
        """Close its connections; the object is unusable afterwards."""


def purgeable(states: Sequence[JobState]) -> list[JobState]:
    """The finished states among `states` (every finished state when none is given), in
    one fixed order, so every engine purges them alike."""
    return [s for s in _FINISHED if s in (states or _FINISHED)]


_FINISHED = (JobState.COMPLETED, JobState.DEAD, JobState.CANCELLED)


def read_stored(read: Callable[[Sequence[Any]], JobRecord], row: Sequence[Any], job_id: str) -> JobRecord:
    """A stored job's record, to show or wait on it: a row `read` fails on (a field
    edited by hand, a value another version wrote) raises ConveyorError naming the job,
    where the reader's own KeyError or AttributeError used to surface. Claims store such
    a job dead instead (see Claimed.read)."""
    try:
        return read(row)
    except Exception as exc:
        raise ConveyorError(
            f"job {job_id}: its stored row cannot be read ({type(exc).__name__}: {exc}); "
            "correct the field, or delete the job"
        ) from exc


def translate_errors(
    errors: type[Exception] | tuple[type[Exception], ...],
    where: Callable[[Any], str],
    explain: Callable[[Exception], str] = str,
) -> Callable[[Callable[P, T]], Callable[P, T]]:
    """A method decorator: the engine's `errors` become BackendUnavailable, prefixed with
    `where(backend)` (which names the file or server, never a password); `explain` words
    the error (by default, as the driver did)."""

    def decorate(method: Callable[P, T]) -> Callable[P, T]:
        if inspect.iscoroutinefunction(method):
            return cast(Callable[P, T], _translated_async(cast(Any, method), errors, where, explain))

        @functools.wraps(method)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
            try:
                return method(*args, **kwargs)
            except errors as exc:
                raise BackendUnavailable(f"{where(args[0])}: {explain(exc)}") from exc

        return wrapper

    return decorate


def _translated_async(
    method: Callable[P, Awaitable[T]],
    errors: type[Exception] | tuple[type[Exception], ...],
    where: Callable[[Any], str],
    explain: Callable[[Exception], str],
) -> Callable[P, Awaitable[T]]:
    @functools.wraps(method)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return await method(*args, **kwargs)
        except errors as exc:
            raise BackendUnavailable(f"{where(args[0])}: {explain(exc)}") from exc

    return wrapper
