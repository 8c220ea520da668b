"""The in-process engine: a real implementation for tests and experiments, not a mock.

State lives in dicts and heaps under one lock; a condition variable wakes
workers and result waiters, so nothing polls. Heaps are cleaned lazily: an
entry whose job has since changed state is skipped when it reaches the top.
"""

from __future__ import annotations

import collections
import copy
import heapq
import itertools
import secrets
import threading
import time
from collections.abc import Mapping, Sequence

from conveyor.backends.base import (
    LEASE_EXPIRED,
    WORKER_SEEN_SECONDS,
    Backend,
    Enqueued,
    Fence,
    JobQuery,
    NewJob,
    Outcome,
    OutcomeKind,
    Renewal,
    Resumption,
    WorkerInfo,
    flow_links,
    purgeable,
)
from conveyor.clock import SYSTEM_CLOCK, Clock
from conveyor.events import KEEP, Entry, JobEvent, expand
from conveyor.job import (
    CANCELLABLE_STATES,
    RETRYABLE_STATES,
    TERMINAL_STATES,
    AttemptRecord,
    JobRecord,
    JobState,
    LogEntry,
)
from conveyor.limits import SCAN, Claimed, QueueLimits, admit, windows


class MemoryBackend(Backend):
    """All state in this process; several threads and event loops may share it."""

    def __init__(self, url: str = "memory://", prefix: str = "conveyor", clock: Clock = SYSTEM_CLOCK):
        self.url, self.prefix, self.clock = url, prefix, clock
        self._cond = threading.Condition(threading.Lock())
        self._jobs: dict[str, JobRecord] = {}
        self._ready: dict[str, list[tuple[int, int, str]]] = {}
        self._scheduled: list[tuple[float, int, str]] = []
        self._active: set[str] = set()
        self._unique: dict[tuple[str, str], str] = {}  # (queue, unique_key) -> live job id
        self._logs: dict[str, list[LogEntry]] = {}
        self._workers: dict[str, WorkerInfo] = {}
        self._paused: set[str] = set()
        self._ticks: dict[str, float] = {}
        self._starts: dict[tuple[str, str], collections.deque[float]] = {}  # rate windows
        self._events: collections.deque[JobEvent] = collections.deque(maxlen=KEEP * 10)
        self._event_seq = 0  # events ever published; the deque holds the newest KEEP
        self._next_id = 1

    # -- producing ---------------------------------------------------------
    def enqueue(self, jobs: Sequence[NewJob]) -> list[Enqueued]:
        with self._cond:
            now = self.clock.now()
            out = [self._insert(new, now) for new in jobs]
            links = flow_links(jobs, [stored.id for stored in out])
            for stored, (parent, children) in zip(out, links or (), strict=False):
                record = self._jobs[stored.id]
                record.parent_id, record.children = parent, children
            self._cond.notify_all()
        return out

    def enqueue_tick(self, schedule: str, tick: float, job: NewJob) -> str | None:
        with self._cond:
            if self._ticks.get(schedule, float("-inf")) >= tick:
                return None
            self._ticks[schedule] = tick
            stored = self._insert(job, self.clock.now())
            self._cond.notify_all()
            return stored.id if stored.created else None

    def _insert(self, new: NewJob, now: float) -> Enqueued:
        key = None if new.unique_key is None else (new.queue, new.unique_key)
        if key is not None and key in self._unique:
            holder = self._jobs[self._unique[key]]
            if new.debounce and holder.state in (JobState.SCHEDULED, JobState.QUEUED):
                holder.payload, holder.run_at = new.payload, new.run_at or now
                holder.state = JobState.SCHEDULED if holder.run_at > now else JobState.QUEUED
                self._place(holder)
            return Enqueued(holder.id, created=False)
        if key is not None and new.unique_for is not None:
            recent = self._recently_completed(key, now - new.unique_for)
            if recent is not None:
                return Enqueued(recent, created=False)
        job_id = str(self._next_id)
        self._next_id += 1
        record = new.to_record(job_id, now)
        self._jobs[job_id] = record
        if key is not None:
            self._unique[key] = job_id
        self._place(record)
        return Enqueued(job_id, created=True)

    def _recently_completed(self, key: tuple[str, str], since: float) -> str | None:
        """The newest job holding `key` that completed after `since` (a scan: tests only)."""
        for record in reversed(self._jobs.values()):
            completed = record.state is JobState.COMPLETED and (record.finished_at or 0.0) > since
            if completed and _unique_of(record) == key:
                return record.id
        return None

    def _place(self, record: JobRecord) -> None:
        """Index a record by its (new) state."""
        if record.state is JobState.QUEUED:
            heap = self._ready.setdefault(record.queue, [])
            heapq.heappush(heap, (-record.priority, int(record.id), record.id))
        elif record.state is JobState.SCHEDULED:
            heapq.heappush(self._scheduled, (record.run_at, int(record.id), record.id))
        elif record.state is JobState.ACTIVE:
            self._active.add(record.id)
        if record.state is not JobState.ACTIVE:
            self._active.discard(record.id)
        if record.state in TERMINAL_STATES:
            self._forget_unique(record)

    def _forget_unique(self, record: JobRecord) -> None:
        key = _unique_of(record)
        if key is not None and self._unique.get(key) == record.id:
            del self._unique[key]

    # -- working -----------------------------------------------------------
    def claim(
        self,
        worker_id: str,
        queues: Sequence[str],
        limit: int,
        lease_seconds: float,
        limits: Mapping[str, QueueLimits] | None = None,
    ) -> list[JobRecord]:
        with self._cond:
            now = self.clock.now()
            self._promote_due(now)
            lease = (worker_id, secrets.token_hex(8), now, now + lease_seconds)
            claimed = Claimed()
            for queue in queues:
                heap = None if queue in self._paused else self._ready.get(queue)
                limited = limits.get(queue) if limits else None
                if heap and limited is not None:
                    self._claim_limited(queue, heap, limited, limit - len(claimed), lease, claimed)
                    continue
                while heap and len(claimed) < limit:
                    record = self._jobs.get(heapq.heappop(heap)[2])
                    if record is None or record.state is not JobState.QUEUED:
                        continue  # stale heap entry
                    claimed.append(self._lease(record, lease))
            return claimed

    def _lease(self, record: JobRecord, lease: tuple[str, str, float, float]) -> JobRecord:
        record.state = JobState.ACTIVE
        record.attempt += 1
        record.lease_owner, record.lease_token, record.started_at, record.lease_expires = lease
        self._active.add(record.id)
        return copy.deepcopy(record)

    def _claim_limited(
        self,
        queue: str,
        heap: list[tuple[int, int, str]],
        limited: QueueLimits,
        want: int,
        lease: tuple[str, str, float, float],
        claimed: Claimed,
    ) -> None:
        """Lease what fits the queue's limits from the first SCAN ready jobs; the rest wait."""
        now = lease[2]
        ready = [self._jobs[e[2]] for e in heapq.nsmallest(SCAN, heap) if e[2] in self._jobs]
        candidates = [(r.id, r.task, r.limit_key) for r in ready if r.state is JobState.QUEUED]
        active = [
            (r.task, r.limit_key) for r in map(self._jobs.__getitem__, self._active) if r.queue == queue
        ]
        recent = {}
        for scope, per in windows(limited, candidates).items():
            log = self._starts.setdefault((queue, scope), collections.deque())
            while log and log[0] <= now - per:
                log.popleft()
            recent[scope] = len(log)
        admission = admit(limited, candidates, active, recent, want)
        for scope in admission.starts:
            self._starts[(queue, scope)].append(now)
        claimed.extend(self._lease(self._jobs[job_id], lease) for job_id in admission.ids)
        claimed.held_back = claimed.held_back or admission.held_back

    def _promote_due(self, now: float) -> int:
        promoted = 0
        while self._scheduled and self._scheduled[0][0] <= now:
            record = self._jobs.get(heapq.heappop(self._scheduled)[2])
            if record is not None and record.state is JobState.SCHEDULED and record.run_at <= now:
                record.state = JobState.QUEUED
                self._place(record)
                promoted += 1
        return promoted

    def _owned(self, job_id: str, token: str) -> JobRecord | None:
        record = self._jobs.get(job_id)
        if record is None or record.state is not JobState.ACTIVE or record.lease_token != token:
            return None
        return record

    def extend_leases(self, renewals: Sequence[Renewal], lease_seconds: float) -> list[Fence]:
        with self._cond:
            expires = self.clock.now() + lease_seconds
            fences = []
            for renewal in renewals:
                record = self._owned(renewal.job_id, renewal.token)
                if record is None:
                    fences.append(Fence.LEASE_LOST)
                    continue
                record.lease_expires = expires
                self._note(record, renewal.progress, renewal.logs)
                fences.append(Fence.OK)
            return fences

    def _note(self, record: JobRecord, progress: float | None, logs: list[LogEntry]) -> None:
        if progress is not None:
            record.progress = progress
        if logs:
            self._logs.setdefault(record.id, []).extend(logs)

    def finish(self, outcomes: Sequence[Outcome]) -> list[Fence]:
        with self._cond:
            now = self.clock.now()
            fences = [self._finish_one(outcome, now) for outcome in outcomes]
            self._cond.notify_all()
            return fences

    def _finish_one(self, outcome: Outcome, now: float) -> Fence:
        record = self._owned(outcome.job_id, outcome.token)
        if record is None:
            return Fence.LEASE_LOST
        self._note(record, outcome.progress, outcome.logs)
        record.lease_owner = record.lease_token = None
        record.lease_expires = None
        kind = outcome.kind
        if kind is OutcomeKind.COMPLETED:
            record.state, record.result, record.finished_at = (
                JobState.COMPLETED,
                outcome.result,
                now,
            )
        elif kind is OutcomeKind.RELEASED:
            record.state, record.attempt = JobState.QUEUED, record.attempt - 1
        elif kind is OutcomeKind.SNOOZED:
            record.state, record.attempt = JobState.SCHEDULED, record.attempt - 1
            record.run_at = outcome.retry_at or now
        else:
            record.error = outcome.error
            record.attempts.append(
                AttemptRecord(
                    attempt=record.attempt,
                    error=outcome.error or "",
                    traceback=outcome.traceback,
                    started_at=record.started_at,
                    finished_at=now,
                    worker=outcome.worker,
                )
            )
            if kind is OutcomeKind.RETRY:
                record.state, record.run_at = JobState.SCHEDULED, outcome.retry_at or now
            else:
                record.state, record.finished_at = JobState.DEAD, now
        self._place(record)
        return Fence.OK

    def recover_expired(self) -> list[str]:
        with self._cond:
            now = self.clock.now()
            expired = [self._jobs[i] for i in self._active if (self._jobs[i].lease_expires or 0) < now]
            for record in expired:
                record.attempts.append(
                    AttemptRecord(
                        attempt=record.attempt,
                        error=LEASE_EXPIRED,
                        traceback=None,
                        started_at=record.started_at,
                        finished_at=now,
                        worker=record.lease_owner,
                    )
                )
                record.error = LEASE_EXPIRED
                record.lease_owner = record.lease_token = None
                record.lease_expires = None
                if record.attempt < record.max_attempts:
                    record.state = JobState.QUEUED
                else:
                    record.state, record.finished_at = JobState.DEAD, now
                self._place(record)
            if expired:
                self._cond.notify_all()
            return [r.id for r in expired]

    def resume_waiting(self, resumptions: Sequence[Resumption]) -> list[bool]:
        with self._cond:
            now = self.clock.now()
            moved = []
            for resumption in resumptions:
                record = self._jobs.get(resumption.job_id)
                if record is None or record.state is not JobState.WAITING:
                    moved.append(False)
                    continue
                if resumption.error is None:
                    record.state, record.run_at = JobState.QUEUED, now
                else:
                    record.state, record.finished_at = JobState.DEAD, now
                    record.error = resumption.error
                self._place(record)
                moved.append(True)
            self._cond.notify_all()
            return moved

    def wait_for_work(self, queues: Sequence[str], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                if self._has_ready(queues):
                    return True
                left = deadline - time.monotonic()
                if self._scheduled:
                    left = min(left, max(0.0, self._scheduled[0][0] - self.clock.now()))
                if left <= 0:
                    return self._has_ready(queues)
                self._cond.wait(left)

    def _has_ready(self, queues: Sequence[str]) -> bool:
        # Promote first, so a due job wakes only the queues it belongs to (not paused ones).
        self._promote_due(self.clock.now())
        for queue in queues:
            heap = None if queue in self._paused else self._ready.get(queue)
            while heap:
                record = self._jobs.get(heap[0][2])
                if record is not None and record.state is JobState.QUEUED:
                    return True
                heapq.heappop(heap)
        return False

    def wait_finished(self, job_id: str, deadline: float | None) -> JobRecord | None:
        with self._cond:
            while True:
                record = self._jobs.get(job_id)
                if record is None or record.state in TERMINAL_STATES:
                    return copy.deepcopy(record)
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return copy.deepcopy(record)
                self._cond.wait(left)

    # -- reading -----------------------------------------------------------
    def get(self, ids: Sequence[str]) -> list[JobRecord | None]:
        with self._cond:
            return [copy.deepcopy(self._jobs.get(i)) for i in ids]

    def list_jobs(self, query: JobQuery) -> list[JobRecord]:
        with self._cond:
            matches = [
                r
                for r in reversed(self._jobs.values())
                if (query.queue is None or r.queue == query.queue)
                and (query.state is None or r.state == query.state)
                and (query.task is None or r.task == query.task)
            ]
            return copy.deepcopy(matches[query.offset : query.offset + query.limit])

    def counts(self) -> dict[str, dict[JobState, int]]:
        with self._cond:
            out: dict[str, dict[JobState, int]] = {}
            for r in self._jobs.values():
                per_queue = out.setdefault(r.queue, {})
                per_queue[r.state] = per_queue.get(r.state, 0) + 1
            return out

    def logs(self, job_id: str) -> list[LogEntry]:
        with self._cond:
            return list(self._logs.get(job_id, []))

    # -- events ------------------------------------------------------------
    def publish(self, events: Sequence[Entry]) -> None:
        flat = expand(events)
        with self._cond:
            self._events.extend(flat)
            self._event_seq += len(flat)
            self._cond.notify_all()

    def event_cursor(self) -> str:
        with self._cond:
            return str(self._event_seq)

    def read_events(self, cursor: str, timeout: float) -> tuple[list[JobEvent], str]:
        after = _int_or(cursor, self._event_seq)
        with self._cond:
            self._cond.wait_for(lambda: self._event_seq > after, timeout)
            first = self._event_seq - len(self._events)  # the seq just before the oldest kept
            start = max(after, first)
            found = list(itertools.islice(self._events, start - first, start - first + 500))
            return found, str(start + len(found))

    # -- operating ---------------------------------------------------------
    def cancel(self, ids: Sequence[str]) -> list[bool]:
        with self._cond:
            now = self.clock.now()
            done = []
            for job_id in ids:
                record = self._jobs.get(job_id)
                if record is None or record.state not in CANCELLABLE_STATES:
                    done.append(False)
                    continue
                record.state, record.finished_at = JobState.CANCELLED, now
                record.lease_owner = record.lease_token = None
                record.lease_expires = None
                self._place(record)
                done.append(True)
            self._cond.notify_all()
            return done

    def retry(self, ids: Sequence[str]) -> list[bool]:
        with self._cond:
            now = self.clock.now()
            done = []
            for job_id in ids:
                record = self._jobs.get(job_id)
                key = _unique_of(record)
                if (
                    record is None
                    or record.state not in RETRYABLE_STATES
                    or (key is not None and key in self._unique)
                ):
                    done.append(False)
                    continue
                record.state, record.run_at, record.finished_at = JobState.QUEUED, now, None
                record.max_attempts = record.attempt + record.retries + 1
                if key is not None:
                    self._unique[key] = record.id
                self._place(record)
                done.append(True)
            self._cond.notify_all()
            return done

    def set_paused(self, queues: Sequence[str], paused: bool) -> None:
        with self._cond:
            if paused:
                self._paused.update(queues)
            else:
                self._paused.difference_update(queues)
            self._cond.notify_all()

    def paused(self) -> list[str]:
        with self._cond:
            return sorted(self._paused)

    def purge(
        self,
        *,
        queue: str | None = None,
        states: Sequence[JobState] = (),
        older_than: float | None = None,
        limit: int | None = None,
    ) -> int:
        with self._cond:
            doomed: list[str] = []
            for state in purgeable(states):
                matches = [
                    r.id
                    for r in self._jobs.values()
                    if r.state is state
                    and (queue is None or r.queue == queue)
                    and (older_than is None or (r.finished_at or 0) < older_than)
                ]
                matches.sort(key=lambda job_id: (self._jobs[job_id].finished_at or 0.0, int(job_id)))
                doomed.extend(matches[:limit])
            return self._drop(doomed)

    def delete(self, ids: Sequence[str]) -> int:
        with self._cond:
            return self._drop([i for i in ids if i in self._jobs])

    def _drop(self, ids: Sequence[str]) -> int:
        for job_id in ids:
            record = self._jobs.pop(job_id)
            self._logs.pop(job_id, None)
            self._active.discard(job_id)
            self._forget_unique(record)
        self._cond.notify_all()
        return len(ids)

    def report_worker(self, info: WorkerInfo | None, *, remove: str | None = None) -> None:
        with self._cond:
            if info is not None:
                info.last_seen = self.clock.now()
                self._workers[info.id] = copy.copy(info)
            if remove is not None:
                self._workers.pop(remove, None)

    def workers(self) -> list[WorkerInfo]:
        with self._cond:
            seen = self.clock.now() - WORKER_SEEN_SECONDS
            return sorted(
                (w for w in self._workers.values() if w.last_seen >= seen), key=lambda w: -w.last_seen
            )

    def ping(self) -> None:
        return None

    def close(self) -> None:
        return None


def _unique_of(record: JobRecord | None) -> tuple[str, str] | None:
    """A record's unique key, which is scoped to its queue as on every engine."""
    if record is None or record.unique_key is None:
        return None
    return (record.queue, record.unique_key)


def _int_or(text: str, default: int) -> int:
    try:
        return int(text)
    except ValueError:
        return default
