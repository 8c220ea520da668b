"""Job events across processes: what the dashboard's live view and watchers read.

Producers and workers hand events to an `EventPublisher`, which writes them to the
engine in batches from its own thread (every 20 ms, up to 500 entries a write), so enqueue and
the worker's pump never wait on it. Readers follow the engine's event log with
`app.events()`, a sync and async iterator.

Delivery is for live views: an event buffered in a process that is killed is lost,
and the engine keeps only the newest 1,000 batches. Each batch is one write. Job state in the engine stays
the truth; events say what changed.
"""

from __future__ import annotations

import asyncio
import atexit
import json
import logging
import queue
import threading
import time
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from conveyor.backends.base import Backend

log = logging.getLogger("conveyor.events")

KINDS = ("enqueued", "active", "progress", "completed", "retried", "dead", "cancelled")
KEEP = 1_000  # batches (of up to _BATCH entries) an engine keeps; older ones are trimmed
_FLUSH_EVERY = 0.02  # seconds a publisher gathers events before writing a batch
_BATCH = 500  # entries (an event, or a group of one batch's jobs) in one write
_READ_SLICE = 1.0  # longest block in one engine read, so close() is noticed
# While the engine refuses events (down, or Redis at maxmemory), a warning at most this
# often: one per failed write was 50 lines a second, every 20 ms flush.
_WARN_EVERY = 10.0


@dataclass(slots=True)
class JobEvent:
    """Something that happened to a job: `kind` is one of KINDS; `data` holds the
    details (attempt, error, progress, worker) where the kind has them.

    Not frozen: a frozen dataclass sets each field through object.__setattr__, 1.0 us
    a construction against 0.25 us, and a worker makes two for every job."""

    kind: str
    job_id: str
    queue: str
    task: str
    at: float
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class JobEvents:
    """Events of one kind for several jobs that share everything else, as a worker's
    claimed or stored batch does: written as one entry, read back as one JobEvent per
    job. Encoding an event for each job was 11% of a Redis worker's CPU in a drain."""

    kind: str
    job_ids: list[str]
    queue: str
    task: str
    at: float
    data: dict[str, Any]


Entry = JobEvent | JobEvents  # what publishers hand to an engine


def expand(entries: Iterable[Entry]) -> list[JobEvent]:
    """One JobEvent per job; each gets its own copy of a group's data."""
    out: list[JobEvent] = []
    for e in entries:
        if isinstance(e, JobEvent):
            out.append(e)
        else:
            out.extend(JobEvent(e.kind, i, e.queue, e.task, e.at, dict(e.data)) for i in e.job_ids)
    return out


class EventPublisher:
    """Batches events to the engine from a daemon thread; `emit` never blocks."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self._queue: queue.SimpleQueue[list[Entry] | None] = queue.SimpleQueue()
        self._closing = threading.Event()
        self._closed = False
        self._drops = _Drops()
        self._thread = threading.Thread(target=self._run, name="conveyor-events", daemon=True)
        self._thread.start()
        atexit.register(self.close)

    def emit(self, events: Iterable[Entry]) -> None:
        self._queue.put(list(events))  # one queue operation per call, not per event

    def close(self, timeout: float = 2.0) -> None:
        """Write what is buffered, then stop."""
        if self._closed:
            return
        self._closed = True
        self._closing.set()
        self._queue.put(None)
        self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is not None:
                # Gather for the whole window, then take everything at once: waking this
                # thread for each emit cost about 100 us of every single enqueue here.
                self._closing.wait(_FLUSH_EVERY)
            batch, stop = self._gathered(first)
            self._write(batch)
            if stop:
                return

    def _gathered(self, first: list[Entry] | None) -> tuple[list[Entry], bool]:
        """The events queued so far, and whether close() was asked."""
        batch, stop = first or [], first is None
        while not stop:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is None:
                stop = True
            else:
                batch.extend(item)
        return batch, stop

    def _write(self, batch: list[Entry]) -> None:
        """Write in slices of _BATCH. After a refusal the rest is dropped too: each
        slice would wait out the engine's timeout while more events pile up."""
        for start in range(0, len(batch), _BATCH):
            try:
                self.backend.publish(batch[start : start + _BATCH])
            except Exception as exc:  # away, or refusing what the events hold (a bug)
                # Anything else raised ended this thread silently, and every later emit
                # piled up in its queue for good.
                self._drops.refused(len(batch) - start, exc)
                return
        if batch:
            self._drops.taken()


