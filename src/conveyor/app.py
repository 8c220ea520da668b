"""`Conveyor`: the application object that tasks, producers and workers share."""

from __future__ import annotations

import asyncio
import contextvars
import functools
import threading
from collections.abc import Callable, Coroutine, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar, overload

from conveyor.backends import Backend, open_backend
from conveyor.backends.base import Enqueued, JobQuery, Links, NewJob, flow_links
from conveyor.clock import SYSTEM_CLOCK, Clock
from conveyor.errors import (
    BackendUnavailable,
    ConfigError,
    ConveyorError,
    JobNotFound,
    PayloadTooLarge,
    SerializationError,
)
from conveyor.events import EventPublisher, EventStream, JobEvent
from conveyor.job import TERMINAL_STATES, Job, JobRecord, JobState
from conveyor.limits import KeyOf, Limit, QueueLimits, TaskLimit, key_function, make_limit
from conveyor.scheduler.cron import Missed, Schedule
from conveyor.serializer import JSONSerializer, Serializer, decode_call, encode_call
from conveyor.settings import Settings, validate_queue
from conveyor.task import EMPTY_MAPPING, EMPTY_OPTIONS, JobOptions, Signature, Task, parse_options

if TYPE_CHECKING:
    from conveyor.flows import _Plan
    from conveyor.worker import Worker

P = ParamSpec("P")
R = TypeVar("R")

# The caller's database connection while inside `app.transaction(conn)`.
_TRANSACTION: contextvars.ContextVar[Any] = contextvars.ContextVar("conveyor_transaction", default=None)


