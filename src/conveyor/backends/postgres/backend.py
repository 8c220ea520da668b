"""PostgreSQL engine: psycopg 3 and its pool, `FOR UPDATE SKIP LOCKED`, LISTEN/NOTIFY.

Every change is one statement or one short transaction, batch-first: a batch of
enqueues, completions or lease renewals is one statement over arrays. Claims run in
the schema's `claim()` function, the same one operators call from psql. Times come
from the database's clock unless a test injects one. Workers wake on NOTIFY and poll
as a fallback, so nothing depends on a notification arriving.
"""

from __future__ import annotations

import asyncio
import functools
import json
import math
import random
import secrets
import time
from collections.abc import Generator, Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext, suppress
from typing import Any, TypeVar

import psycopg
from psycopg.rows import tuple_row

from conveyor.backends._sql import attempts_from, load_queries, sql_ident
from conveyor.backends.base import (
    LEASE_EXPIRED,
    WORKER_SEEN_SECONDS,
    AsyncWork,
    Backend,
    Enqueued,
    Fence,
    JobQuery,
    Links,
    NewJob,
    Outcome,
    OutcomeKind,
    Renewal,
    Resumption,
    WorkerInfo,
    flow_links,
    purgeable,
    read_stored,
    translate_errors,
)
from conveyor.backends.postgres.anyloop import AnyLoopConnections
from conveyor.backends.postgres.aside import Aside
from conveyor.backends.postgres.connect import check_schema, parse_postgres_url, redact
from conveyor.backends.postgres.direct import DirectStatement
from conveyor.backends.postgres.held import Held
from conveyor.backends.postgres.listener import Listener
from conveyor.backends.postgres.lostcall import (
    LostCalls,
    Row,
    Sending,
    all_stored,
    answered,
    marked,
    new_call,
)
from conveyor.backends.postgres.migrate import migrate, require_current, schema_version
from conveyor.backends.postgres.pools import ERRORS, Pool, explained
from conveyor.backends.postgres.vacuum import EVENTS_DEAD, Vacuumer
from conveyor.clock import SYSTEM_CLOCK, Clock
from conveyor.errors import BackendUnavailable
from conveyor.events import KEEP, Entry, JobEvent, decode, encode
from conveyor.job import STATE_OF, TERMINAL_STATES, JobRecord, JobState, LogEntry
from conveyor.limits import SCAN, Claimed, QueueLimits, admit, windows

_PACKAGE = "conveyor.backends.postgres"
_DONE = " done"  # the wake channel's payload when jobs ended (result() waiters look again)
_EVENTS = " events"  # the wake channel's payload for new events: no queue name has a space
_POLL_SECONDS = 0.5  # a waiter's longest block while LISTEN is off or down
_PAYLOADS_PER_INSERT = 10_000  # payloads in one array: bounds one statement's memory
R = TypeVar("R")

_guarded = translate_errors(ERRORS, lambda backend: f"PostgreSQL at {backend.where}", explained)

Conn = psycopg.Connection[tuple[Any, ...]]
AsyncConn = psycopg.AsyncConnection[Any]
Params = dict[str, Any]
Rows = list[tuple[Any, ...]]
Steps = Generator[tuple[str, Params], Rows, R]  # statements to run, each receiving its rows
Executor = Conn | psycopg.Cursor[tuple[Any, ...]]  # both have execute() -> fetchone/fetchall