class _Drops:
    """Events dropped while the engine refuses them: the first refusal is logged at
    once, later ones summed up every _WARN_EVERY seconds and when writes work again."""

    def __init__(self) -> None:
        self._unreported = 0  # dropped since the last warning
        self._warned_at: float | None = None  # None: the last write worked

    def refused(self, count: int, exc: Exception) -> None:
        now = time.monotonic()
        if self._warned_at is None:
            log.warning(
                "dropped %d event(s) (more drops are summed up every %.0f s): %s", count, _WARN_EVERY, exc
            )
            self._warned_at = now
        elif now - self._warned_at >= _WARN_EVERY:
            log.warning(
                "dropped %d more event(s) in %.0f s: %s", self._unreported + count, now - self._warned_at, exc
            )
            self._unreported, self._warned_at = 0, now
        else:
            self._unreported += count

    def taken(self) -> None:
        if self._warned_at is not None:
            more = f"; {self._unreported} more were dropped before" if self._unreported else ""
            log.warning("events are written again%s", more)
            self._unreported, self._warned_at = 0, None


class EventStream:
    """`for event in app.events():` or `async for event in app.events():`.

    Starts at the newest event (or at `after`, a cursor from `stream.cursor`); filters
    by queue and kinds; runs until `close()` (or, with `idle`, after that many seconds
    without an event).
    """

    def __init__(
        self,
        backend: Backend,
        *,
        after: str | None = None,
        queue: str | None = None,
        kinds: Iterable[str] | None = None,
        idle: float | None = None,
    ) -> None:
        wanted = set(kinds or KINDS)
        unknown = wanted - set(KINDS)
        if unknown:
            from conveyor.errors import ConfigError

            raise ConfigError(f"unknown event kind {sorted(unknown)[0]!r}; kinds: {', '.join(KINDS)}")
        self.backend = backend
        self.cursor = backend.event_cursor() if after is None else after  # now, not at first read
        self._queue, self._kinds, self._idle = queue, wanted, idle
        self._buffer: list[JobEvent] = []
        self._closed = False

    def close(self) -> None:
        self._closed = True

    def __iter__(self) -> Iterator[JobEvent]:
        return self

    def __next__(self) -> JobEvent:
        idle_since = time.monotonic()
        while not self._buffer:
            if self._closed:
                raise StopIteration
            if self._idle is not None and time.monotonic() - idle_since >= self._idle:
                raise StopIteration
            self._read()
        return self._buffer.pop(0)

    def _read(self) -> None:
        wait = _READ_SLICE if self._idle is None else min(_READ_SLICE, self._idle)
        events, self.cursor = self.backend.read_events(self.cursor, wait)
        self._buffer.extend(
            e for e in events if e.kind in self._kinds and (self._queue is None or e.queue == self._queue)
        )

    def __aiter__(self) -> AsyncIterator[JobEvent]:
        return self

    async def __anext__(self) -> JobEvent:
        try:
            return await asyncio.to_thread(self.__next__)
        except StopIteration:
            raise StopAsyncIteration from None


def encode(events: Sequence[Entry]) -> str:
    """A batch as the engines store it: one JSON array, one write per batch. A group's
    entry holds its jobs' ids as a list where an event has its one id."""
    return json.dumps([[e.at, e.kind, e.job_id if isinstance(e, JobEvent) else e.job_ids, e.queue, e.task,
                        e.data] for e in events], separators=(",", ":"), default=str)  # fmt: skip


def decode(text: str) -> list[JobEvent]:
    return expand(
        JobEvents(kind, job_id, queue_name, task, at, data or {})
        if isinstance(job_id, list)
        else JobEvent(kind, job_id, queue_name, task, at, data or {})
        for at, kind, job_id, queue_name, task, data in json.loads(text)
    )