class Conveyor:
    """One application: its engine, its tasks and its settings.

    `Conveyor()` reads CONVEYOR_URL (default sqlite:///conveyor.db); nothing
    connects until the first enqueue, read or worker start.
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        prefix: str | None = None,
        serializer: Serializer | None = None,
        clock: Clock | None = None,
        **settings: Any,
    ) -> None:
        self.settings = Settings.load({"url": url, "prefix": prefix, **settings})
        self.serializer: Serializer = serializer or JSONSerializer()
        self.clock = clock or SYSTEM_CLOCK
        self._tasks: dict[str, Task[Any, Any]] = {}
        self._schedules: dict[str, Schedule] = {}
        self._queue_limits: dict[str, Limit] = {}
        self._publisher: EventPublisher | None = None
        self._backend: Backend | None = None
        self._lock = threading.Lock()
        # Holding the options objects keeps their ids from being reused while cached.
        self._resolutions: dict[tuple[str, int, int], tuple[JobOptions, JobOptions, _Resolved]] = {}

    def __repr__(self) -> str:
        from conveyor.backends import redact_url

        return f"<Conveyor {redact_url(self.settings.url)} prefix={self.settings.prefix}>"

    def __enter__(self) -> Conveyor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def backend(self) -> Backend:
        """The engine, opened on first use."""
        if self._backend is None:
            with self._lock:
                if self._backend is None:
                    self._backend = open_backend(
                        self.settings.url, prefix=self.settings.prefix, clock=self.clock
                    )
        return self._backend

    def configure(self, **settings: Any) -> None:
        """Change settings (url, prefix, ...) before the engine is opened."""
        if self._backend is not None and {"url", "prefix"} & set(settings):
            raise ConfigError("url and prefix cannot change once the engine is open")
        self.settings = self.settings.with_(**settings)
        self._resolutions.clear()

    def close(self) -> None:
        """Write buffered events, then close the engine's connections."""
        with self._lock:
            if self._publisher is not None:
                self._publisher.close()
                self._publisher = None
            if self._backend is not None:
                self._backend.close()
                self._backend = None

    # -- events ------------------------------------------------------------
    def publisher(self) -> EventPublisher:
        """The process's event publisher, started on first use."""
        backend = self.backend  # outside the lock: opening the engine takes it
        with self._lock:
            if self._publisher is None:
                self._publisher = EventPublisher(backend)
            return self._publisher

    def emit(self, events: list[JobEvent]) -> None:
        """Publish events unless this app has event publishing off (`events=False`)."""
        if events and self.settings.events:
            self.publisher().emit(events)

    def events(
        self,
        *,
        queue: str | None = None,
        kinds: Iterable[str] | None = None,
        after: str | None = None,
        idle: float | None = None,
    ) -> EventStream:
        """Follow job events from every process: `for e in app.events()` or `async for`.

        Starts with the next event (or after `after`, a saved `stream.cursor`); `queue`
        and `kinds` filter; `idle` stops after that many quiet seconds.
        """
        return EventStream(self.backend, after=after, queue=queue, kinds=kinds, idle=idle)

    @contextmanager
    def transaction(self, connection: Any) -> Iterator[None]:
        """Enqueues in this block join `connection`'s open transaction (PostgreSQL only):
        the jobs exist, and wake workers, when it commits; a rollback leaves no job.

        `connection` is a psycopg 3 connection: SQLAlchemy's is
        `conn.connection.driver_connection`, Django's `django.db.connection.connection`.
        """
        self.backend.enqueue_on(connection, [])  # another engine: ConfigError now, not later
        if not callable(getattr(connection, "cursor", None)):
            raise ConfigError(
                f"app.transaction() needs a psycopg 3 connection, got {type(connection).__name__}"
            )
        token = _TRANSACTION.set(connection)
        try:
            yield
        finally:
            _TRANSACTION.reset(token)

    def _store(self, news: Sequence[NewJob]) -> list[Enqueued]:
        """Store jobs through the engine, or on the caller's connection in `transaction()`."""
        connection = _TRANSACTION.get()
        if connection is None:
            return self.backend.enqueue(news)
        return self.backend.enqueue_on(connection, news)

    # -- tasks -------------------------------------------------------------
    @overload
    def task(self, fn: Callable[P, Coroutine[Any, Any, R]], /) -> Task[P, R]: ...

    @overload
    def task(self, fn: Callable[P, R], /) -> Task[P, R]: ...

    @overload
    def task(
        self,
        fn: None = None,
        /,
        *,
        name: str | None = None,
        queue: str | None = None,
        retries: int | None = None,
        timeout: float | None = None,
        priority: int | None = None,
        rate_limit: str | None = None,
        concurrency_limit: int | None = None,
        limit_key: str | KeyOf | None = None,
    ) -> Callable[[Callable[P, Any]], Task[P, Any]]: ...

    def task(
        self,
        fn: Callable[P, Any] | None = None,
        /,
        *,
        name: str | None = None,
        queue: str | None = None,
        retries: int | None = None,
        timeout: float | None = None,
        priority: int | None = None,
        rate_limit: str | None = None,
        concurrency_limit: int | None = None,
        limit_key: str | KeyOf | None = None,
    ) -> Task[P, Any] | Callable[[Callable[P, Any]], Task[P, Any]]:
        """Register a sync or async function as a task: `@app.task` or `@app.task(...)`.

        rate_limit ("10/s", "100/m", "20/10s") and concurrency_limit hold across all
        workers, in the task's queue; with limit_key (an argument or meta name, or a
        function of (args, kwargs, meta)) they count per key value instead.
        """
        defaults = parse_options(queue=queue, retries=retries, timeout=timeout, priority=priority)
        task_limit = make_limit(rate_limit, concurrency_limit, "task")
        key_of = None if limit_key is None else key_function(limit_key)
        if key_of is not None and task_limit is None:
            raise ConfigError("limit_key needs a rate_limit or concurrency_limit to count by it")

        def register(function: Callable[P, Any]) -> Task[P, Any]:
            if not callable(function):
                raise TypeError(f"@app.task needs a function, got {function!r}")
            task_name = name or f"{function.__module__}.{function.__qualname__}"
            registered = self._tasks.get(task_name)
            if registered is not None and _code_of(registered.fn) != _code_of(function):
                raise ConfigError(f"task name {task_name!r} is already registered to another function")
            task: Task[P, Any] = Task(self, task_name, function, defaults)
            task.limit, task.key_of = task_limit, key_of
            self._tasks[task_name] = task
            self._resolutions.clear()
            return task

        return register(fn) if fn is not None else register

    def limit(self, queue: str, *, rate: str | None = None, concurrency: int | None = None) -> None:
        """Limit a whole queue across all workers: at most `rate` job starts ("100/s")
        and at most `concurrency` jobs running at once."""
        name = validate_queue(queue)
        found = make_limit(rate, concurrency, f"queue {name!r}")
        if found is None:
            raise ConfigError(f"app.limit({name!r}) needs rate= or concurrency=")
        self._queue_limits[name] = found

    def limits_for(self, queues: Sequence[str]) -> dict[str, QueueLimits]:
        """The limits a worker on `queues` hands to each claim (only limited queues)."""
        out = {}
        for queue in queues:
            tasks = {
                t.name: TaskLimit(t.limit, t.key_of is not None)
                for t in self._tasks.values()
                if t.limit is not None and t.queue == queue
            }
            if tasks or queue in self._queue_limits:
                out[queue] = QueueLimits(self._queue_limits.get(queue), tasks)
        return out

    def periodic(
        self,
        cron: str | None = None,
        /,
        *,
        every: timedelta | float | None = None,
        tz: str = "UTC",
        missed: Missed = "skip",
        name: str | None = None,
        queue: str | None = None,
        retries: int | None = None,
        timeout: float | None = None,
        priority: int | None = None,
        args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
    ) -> Callable[[Callable[P, Any]], Task[P, Any]]:
        """Register a task that runs by itself: `@app.periodic("*/5 * * * *", tz="Europe/Paris")`
        or `@app.periodic(every=timedelta(seconds=10))`. Workers run the scheduler; each tick
        produces exactly one job however many workers run. `missed="run_once"` runs one job
        for ticks missed while no worker ran; "skip" (the default) drops them."""
        seconds = every.total_seconds() if isinstance(every, timedelta) else every
        register = self.task(name=name, queue=queue, retries=retries, timeout=timeout, priority=priority)

        def schedule(function: Callable[P, Any]) -> Task[P, Any]:
            task = register(function)
            self._schedules[task.name] = Schedule(
                name=task.name, task=task.name, cron=cron, every=seconds, tz=tz, missed=missed,
                args=tuple(args), kwargs=dict(kwargs or {}),
            )  # fmt: skip
            return task

        return schedule

    @property
    def schedules(self) -> list[Schedule]:
        """Registered periodic schedules."""
        return list(self._schedules.values())

    def tick_job(self, schedule: Schedule, tick: float) -> NewJob:
        """The job a schedule's tick enqueues; its meta names the schedule and the tick."""
        call = Signature(schedule.task, schedule.args, schedule.kwargs)
        opts = self._resolved(call, self._tasks[schedule.task].defaults, tick)
        payload = encode_call(self.serializer, schedule.task, schedule.args, schedule.kwargs)
        meta = {**opts.meta, "schedule": schedule.name, "tick": tick}
        return NewJob(schedule.task, opts.queue, payload, opts.priority, opts.retries + 1, opts.retries,
                      opts.timeout, None, None, meta)  # fmt: skip

    @property
    def tasks(self) -> dict[str, Task[Any, Any]]:
        """Registered tasks by name."""
        return dict(self._tasks)

    def registered(self, name: str) -> Task[Any, Any] | None:
        """The task registered under `name` in this process, if any (no copy, unlike `tasks`)."""
        return self._tasks.get(name)

    def ref(self, name: str) -> Task[..., Any]:
        """The task called `name`: the registered one, or a code-less stand-in to enqueue by name."""
        if not isinstance(name, str) or not name:
            raise ConfigError(f"task name must be a non-empty string, got {name!r}")
        return self._tasks.get(name) or Task(self, name, None, JobOptions())

    def enqueue(self, name: str, *args: Any, **kwargs: Any) -> Job[Any]:
        """Enqueue a task by name; the producer needs no task code."""
        return self.ref(name).enqueue(*args, **kwargs)

    async def aenqueue(self, name: str, *args: Any, **kwargs: Any) -> Job[Any]:
        """`enqueue` by name from async code."""
        return await self.ref(name).aenqueue(*args, **kwargs)

    def submit_many(
        self, task: str, defaults: JobOptions, options: JobOptions, items: Iterable[Any]
    ) -> list[Job[Any]]:
        """Bulk enqueue of one task's calls with shared options: the engine receives a
        template and the encoded payloads, so no per-job Signature or NewJob is built."""
        calls = items if isinstance(items, list) else list(items)
        registered = self._tasks.get(task)
        keyed = registered is not None and registered.key_of is not None  # each job has its key
        plain = options.unique_key is None and _TRANSACTION.get() is None and not keyed
        payloads = self._encode_all(task, calls) if plain else None
        if payloads is None:  # signatures, a unique key, a limit key or a transaction: the general path
            return self.submit([_signature(task, c, options) for c in calls], defaults)
        now = self.clock.now()
        opts = self._resolved(Signature(task, (), EMPTY_MAPPING, options), defaults, now)
        template = NewJob(task, opts.queue, "", opts.priority, opts.retries + 1, opts.retries,
                          opts.timeout, opts.run_at, None, opts.meta)  # fmt: skip
        ids = self.backend.enqueue_payloads(template, payloads)
        if ids:  # one event for the batch: live views refresh counts, not 100,000 rows
            self.emit(
                [
                    JobEvent(
                        "enqueued", ids[0], template.queue, task, now, {"count": len(ids), "last": ids[-1]}
                    )
                ]
            )
        make = functools.partial(_stored_record, template, now=now)
        return [Job.lazy(self, functools.partial(make, p, i)) for p, i in zip(payloads, ids, strict=True)]

    def _encode_all(self, task: str, calls: list[Any]) -> list[str] | None:
        """Encode plain calls (args tuples, kwargs dicts); None if any item is something
        else. Errors name the task. Inlined, this loop saves ~2.5 us a job."""
        dumps = self.serializer.dumps
        payloads = []
        try:
            for call in calls:
                if isinstance(call, tuple | list):
                    payload = dumps([call, EMPTY_MAPPING])
                elif isinstance(call, Mapping):
                    payload = dumps([(), call])
                else:
                    return None
                self._check_size(task, payload)
                payloads.append(payload)
        except SerializationError as exc:
            raise SerializationError(f"arguments of task {task!r} are {exc}") from None
        return payloads

    def submit(self, calls: Sequence[Signature], defaults: JobOptions) -> list[Job[Any]]:
        """Store calls as jobs in one engine round trip; the common path of every enqueue."""
        now = self.clock.now()
        return self._submit([self._new_job(call, defaults, now) for call in calls], now)

    def submit_flow(self, plan: _Plan) -> list[Job[Any]]:
        """Store a flow's jobs, linked, in one atomic engine call; their handles in plan order."""
        now = self.clock.now()
        news = []
        for planned in plan.jobs:
            new = self._new_job(planned.call, self.ref(planned.call.task).defaults, now)
            if new.unique_key is not None:
                raise ConfigError(f"task {new.task!r} in a flow: unique_key cannot be used inside a flow")
            if planned.waiting and new.run_at is not None:
                raise ConfigError(
                    f"task {new.task!r} in a flow waits for other jobs, so it cannot have a delay or run_at"
                )
            new.parent, new.waiting, new.flow = planned.parent, planned.waiting, planned.flow_json
            news.append(new)
        return self._submit(news, now)

    def _new_job(self, call: Signature, defaults: JobOptions, now: float) -> NewJob:
        opts = self._resolved(call, defaults, now)
        payload = encode_call(self.serializer, call.task, call.args, call.kwargs)
        self._check_size(call.task, payload)
        new = NewJob(call.task, opts.queue, payload, opts.priority, opts.retries + 1, opts.retries,
                     opts.timeout, opts.run_at, opts.unique_key, opts.meta)  # fmt: skip
        new.unique_for, new.debounce = opts.unique_for, opts.debounce
        task = self._tasks.get(call.task)
        if task is not None and task.key_of is not None:
            value = task.key_of(call.args, call.kwargs, new.meta)
            new.limit_key = None if value is None else str(value)
        return new

    async def asubmit(self, calls: Sequence[Signature], defaults: JobOptions) -> list[Job[Any]]:
        """`submit` for async code: the engine call is awaited on the running loop where
        the engine can (see Backend.aenqueue), else made in a thread."""
        backend = self._backend
        if backend is None or _TRANSACTION.get() is not None:
            # Opening the engine connects, a blocking call; a transaction's connection is sync.
            return await asyncio.to_thread(self.submit, calls, defaults)
        now = self.clock.now()
        news = [self._new_job(call, defaults, now) for call in calls]
        stored = await backend.aenqueue(news)
        found = [s.id for s in stored if not s.created]  # a unique key's holder, to read
        existing = await asyncio.to_thread(self._existing, found) if found else {}
        return self._handles(news, stored, existing, now)

    def _submit(self, news: list[NewJob], now: float) -> list[Job[Any]]:
        stored = self._store(news)
        found = [s.id for s in stored if not s.created]
        return self._handles(news, stored, self._existing(found) if found else {}, now)

    def _existing(self, ids: list[str]) -> dict[str, JobRecord | None]:
        return dict(zip(ids, self.backend.get(ids), strict=True))

    def _handles(
        self, news: list[NewJob], stored: list[Enqueued], existing: dict[str, JobRecord | None], now: float
    ) -> list[Job[Any]]:
        """Handles for stored jobs (a unique key's holder as read), and their events."""
        links: Sequence[Links | None] = flow_links(news, [w.id for w in stored]) or [None] * len(news)
        jobs: list[Job[Any]] = []
        for new, where, link in zip(news, stored, links, strict=True):
            record = existing.get(where.id) if not where.created else None
            jobs.append(Job(self, record or functools.partial(new.to_record, where.id, now, link)))
        if self.settings.events and _TRANSACTION.get() is None:  # a rollback would make them lies
            created = [(n, w.id) for n, w in zip(news, stored, strict=True) if w.created]
            self.emit([JobEvent("enqueued", i, n.queue, n.task, now) for n, i in created])
        return jobs

    def _resolved(self, call: Signature, defaults: JobOptions, now: float) -> _Resolved:
        """Options with defaults applied, cached per (task, options object): enqueue calls
        share a handful of option sets, and resolving costs more than encoding the call."""
        key = (call.task, id(call.options), id(defaults))
        hit = self._resolutions.get(key)
        if hit is not None and hit[0] is call.options and hit[1] is defaults:
            return hit[2]
        resolved = self._resolve(call, defaults, now)
        if resolved.run_at is None:  # else run_at depends on now (delay, debounce)
            if len(self._resolutions) >= 1024:
                self._resolutions.clear()
            self._resolutions[key] = (call.options, defaults, resolved)
        return resolved

    def _resolve(self, call: Signature, defaults: JobOptions, now: float) -> _Resolved:
        registered = self._tasks.get(call.task)
        base = registered.defaults if registered is not None else defaults
        opts = base.merged(call.options)
        retries = self.settings.retries if opts.retries is None else opts.retries
        if (opts.unique_for or opts.debounce) and opts.unique_key is None:
            raise ConfigError(f"task {call.task!r}: unique_for and debounce need a unique_key")
        run_at = opts.run_at
        if opts.delay or opts.debounce:
            run_at = now + (opts.debounce or opts.delay or 0.0)
        return _Resolved(
            queue=opts.queue or "default",
            priority=opts.priority or 0,
            retries=retries,
            timeout=opts.timeout,
            run_at=run_at,
            unique_key=opts.unique_key,
            meta=dict(opts.meta),
            unique_for=opts.unique_for,
            debounce=opts.debounce is not None,
        )

    def _check_size(self, task: str, payload: str) -> None:
        limit = self.settings.max_payload_bytes
        # A str of n chars is at most 4n bytes in UTF-8: skip the encode when it cannot be over.
        if len(payload) * 4 > limit and len(payload.encode()) > limit:
            raise PayloadTooLarge(
                f"arguments of task {task!r} encode to {len(payload.encode())} bytes; the limit "
                f"is {limit} (max_payload_bytes / CONVEYOR_MAX_PAYLOAD_BYTES)"
            )

    def decode_payload(self, payload: str) -> tuple[list[Any], dict[str, Any]]:
        """A stored payload as (args, kwargs)."""
        return decode_call(self.serializer, payload)

    # -- reading and operating ---------------------------------------------
    def get_job(self, job_id: str) -> Job[Any]:
        """The job with this id; JobNotFound if there is none."""
        record = self.backend.get([str(job_id)])[0]
        if record is None:
            raise JobNotFound(f"no job with id {job_id!r}")
        return Job(self, record)

    def jobs(
        self,
        queue: str | None = None,
        state: JobState | str | None = None,
        task: str | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> list[Job[Any]]:
        """Jobs matching the filters, newest first."""
        query = JobQuery(
            queue=queue,
            state=_state(state),
            task=task,
            limit=_count("limit", limit),
            offset=_count("offset", offset, minimum=0),
        )
        return [Job(self, record) for record in self.backend.list_jobs(query)]

    def cancel(self, *job_ids: str) -> list[bool]:
        """Cancel unfinished jobs; True for each one this call cancelled. A flow's
        cancelled job takes its unfinished children with it, and its parent is settled
        (under the default policy a cancelled child fails the parent)."""
        from conveyor.flows import settle

        done = self.backend.cancel(list(job_ids))
        cancelled = [i for i, ok in zip(job_ids, done, strict=True) if ok]
        records = [r for r in self.backend.get(cancelled) if r is not None] if cancelled else []
        self.emit([JobEvent("cancelled", r.id, r.queue, r.task, r.finished_at or 0.0) for r in records])
        children = [c for r in records for c in r.children]
        if children:
            self.cancel(*children)
        parents = [r.parent_id for r in records if r.parent_id]
        if parents:
            settle(self.backend, parents)
        return done

    def delete(self, *job_ids: str) -> list[bool]:
        """Delete jobs and their logs, whatever their state; True for each that existed.
        An unfinished one is cancelled first, as `cancel` does it (a running one's worker
        stops it, a flow's unfinished children are cancelled, its parent is settled), so
        no flow waits on a job that is gone."""
        records, unreadable = self._read_for_delete([str(i) for i in job_ids])
        unfinished = [r.id for r in records if r is not None and r.state not in TERMINAL_STATES]
        if unfinished:
            self.cancel(*unfinished)
        existing = list(dict.fromkeys([r.id for r in records if r is not None] + unreadable))
        if existing:
            self.backend.delete(existing)
        return [r is not None or str(i) in unreadable for r, i in zip(records, job_ids, strict=True)]

    def _read_for_delete(self, ids: list[str]) -> tuple[list[JobRecord | None], list[str]]:
        """The jobs' records, and the ids of those whose stored row cannot be read (see
        read_stored): the error that names such a job tells the operator to delete it."""
        try:
            return self.backend.get(ids), []
        except BackendUnavailable:
            raise
        except ConveyorError:
            pass
        records: list[JobRecord | None] = []
        unreadable: list[str] = []
        for job_id in ids:
            try:
                records.extend(self.backend.get([job_id]))
            except BackendUnavailable:
                raise
            except ConveyorError:
                records.append(None)
                unreadable.append(job_id)
        return records, unreadable

    def retry(self, *job_ids: str) -> list[bool]:
        """Run dead or cancelled jobs again with a fresh retry budget; True for each one
        requeued (not: unknown, unfinished, completed, or its unique key taken again)."""
        return self.backend.retry([str(i) for i in job_ids])

    def purge(
        self,
        *,
        queue: str | None = None,
        states: Iterable[JobState | str] = (),
        older_than: float | timedelta | None = None,
    ) -> int:
        """Delete finished jobs and their logs: of `queue` (every queue by default), in
        `states` (completed, dead, cancelled; all three by default), finished more than
        `older_than` ago (seconds or a timedelta); returns how many. Unfinished jobs are
        not purged: `delete` takes any job by id."""
        wanted = [_finished_state(s) for s in states]
        cutoff = None if older_than is None else self.clock.now() - _seconds("older_than", older_than)
        where = None if queue is None else validate_queue(queue)
        return self.backend.purge(queue=where, states=wanted, older_than=cutoff)

    def pause(self, *queues: str) -> None:
        """Stop every worker from taking jobs from `queues`; running jobs finish, queued ones wait."""
        self.backend.set_paused([validate_queue(q) for q in queues], True)

    def resume(self, *queues: str) -> None:
        """Let workers take jobs from `queues` again."""
        self.backend.set_paused([validate_queue(q) for q in queues], False)

    def stats(self) -> dict[str, Any]:
        """Jobs per queue and state, totals per state, and live workers."""
        counts = self.backend.counts()
        queues = {q: {s.value: per.get(s, 0) for s in JobState} for q, per in sorted(counts.items())}
        totals = {s.value: sum(per.get(s.value, 0) for per in queues.values()) for s in JobState}
        workers = self.backend.workers()
        paused = self.backend.paused()
        return {"queues": queues, "totals": totals, "workers": len(workers), "paused": paused}

    def worker(self, **settings: Any) -> Worker:
        """A worker for this app; keyword arguments override settings (queues, concurrency...)."""
        from conveyor.worker import Worker

        return Worker(self, self.settings.with_(**settings))


@dataclass(frozen=True, slots=True)
class _Resolved:
    """Enqueue options with every default applied."""

    queue: str
    priority: int
    retries: int
    timeout: float | None
    run_at: float | None
    unique_key: str | None
    meta: dict[str, Any]
    unique_for: float | None = None
    debounce: bool = False


def _code_of(fn: Callable[..., Any] | None) -> object:
    return getattr(fn, "__code__", fn)


def _state(state: JobState | str | None) -> JobState | None:
    if state is None or isinstance(state, JobState):
        return state
    try:
        return JobState(state)
    except ValueError:
        valid = ", ".join(s.value for s in JobState)
        raise ConfigError(f"unknown job state {state!r}; valid states: {valid}") from None


def _finished_state(state: JobState | str) -> JobState:
    parsed = _state(state)
    if parsed is None or parsed not in TERMINAL_STATES:
        raise ConfigError(
            f"purge deletes finished jobs (completed, dead, cancelled), not {state!r} ones; "
            "delete() takes any job by id"
        )
    return parsed


def _seconds(name: str, value: float | timedelta) -> float:
    """A duration of at least 0, given in seconds or as a timedelta."""
    seconds = value.total_seconds() if isinstance(value, timedelta) else value
    if isinstance(seconds, bool) or not isinstance(seconds, int | float) or not seconds >= 0:
        raise ConfigError(f"{name} must be seconds >= 0 or a timedelta, got {value!r}")
    return float(seconds)


def _count(name: str, value: int, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def _stored_record(template: NewJob, payload: str, job_id: str, *, now: float) -> JobRecord:
    record = template.to_record(job_id, now)
    record.payload = payload
    return record


def _signature(task: str, call: Any, options: JobOptions) -> Signature:
    if isinstance(call, Signature):
        return (
            call
            if options is EMPTY_OPTIONS
            else Signature(call.task, call.args, call.kwargs, options.merged(call.options))
        )
    if isinstance(call, tuple | list):
        return Signature(task, call, EMPTY_MAPPING, options)
    if isinstance(call, Mapping):
        return Signature(task, (), call, options)
    kind = type(call).__name__
    raise TypeError(f"enqueue_many({task}) items must be args tuples, kwargs dicts or signatures, got {kind}")