class PostgresBackend(Backend):
    """Jobs in one PostgreSQL schema, shared by every process that opens it."""

    def __init__(self, url: str, prefix: str = "conveyor", clock: Clock = SYSTEM_CLOCK):
        self.url, self.prefix, self.clock = url, prefix, clock
        self.schema = check_schema(prefix)
        self.where = redact(url).split("?", 1)[0]
        target = parse_postgres_url(url)
        self.target = target
        self._timeout = target.timeout
        columns = load_queries(_PACKAGE)["columns"]
        self._q = {
            name: sql.replace("{p}", self.schema).replace("{columns}", columns)
            for name, sql in load_queries(_PACKAGE).items()
        }
        self.connect_options = target.connect_options
        # The single enqueue through libpq (direct.py); behind PgBouncer in transaction
        # mode nothing is prepared, so psycopg's path alone.
        self._direct = None
        if target.prepare:
            self._direct = DirectStatement(self._q["insert_one"])
        self._pool = Pool(
            target.conninfo,
            min_size=1,
            max_size=target.pool + 1,  # one more for the producer's held one (see held.py)
            timeout=target.timeout,
            kwargs=self.connect_options,
            name=f"conveyor-{self.schema}",
            open=False,
        )
        self._held = Held(self._pool)
        self._lost = LostCalls(self._pool, self._q, target.timeout, self.where, by_pid=target.prepare)
        self._anyloop = AnyLoopConnections(target.conninfo, self.connect_options, target.pool, target.timeout)
        self._listener = Listener(target.conninfo, self.schema, enabled=target.listen)
        self._events = Aside(target.conninfo, self.connect_options)  # the event publisher's
        vacuum_at = {f"{self.schema}.jobs": target.vacuum, f"{self.schema}.events": EVENTS_DEAD}
        self.vacuumer = Vacuumer(
            target.conninfo, self.connect_options, vacuum_at if target.vacuum else {}, self._dead_rows
        )
        try:
            # The schema check has a connection of its own, not the pool's: a wrong host,
            # database or password then fails at once with the server's reason, where the
            # pool retried until `timeout` and said only "pool initialization incomplete".
            with psycopg.connect(target.conninfo, **self.connect_options) as conn:
                if target.migrate:
                    migrate(conn, self.schema)
                else:
                    require_current(conn, self.schema)
            # Waited for: a first call that found the pool empty would grow it to two
            # connections, and a producer's calls would then alternate between two server
            # processes (a tenth slower, see the README's benchmark notes).
            self._pool.open(wait=True, timeout=target.timeout)
        except ERRORS as exc:
            self.close()
            raise BackendUnavailable(f"PostgreSQL at {self.where}: {explained(exc)}") from exc
        except BaseException:
            self.close()
            raise

    # -- connections -------------------------------------------------------
    def _at(self) -> float | None:
        """The time to store: None lets the database's clock decide; tests inject one."""
        return None if self.clock is SYSTEM_CLOCK else self.clock.now()

    def query(self, name: str) -> str:
        """A statement of queries.sql, with this backend's schema in it."""
        return self._q[name]

    @contextmanager
    def _tx(self) -> Iterator[Conn]:
        with self._pool.connection() as conn, conn.transaction():
            yield conn

    def _one(self, query: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
        """Run one statement on a pooled connection (its own transaction)."""
        with self._pool.connection() as conn:
            return conn.execute(self._q[query], params).fetchall()

    # -- producing ---------------------------------------------------------
    @_guarded
    def enqueue(self, jobs: Sequence[NewJob]) -> list[Enqueued]:
        if not jobs:
            return []
        if all(job.unique_key is None and job.parent is None for job in jobs):
            return [Enqueued(i, True) for i in self._enqueue_plain(jobs)]
        return self._enqueue_in_transaction(jobs)

    def _enqueue_plain(self, jobs: Sequence[NewJob]) -> list[str]:
        """Jobs without unique keys or flows: one statement, atomic without BEGIN, sent
        again if its connection drops and it stored nothing (see lostcall.py)."""
        sending = Sending(new_call())
        try:
            if len(jobs) == 1:
                with self._held.connection() as conn:
                    sending.on(conn)
                    return [self._insert_one(conn, jobs[0], sending.call)]
            with self._pool.connection() as conn:
                sending.on(conn)
                return self._insert(conn, jobs, sending.call)
        except psycopg.OperationalError as exc:
            if not sending.lost(exc):
                raise
            resend = functools.partial(self._insert, jobs=jobs, call=sending.call)
            return self._lost.settle(sending, exc, len(jobs), all_stored(len(jobs)), resend)

    def _enqueue_in_transaction(self, jobs: Sequence[NewJob]) -> list[Enqueued]:
        """Jobs with unique keys or flows: several statements in one transaction, settled
        as a plain call is if its connection drops (see lostcall.py)."""
        sending = Sending(new_call())

        def store(conn: Conn) -> list[Enqueued]:
            with self._transaction(conn, sending.call):
                return self._store(conn, jobs, sending.call)

        try:
            with self._pool.connection() as conn:
                sending.on(conn)
                return store(conn)
        except psycopg.OperationalError as exc:
            if not sending.lost(exc):
                raise

            def answer(conn: Conn, rows: list[Row]) -> list[Enqueued]:
                return answered(jobs, rows, functools.partial(self._holder, conn))

            return self._lost.settle(sending, exc, len(jobs), answer, store)

    @contextmanager
    def _transaction(self, conn: Conn, call: str) -> Iterator[None]:
        """A transaction of an enqueue call. Behind PgBouncer its BEGIN and COMMIT carry
        the call's mark, as its statements do, so a look for the lost call during its
        COMMIT waits for it (see lostcall.py)."""
        if self._lost.by_pid:
            with conn.transaction():
                yield
            return
        conn.execute(marked(call, "BEGIN"))
        try:
            yield
        except BaseException:
            with suppress(psycopg.Error):  # a connection that failed is closed: nothing to end
                conn.execute("ROLLBACK")
            raise
        conn.execute(marked(call, "COMMIT"))

    def _holder(self, conn: Conn, job: NewJob) -> str | None:
        """The job that `job`'s unique key matches now, as _insert_unique finds it."""
        params = self._scalars(job)
        recent = self._recent(conn, job, params, None)
        return recent if recent is not None else self._live(conn, params, None)

    @_guarded
    def enqueue_on(self, conn: psycopg.Connection[Any], jobs: Sequence[NewJob]) -> list[Enqueued]:
        """Store jobs on the caller's connection, inside whatever transaction it has open:
        they exist (and wake workers) when it commits, and vanish if it rolls back."""
        if not jobs:
            return []
        return self._store(conn.cursor(row_factory=tuple_row), jobs, None)

    def _store(self, conn: Executor, jobs: Sequence[NewJob], call: str | None) -> list[Enqueued]:
        """Jobs of any kind, in the transaction open on `conn`; `call` marks those stored
        as this call's (see lostcall.py)."""
        out: list[Enqueued] = []
        start = 0
        while start < len(jobs):
            if jobs[start].unique_key is not None:
                out.append(self._insert_unique(conn, jobs[start], call))
                start += 1
                continue
            end = start
            while end < len(jobs) and jobs[end].unique_key is None:
                end += 1
            out.extend(Enqueued(i, True) for i in self._insert(conn, jobs[start:end], call))
            start = end
        links = flow_links(jobs, [stored.id for stored in out])
        if links is not None:
            self._link(conn, jobs, out, links, call)
        return out

    def _link(
        self,
        conn: Executor,
        jobs: Sequence[NewJob],
        stored: Sequence[Enqueued],
        links: Sequence[Links],
        call: str | None,
    ) -> None:
        """Set a flow batch's parent/children links and waiting states: one statement."""
        rows = [
            (int(w.id), p, c, j.flow, j.waiting)
            for j, w, (p, c) in zip(jobs, stored, links, strict=True)
            if p or c
        ]
        conn.execute(
            self._marked(self._q["link"], call),
            {
                "ids": [r[0] for r in rows],
                "parents": [None if r[1] is None else int(r[1]) for r in rows],
                "children": ["{" + ",".join(r[2]) + "}" if r[2] else None for r in rows],
                "flows": [r[3] for r in rows],
                "waiting": [r[4] for r in rows],
            },
        )

    @_guarded
    async def aenqueue(self, jobs: Sequence[NewJob]) -> list[Enqueued]:
        """Jobs without unique keys or flows, in one statement on a connection any loop
        may borrow (see anyloop.py); the rest, or every connection lent, in a thread."""
        if not jobs or not all(job.unique_key is None and job.parent is None for job in jobs):
            return await super().aenqueue(jobs)
        conn = await self._anyloop.borrow()  # None: none to lend or none connects
        if conn is None:
            return await super().aenqueue(jobs)
        sending, clean = Sending(new_call()), False
        try:
            sending.on(conn)
            ids = await self._ainsert(conn, jobs, sending.call)
            clean = True
            return [Enqueued(i, True) for i in ids]
        except psycopg.OperationalError as exc:
            if not sending.lost(exc):
                raise
            lost = exc
        finally:
            self._anyloop.give_back(conn, clean=clean)

        def resend(fresh: Conn) -> list[str]:
            return self._insert(fresh, jobs, sending.call)

        # In a thread: the look at the server is sync, and rare.
        settle = functools.partial(self._lost.settle, sending, lost, len(jobs), all_stored(len(jobs)))
        ids = await asyncio.to_thread(settle, resend)
        return [Enqueued(i, True) for i in ids]

    async def _ainsert(self, conn: AsyncConn, jobs: Sequence[NewJob], call: str) -> list[str]:
        if len(jobs) == 1 and self._direct is not None:  # as _insert_one, awaited
            stored = await self._direct.afirst_value(conn, self._scalars(jobs[0], call))
            if stored is not None:
                return [stored]
        cursor = await conn.execute(*self._insert_statement(jobs, call))
        return _ids_in_order(await cursor.fetchall(), len(jobs))

    def _insert_one(self, conn: Conn, job: NewJob, call: str) -> str:
        """One job, on a connection with no transaction open: through libpq where it
        can (see direct.py), else psycopg."""
        params = self._scalars(job, call)
        stored = None if self._direct is None else self._direct.first_value(conn, params)
        return stored if stored is not None else self._insert(conn, [job], call)[0]

    def _insert(self, conn: Executor, jobs: Sequence[NewJob], call: str | None) -> list[str]:
        rows = conn.execute(*self._insert_statement(jobs, call)).fetchall()
        return _ids_in_order(rows, len(jobs))

    def _insert_statement(self, jobs: Sequence[NewJob], call: str | None) -> tuple[str, Params]:
        """The one INSERT that stores `jobs` (no unique keys): scalars for one job.
        `call` marks the jobs as this call's (see lostcall.py)."""
        if len(jobs) == 1:
            return self._marked(self._q["insert_one"], call), self._scalars(jobs[0], call)
        params = {
            "at": self._at(),
            "call": call,
            "task": [j.task for j in jobs],
            "queue": [j.queue for j in jobs],
            "payload": [j.payload for j in jobs],
            "priority": [j.priority for j in jobs],
            "max_attempts": [j.max_attempts for j in jobs],
            "retries": [j.retries for j in jobs],
            "timeout": [j.timeout for j in jobs],
            "run_at": [j.run_at for j in jobs],
            "meta": [_json_or_none(j.meta) for j in jobs],
            "limit_key": [j.limit_key for j in jobs],
        }
        return self._marked(self._q["insert"], call), params

    def _marked(self, statement: str, call: str | None) -> str:
        """Behind PgBouncer, `statement` under a comment naming the call (see lostcall.py)."""
        return statement if call is None or self._lost.by_pid else marked(call, statement)

    def _scalars(self, job: NewJob, call: str | None = None) -> dict[str, Any]:
        return {
            "at": self._at(), "task": job.task, "queue": job.queue, "payload": job.payload,
            "priority": job.priority, "max_attempts": job.max_attempts, "retries": job.retries,
            "timeout": job.timeout, "run_at": job.run_at, "unique_key": job.unique_key,
            "meta": _json_or_none(job.meta), "limit_key": job.limit_key, "call": call,
        }  # fmt: skip

    def _insert_unique(self, conn: Executor, job: NewJob, call: str | None) -> Enqueued:
        params = self._scalars(job, call)
        recent = self._recent(conn, job, params, call)
        if recent is not None:
            return Enqueued(recent, False)
        # The holder of the key may finish between the two statements: look again.
        for _ in range(10):
            inserted = conn.execute(self._marked(self._q["insert_unique"], call), params).fetchone()
            if inserted is not None:
                return Enqueued(str(inserted[0]), True)
            existing = self._live(conn, params, call)
            if existing is not None:
                if job.debounce:
                    conn.execute(self._marked(self._q["debounce"], call), {**params, "id": int(existing)})
                return Enqueued(existing, False)
        raise BackendUnavailable(f"PostgreSQL at {self.where}: unique key {job.unique_key!r} kept changing")

    def _recent(self, conn: Executor, job: NewJob, params: Params, call: str | None) -> str | None:
        """With `unique_for`: the newest job with the key that completed within it."""
        if job.unique_for is None:
            return None
        statement = self._marked(self._q["find_recent"], call)
        row = conn.execute(statement, {**params, "unique_for": job.unique_for}).fetchone()
        return None if row is None else str(row[0])

    def _live(self, conn: Executor, params: Params, call: str | None) -> str | None:
        """The live job (not yet ended) with the key."""
        row = conn.execute(self._marked(self._q["find_unique"], call), params).fetchone()
        return None if row is None else str(row[0])

    @_guarded
    def enqueue_payloads(self, template: NewJob, payloads: Sequence[str]) -> list[str]:
        params = {
            "at": self._at(), "task": template.task, "queue": template.queue,
            "priority": template.priority, "max_attempts": template.max_attempts,
            "retries": template.retries, "timeout": template.timeout, "run_at": template.run_at,
            "meta": _json_or_none(template.meta),
        }  # fmt: skip
        sending = Sending(new_call())
        params["call"] = sending.call
        try:
            with self._pool.connection() as conn:
                sending.on(conn)
                return self._insert_payloads(conn, params, payloads)
        except psycopg.OperationalError as exc:
            if not sending.lost(exc):
                raise
            resend = functools.partial(self._insert_payloads, params=params, payloads=payloads)
            return self._lost.settle(sending, exc, len(payloads), all_stored(len(payloads)), resend)

    def _insert_payloads(self, conn: Conn, params: Params, payloads: Sequence[str]) -> list[str]:
        chunks = [
            list(payloads[at : at + _PAYLOADS_PER_INSERT])
            for at in range(0, len(payloads), _PAYLOADS_PER_INSERT)
        ]
        ids: list[str] = []
        statement = self._marked(self._q["insert_shared"], params["call"])
        # One statement is atomic on its own: BEGIN and COMMIT would be two more round trips.
        with self._transaction(conn, params["call"]) if len(chunks) > 1 else nullcontext():
            for chunk in chunks:
                rows = conn.execute(statement, {**params, "payloads": chunk}).fetchall()
                ids.extend(_ids_in_order(rows, len(chunk)))
        return ids

    @_guarded
    def enqueue_tick(self, schedule: str, tick: float, job: NewJob) -> str | None:
        with self._tx() as conn:
            if conn.execute(self._q["claim_tick"], {"name": schedule, "tick": tick}).fetchone() is None:
                return None
            stored = self._store(conn, [job], None)[0]
            return stored.id if stored.created else None

    # -- working -----------------------------------------------------------
    @_guarded
    def claim(
        self,
        worker_id: str,
        queues: Sequence[str],
        limit: int,
        lease_seconds: float,
        limits: Mapping[str, QueueLimits] | None = None,
    ) -> list[JobRecord]:
        if not limits:
            return self._claim(worker_id, queues, limit, lease_seconds)
        claimed = Claimed()
        token = secrets.token_hex(16)
        for queue in queues:  # in order: the first queue is drained first
            want = limit - len(claimed)
            if want <= 0:
                break
            limited = limits.get(queue)
            if limited is None:
                claimed.merge(self._claim(worker_id, [queue], want, lease_seconds))
            else:
                lease = {"worker": worker_id, "token": token, "lease": lease_seconds}
                self._claim_limited(queue, limited, want, lease, claimed)
        return claimed

    def _claim(
        self, worker_id: str, queues: Sequence[str], limit: int, lease_seconds: float
    ) -> list[JobRecord]:
        return self.claimed(
            self._one("claim", self.claim_params(worker_id, queues, limit, lease_seconds)), queues
        )

    def claim_params(self, worker_id: str, queues: Sequence[str], limit: int, lease_seconds: float) -> Params:
        return {"worker": worker_id, "queues": list(queues), "limit": limit,
                "lease": lease_seconds, "at": self._at()}  # fmt: skip

    @staticmethod
    def claimed(rows: Rows, queues: Sequence[str]) -> Claimed:
        """Claimed rows as records in queue order, then priority, then FIFO (RETURNING
        gives no order)."""
        claimed = Claimed()
        records = claimed.read(rows, _record, sql_ident)
        order = {queue: i for i, queue in enumerate(queues)}
        records.sort(key=lambda r: (order[r.queue], -r.priority, int(r.id)))
        claimed.extend(records)
        return claimed

    def _claim_limited(
        self, queue: str, limited: QueueLimits, want: int, lease: dict[str, Any], claimed: Claimed
    ) -> None:
        """Lease what fits the queue's limits from its first SCAN ready jobs, counted and
        leased in one transaction under the queue's advisory lock."""
        with self._tx() as conn:
            _, paused, now = conn.execute(
                self._q["limited_begin"], {"queue": queue, "at": self._at()}
            ).fetchone() or (None, True, 0.0)
            if paused:
                return
            conn.execute(self._q["promote_queue"], {"queue": queue, "now": now})
            scan = conn.execute(self._q["ready_scan"], {"queue": queue, "scan": SCAN}).fetchall()
            candidates = [(str(i), task, key) for i, task, key in scan]
            active = conn.execute(self._q["active_of"], {"queue": queue}).fetchall()
            spans = windows(limited, candidates)
            recent: dict[str, int] = {}
            if spans:
                since = [now - per for per in spans.values()]
                params = {"queue": queue, "scopes": list(spans), "since": since}
                recent = dict(conn.execute(self._q["recent_starts"], params).fetchall())
            if limited.longest:  # the longest window of all the queue's scopes, not only these
                conn.execute(self._q["trim_starts"], {"queue": queue, "before": now - limited.longest})
            admission = admit(limited, candidates, active, recent, want)
            claimed.held_back = claimed.held_back or admission.held_back
            if not admission.ids:
                return
            if admission.starts:
                conn.execute(self._q["log_starts"], {"queue": queue, "scopes": admission.starts, "now": now})
            ids = [int(i) for i in admission.ids]
            rows = conn.execute(self._q["claim_ids"], {**lease, "ids": ids, "now": now}).fetchall()
        records = claimed.read(rows, _record, sql_ident)
        records.sort(key=lambda r: (-r.priority, int(r.id)))
        claimed.extend(records)

    @_guarded
    def extend_leases(self, renewals: Sequence[Renewal], lease_seconds: float) -> list[Fence]:
        if not renewals:
            return []
        params = {
            "at": self._at(),
            "lease": lease_seconds,
            "ids": [_int_id(r.job_id) for r in renewals],
            "tokens": [r.token for r in renewals],
            "progress": [r.progress for r in renewals],
        }
        with self._tx() as conn:
            held = {(str(i), token) for i, token in conn.execute(self._q["extend_leases"], params)}
            logs = self._logs_params([(r.job_id, r.logs) for r in renewals if (r.job_id, r.token) in held])
            if logs is not None:
                conn.execute(self._q["insert_logs"], logs)
        return [Fence.OK if (r.job_id, r.token) in held else Fence.LEASE_LOST for r in renewals]

    @staticmethod
    def _logs_params(entries: list[tuple[str, list[LogEntry]]]) -> Params | None:
        lines = [(job_id, e) for job_id, logs in entries for e in logs]
        if not lines:
            return None
        return {
            "ids": [_int_id(job_id) for job_id, _ in lines],
            "at": [e.at for _, e in lines],
            "messages": [_text(e.message) for _, e in lines],
            "fields": [_json_or_none(e.fields) for _, e in lines],
        }

    @_guarded
    def finish(self, outcomes: Sequence[Outcome]) -> list[Fence]:
        if not outcomes:
            return []
        with self._tx() as conn:
            steps = self.finish_steps(outcomes)
            try:
                query, params = next(steps)
                while True:
                    cursor = conn.execute(self._q[query], params)
                    query, params = steps.send(cursor.fetchall() if cursor.description else [])
            except StopIteration as end:
                fences: list[Fence] = end.value
                return fences

    def finish_steps(self, outcomes: Sequence[Outcome]) -> Steps[list[Fence]]:
        """The statements that store a batch, for one transaction: at most five whatever
        its size (completions, failures, releases (shutdown and snoozes), their log lines,
        and one notification). Each yields (query name, params) and receives the rows;
        the sync and async drivers run the same steps."""
        done = [o for o in outcomes if o.kind is OutcomeKind.COMPLETED]
        failed = [o for o in outcomes if o.kind in (OutcomeKind.RETRY, OutcomeKind.DEAD)]
        back = [o for o in outcomes if o.kind in (OutcomeKind.RELEASED, OutcomeKind.SNOOZED)]
        held: set[tuple[str, str]] = set()  # (id, token) of each outcome that was stored
        for query, batch, params in (
            ("complete_batch", done, self._completions),
            ("fail_batch", failed, self._failures),
            ("release_batch", back, self._releases),
        ):
            if batch:
                rows = yield query, {**params(batch), "at": self._at()}
                held.update((str(row[0]), row[1]) for row in rows)
        logs = self._logs_params([(o.job_id, o.logs) for o in outcomes if (o.job_id, o.token) in held])
        if logs is not None:
            yield "insert_logs", logs
        if done or any(o.kind is OutcomeKind.DEAD for o in failed):
            yield "notify_done", {}
        return [Fence.OK if (o.job_id, o.token) in held else Fence.LEASE_LOST for o in outcomes]

    @staticmethod
    def _fenced(batch: Sequence[Outcome]) -> dict[str, Any]:
        return {
            "ids": [_int_id(o.job_id) for o in batch],
            "tokens": [o.token for o in batch],
            "progress": [o.progress for o in batch],
        }

    def _completions(self, batch: Sequence[Outcome]) -> dict[str, Any]:
        return {**self._fenced(batch), "results": [o.result for o in batch]}

    def _failures(self, batch: Sequence[Outcome]) -> dict[str, Any]:
        return {
            **self._fenced(batch),
            "errors": [_text(o.error) for o in batch],
            "tracebacks": [_text(o.traceback) for o in batch],
            "retry_at": [o.retry_at if o.kind is OutcomeKind.RETRY else None for o in batch],
            "final": [o.kind is OutcomeKind.DEAD for o in batch],
            "workers": [o.worker for o in batch],
        }

    def _releases(self, batch: Sequence[Outcome]) -> dict[str, Any]:
        now = self.clock.now()  # a snooze without a time runs again at once
        run_at = [(o.retry_at or now) if o.kind is OutcomeKind.SNOOZED else None for o in batch]
        return {**self._fenced(batch), "run_at": run_at}

    def async_work(self) -> AsyncWork:
        from conveyor.backends.postgres.aio import PostgresAsyncWork

        return PostgresAsyncWork(self)

    @_guarded
    def recover_expired(self) -> list[str]:
        rows = self._one("expire", {"at": self._at(), "error": LEASE_EXPIRED})
        return [str(row[0]) for row in rows]

    @_guarded
    def wait_for_work(self, queues: Sequence[str], timeout: float) -> bool:
        # Jittered, so idle workers started together do not poll in step.
        deadline = time.monotonic() + timeout * random.uniform(0.8, 1.0)
        while True:
            seen = self._listener.generation(queues)
            ready, due_in = self._one("look", {"queues": list(queues), "at": self._at()})[0]
            if ready or (due_in is not None and due_in <= 0):
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            if due_in is not None:
                left = min(left, due_in)
            if not self._listener.listening:
                left = min(left, _POLL_SECONDS * random.uniform(0.5, 1.0))
            if self._listener.wait(queues, seen, left):
                return True  # notified: the claim that follows is the look (one round trip less)

    # -- events ------------------------------------------------------------
    @_guarded
    def publish(self, events: Sequence[Entry]) -> None:
        self._events.execute(self._q["publish"], {"events": encode(events), "keep": KEEP})

    @_guarded
    def event_cursor(self) -> str:
        return str(self._one("event_cursor", {})[0][0])

    @_guarded
    def read_events(self, cursor: str, timeout: float) -> tuple[list[JobEvent], str]:
        after = max(_int_id(cursor), 0)
        deadline = time.monotonic() + timeout
        while True:
            seen = self._listener.generation([_EVENTS])
            rows = self._one("read_events", {"after": after})
            left = deadline - time.monotonic()
            if rows or left <= 0:
                break
            if not self._listener.listening:
                left = min(left, _POLL_SECONDS * random.uniform(0.5, 1.0))
            self._listener.wait([_EVENTS], seen, left)
        events = [event for _, batch in rows for event in decode(batch)]
        return events, str(rows[-1][0] if rows else after)

    def wait_finished(self, job_id: str, deadline: float | None) -> JobRecord | None:
        """Block on the listener between looks: finishes notify ' done' once per batch.
        Without LISTEN (pgbouncer=1, listen=0) the base class's backoff poll applies."""
        if not self._listener.enabled:
            return super().wait_finished(job_id, deadline)
        while True:
            seen = self._listener.generation([_DONE])
            record = self.get([job_id])[0]
            if record is None or record.state in TERMINAL_STATES:
                return record
            left = _POLL_SECONDS if deadline is None else min(_POLL_SECONDS, deadline - time.monotonic())
            if left <= 0:
                return record
            if not self._listener.listening:  # connecting, or down: look again soon
                left = min(left, 0.05)
            self._listener.wait([_DONE], seen, left)

    # -- reading -----------------------------------------------------------
    @_guarded
    def get(self, ids: Sequence[str]) -> list[JobRecord | None]:
        if not ids:
            return []
        rows = self._one("get", {"ids": [_int_id(i) for i in ids]})
        found = {record.id: record for record in map(_stored, rows)}
        return [found.get(str(_int_id(i))) for i in ids]

    @_guarded
    def list_jobs(self, query: JobQuery) -> list[JobRecord]:
        params = {
            "queue": query.queue,
            "state": None if query.state is None else query.state.value,
            "task": query.task,
            "limit": query.limit,
            "offset": query.offset,
        }
        return [_stored(row) for row in self._one("list", params)]

    @_guarded
    def counts(self) -> dict[str, dict[JobState, int]]:
        out: dict[str, dict[JobState, int]] = {}
        for queue, state, count in self._one("counts", {}):
            out.setdefault(queue, {})[STATE_OF[state]] = int(count)
        return out

    @_guarded
    def logs(self, job_id: str) -> list[LogEntry]:
        rows = self._one("logs", {"id": _int_id(job_id)})
        return [LogEntry(at, message, fields or {}) for at, message, fields in rows]

    # -- operating ---------------------------------------------------------
    @_guarded
    def cancel(self, ids: Sequence[str]) -> list[bool]:
        with self._tx() as conn:
            rows = conn.execute(
                self._q["cancel"], {"ids": [_int_id(i) for i in ids], "at": self._at()}
            ).fetchall()
            if rows:
                conn.execute(self._q["notify_done"])
        cancelled = {str(row[0]) for row in rows}
        # An id listed twice is cancelled once: only its first mention says True.
        out = []
        for job_id in ids:
            out.append(job_id in cancelled)
            cancelled.discard(job_id)
        return out

    @_guarded
    def resume_waiting(self, resumptions: Sequence[Resumption]) -> list[bool]:
        params = {
            "ids": [_int_id(r.job_id) for r in resumptions],
            "errors": [_text(r.error) for r in resumptions],
        }
        with self._tx() as conn:
            rows = conn.execute(self._q["resume"], {**params, "at": self._at()}).fetchall()
            queues = sorted({queue for _, queue, state in rows if state == "queued"})
            if queues:
                conn.execute(self._q["wake"], {"queues": queues})
            if any(state == "dead" for _, _, state in rows):
                conn.execute(self._q["notify_done"])
        moved = {str(row[0]) for row in rows}
        out = []
        for r in resumptions:  # an id listed twice moved once: only its first mention says True
            out.append(r.job_id in moved)
            moved.discard(r.job_id)
        return out

    @_guarded
    def retry(self, ids: Sequence[str]) -> list[bool]:
        done: list[bool] = []
        queues: set[str] = set()
        with self._tx() as conn:
            for job_id in ids:
                try:
                    with conn.transaction():  # a savepoint: a key clash undoes only this job
                        row = conn.execute(self._q["retry"], {"id": _int_id(job_id), "at": self._at()})
                        found = row.fetchone()
                except psycopg.errors.UniqueViolation:
                    found = None  # a live job already holds this job's unique key
                done.append(found is not None)
                if found is not None:
                    queues.add(found[0])
            if queues:
                conn.execute(self._q["wake"], {"queues": sorted(queues)})
        return done

    @_guarded
    def set_paused(self, queues: Sequence[str], paused: bool) -> None:
        with self._tx() as conn:
            conn.execute(self._q["set_paused"], {"queues": list(queues), "paused": paused, "at": self._at()})
            if not paused:
                conn.execute(self._q["wake"], {"queues": list(queues)})  # their jobs count again

    @_guarded
    def paused(self) -> list[str]:
        return [row[0] for row in self._one("paused", {})]

    @_guarded
    def purge(
        self,
        *,
        queue: str | None = None,
        states: Sequence[JobState] = (),
        older_than: float | None = None,
        limit: int | None = None,
    ) -> int:
        deleted = 0
        with self._tx() as conn:
            for state in purgeable(states):
                params = {"state": state.value, "queue": queue, "older_than": older_than, "limit": limit}
                ids = [row[0] for row in conn.execute(self._q["purge"], params)]
                if ids:
                    conn.execute(self._q["delete_logs"], {"ids": ids})
                deleted += len(ids)
        return deleted

    @_guarded
    def delete(self, ids: Sequence[str]) -> int:
        with self._tx() as conn:
            found = [row[0] for row in conn.execute(self._q["delete"], {"ids": [_int_id(i) for i in ids]})]
            if found:
                conn.execute(self._q["delete_logs"], {"ids": found})
        return len(found)

    @_guarded
    def report_worker(self, info: WorkerInfo | None, *, remove: str | None = None) -> None:
        at = self._at()
        with self._tx() as conn:
            if info is not None:
                conn.execute(
                    self._q["report_worker"],
                    {"id": info.id, "host": info.host, "pid": info.pid, "queues": ",".join(info.queues),
                     "concurrency": info.concurrency, "started_at": info.started_at, "at": at,
                     "active": info.active, "processed": info.processed},
                )  # fmt: skip
            if remove is not None:
                conn.execute(self._q["remove_worker"], {"id": remove})
            conn.execute(self._q["forget_workers"], {"at": at})

    @_guarded
    def workers(self) -> list[WorkerInfo]:
        rows = self._one("workers", {"at": self._at(), "seen": WORKER_SEEN_SECONDS})
        return [
            WorkerInfo(id=r[0], host=r[1], pid=r[2], queues=tuple(r[3].split(",")), concurrency=r[4],
                       started_at=r[5], last_seen=r[6], active=r[7], processed=r[8])
            for r in rows
        ]  # fmt: skip

    @_guarded
    def ping(self) -> None:
        with self._pool.connection() as conn:
            conn.execute("SELECT 1")

    def maintain(self) -> None:
        """Start the worker's vacuum thread (see vacuum.py): only workers call this."""
        self.vacuumer.start()

    def _dead_rows(self) -> dict[str, int]:
        """The jobs and events tables' dead rows as the statistics last counted them (each
        server process reports its own at most once a second)."""
        with self._pool.connection() as conn:
            jobs, events = conn.execute(self._q["dead_rows"]).fetchone() or (0, 0)
        return {f"{self.schema}.jobs": int(jobs), f"{self.schema}.events": int(events)}

    def close(self) -> None:
        self.vacuumer.close()
        self._listener.close()
        self._events.close()
        self._held.close()
        self._pool.close()
        self._anyloop.close()


def migrate_database(url: str, prefix: str = "conveyor") -> tuple[list[int], int]:
    """Apply the migrations the prefix's schema lacks: (versions applied, version now)."""
    schema = check_schema(prefix)
    target = parse_postgres_url(url)
    try:
        with psycopg.connect(target.conninfo, **target.connect_options) as conn:
            applied = migrate(conn, schema)
            return applied, schema_version(conn, schema)
    except psycopg.OperationalError as exc:
        raise BackendUnavailable(f"PostgreSQL at {redact(url).split('?', 1)[0]}: {exc}") from exc


def _ids_in_order(rows: list[tuple[Any, ...]], expected: int) -> list[str]:
    """Ids of one INSERT ... SELECT ORDER BY: identity values follow insertion order."""
    if len(rows) != expected:
        raise BackendUnavailable(f"PostgreSQL stored {len(rows)} of {expected} jobs in a batch")
    return [str(i) for i in sorted(row[0] for row in rows)]


def _int_id(job_id: str) -> int:
    """Ids are decimal strings on PostgreSQL; anything else matches no job."""
    try:
        return int(job_id)
    except (TypeError, ValueError):
        return -1


# PostgreSQL's text and jsonb cannot hold a NUL character: a row with one is refused
# ("invalid byte sequence for encoding UTF8: 0x00"). Where Conveyor keeps what a user
# or a task wrote as text or jsonb (errors, tracebacks, log lines, meta), a NUL becomes
# U+FFFD. Until 2026-12-07 a job whose exception message held one made every finish
# batch fail and stopped the worker, and each worker that took the job after it.
# Payloads and results are JSON text, where a NUL is written \u0000, and stay exact.
_NUL, _REPLACEMENT = "\x00", "\ufffd"


def _text(value: str | None) -> str | None:
    """`value` as PostgreSQL's text can hold it: NUL replaced (see _NUL)."""
    return value.replace(_NUL, _REPLACEMENT) if value and _NUL in value else value


def _json_or_none(value: dict[str, Any]) -> str | None:
    """Meta or a log line's fields as jsonb takes them (see _storable)."""
    if not value:
        return None
    try:
        text = json.dumps(value, default=str, separators=(",", ":"), allow_nan=False)
    except ValueError:  # NaN or an infinity somewhere (or a cycle, which stays an error)
        return json.dumps(_storable(value), default=str, separators=(",", ":"), allow_nan=False)
    if "\\u0000" in text:  # rare: the NULs go before encoding, so an escaped backslash stays
        text = json.dumps(_storable(value), default=str, separators=(",", ":"))
    return text


def _storable(value: Any) -> Any:
    """`value` as jsonb can hold it: NUL replaced in every string, keys included (see
    _NUL), and NaN, Infinity and -Infinity, which JSON has no number for, as those
    words. A NaN in a log line's fields (a training loss, say) made every lease renewal
    carrying it fail, and until the second session of 2026-12-07 stopped the worker."""
    if isinstance(value, str):
        return _text(value)
    if isinstance(value, float) and not math.isfinite(value):
        return json.dumps(value)  # "NaN", "Infinity" or "-Infinity"
    if isinstance(value, dict):
        return {_storable(k): _storable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_storable(v) for v in value]
    return value


def _stored(row: Sequence[Any]) -> JobRecord:
    return read_stored(_record, row, str(row[0]))


def _record(row: Sequence[Any]) -> JobRecord:
    """A JobRecord from a row in `columns` order, which is JobRecord's field order."""
    values = list(row)
    values[0] = str(row[0])
    values[3] = STATE_OF[row[3]]
    values[15] = row[15] or {}
    values[21] = attempts_from(row[21]) if row[21] else []
    values[23] = None if row[23] is None else str(row[23])
    values[24] = [str(c) for c in row[24]] if row[24] else []
    return JobRecord(*values)
