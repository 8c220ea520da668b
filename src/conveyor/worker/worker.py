"""The worker: a few supervised asyncio tasks around one engine.

- the pump claims new jobs for its free slots, while one batch of finished attempts
  is being stored (see store.py): the engine stores one batch as the next runs. For
  jobs of 20 to 250 ms it also holds a few claimed ahead (see _AHEAD_WAIT), so a freed
  slot starts its next job at once instead of after a claim; more, or for longer jobs,
  would let jobs wait in one worker while another sits idle. Engines with an async driver
  (PostgreSQL) claim and store on the event loop; the others from the engine and
  store threads;
- each claimed job runs in its own asyncio task (async tasks on the loop, sync
  tasks in a thread pool);
- the lease keeper renews every running job's lease in one call per interval,
  from its own thread, so a busy event loop or a long sync task cannot starve it;
- maintenance recovers other workers' expired leases and reports this worker.

If a side task dies, the worker stops loudly rather than run without leases.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import contextvars
import functools
import itertools
import logging
import math
import os
import random
import secrets
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

from conveyor.backends.base import AsyncWork, Backend, JobQuery, Outcome, OutcomeKind, WorkerInfo
from conveyor.context import JobContext, bind
from conveyor.errors import BackendUnavailable
from conveyor.events import Entry, JobEvent, JobEvents
from conveyor.job import JobRecord, JobState
from conveyor.limits import HELD_BACK_POLL, Claimed
from conveyor.outage import OutageLog
from conveyor.scheduler.cron import Scheduler
from conveyor.settings import Settings
from conveyor.worker._aio import call_soon, in_thread, loop_factory, loop_name, wait_event
from conveyor.worker.deadlines import Deadlines
from conveyor.worker.executor import Running, failed, released, run_attempt, user_traceback
from conveyor.worker.lease import LeaseKeeper
from conveyor.worker.maintenance import Maintenance
from conveyor.worker.store import MAX_BACKOFF, Storer

if TYPE_CHECKING:
    from conveyor.app import Conveyor

log = logging.getLogger("conveyor.worker")
T = TypeVar("T")
_IDLE_WAIT = 0.5  # longest single engine wait: bounds shutdown and notices dead connections
# Claims for fewer slots go whole: small parts cost more calls than their overlap saves.
# No-op drain on Redis, c=100, 9 alternating runs: whole claims 17,209-22,556 jobs/s,
# split from 64 slots 20,490-24,411, split from 32 15,854-19,714.
_SPLIT_FROM = 64
# Long jobs: those that hold their slot 20 ms or more, on average (a moving average over
# finished jobs). For them a claim's latency is what free slots wait for, so the worker
# claims before it stores the finished batch, and claims for 16 slots or more go out as
# consecutive parts of 8, 16, 32, ..., each part's jobs started as it arrives. Short jobs
# want throughput: the store goes out first (its round trip overlaps the claim's) and
# claims go whole, as parts cost round trips (a no-op drain on Redis fell from 19.5-24.4k
# to 15.5-23.1k jobs/s with them). io-bound (6,000 x 50 ms, c=100, 3 alternating runs):
# Redis 1,860-1,892 -> 1,929-1,939 jobs/s.
_LONG_JOB = 0.020
_FIRST_PART = 8
# Jobs held claimed beyond the free slots, for long jobs up to _AHEAD_UP_TO: as many
# as free up in _AHEAD_WAIT on average, so a freed slot starts its next job at once
# rather than after a claim (1-3 ms under load, and jobs that start together end
# together and queue for it). io-bound (2,000 x 50 ms, c=100: 16 held), 4 alternating
# runs: Redis 1,864-1,884 -> 1,896-1,926 jobs/s, PostgreSQL 1,766-1,819 -> 1,850-1,885.
# A held job waits for the next free slot: ~8 ms when jobs end evenly, up to a job's
# run time when they end in groups (up to 40 ms seen there). Sizing it by the jobs
# predicted to end within 16 ms instead never held one over 21 ms but gained only
# half as much (Redis 1,887-1,898, PostgreSQL 1,827-1,833).
_AHEAD_WAIT = 0.008
# Past this average run time a claim's round trip is under 1% of a job: none are held.
_AHEAD_UP_TO = 0.250
_RUN_TIME_WEIGHT = 1 / 16  # each finished job's share of the moving average (see _LONG_JOB)


def part_sizes(want: int) -> list[int]:
    """`want` slots as parts of 8, 16, 32, ...; the last takes the rest (under twice its size)."""
    sizes, size = [], _FIRST_PART
    while want >= 2 * size:
        sizes.append(size)
        want -= size
        size *= 2
    return [*sizes, want] if want else sizes


def claim_ahead(concurrency: int, run_time: float) -> int:
    """Jobs to hold claimed beyond the free slots: the slots that free up in _AHEAD_WAIT
    when each job holds one `run_time` seconds, at most a quarter of `concurrency`;
    none for jobs shorter than _LONG_JOB or longer than _AHEAD_UP_TO."""
    if run_time <= 0 or not _LONG_JOB <= run_time <= _AHEAD_UP_TO:
        return 0
    return min(concurrency // 4, int(concurrency * _AHEAD_WAIT / run_time))


def _can_spare_one(record: JobRecord) -> bool:
    """Whether a claimed job has an attempt after this one: only such jobs are held (see
    Worker._spare_attempts)."""
    return record.attempt < record.max_attempts


_PAGE = 500  # active jobs listed at a time when taking back a lost claim's jobs
# Python 3.12+: a job's task runs its first step at once, so a job that never waits
# (most do little) finishes without being scheduled through the loop's queue.
_eager = getattr(asyncio, "eager_task_factory", None)
_UNREADABLE = "Unreadable"  # a dead job's error when the engine could not read its row


class ClaimFault(BackendUnavailable):
    """A claim failed with an error other than BackendUnavailable: a bug, or a reply
    the engine could not read. The worker logs its traceback and backs off as after an
    outage; it used to stop, and a restarted worker met the same error."""


@contextlib.contextmanager
def _claim_faults() -> Iterator[None]:
    """Around an engine claim, sync or async: its faults raised as ClaimFault."""
    try:
        yield
    except BackendUnavailable:
        raise
    except Exception as exc:
        raise ClaimFault(f"the engine failed to claim: {exc!r}") from exc


def _claim_call(claim: Callable[..., list[JobRecord]], *args: Any) -> list[JobRecord]:
    """`claim(*args)`, an engine claim in an engine thread, its faults as ClaimFault."""
    with _claim_faults():
        return claim(*args)


class Worker:
    """Runs an app's jobs from its queues; `run()` blocks until stopped."""

    def __init__(self, app: Conveyor, settings: Settings) -> None:
        self.app = app
        self.settings = settings
        self.queues = settings.queues
        self.concurrency = settings.concurrency
        self.id = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
        self.processed = 0
        self.started_at = time.time()
        self._running: dict[str, Running] = {}
        self._outcomes: list[Outcome] = []
        # Finished jobs whose outcome is not stored yet keep their lease renewed, so an
        # engine outage longer than the lease does not hand them to another worker. By job
        # and lease token (one per claim): a retried job claimed again before its retry's
        # store returned can end twice before that batch is done, and each needs its own.
        self._unstored: dict[tuple[str, str], Running] = {}
        self._used = 0
        # Claimed ahead of a free slot (long jobs, see _AHEAD_WAIT), in claim order; each
        # starts as a slot frees, and all go back unspent when the worker stops.
        self._ahead: dict[str, Running] = {}
        # Whether the last claim's jobs all had an attempt to spare. A held job counts an
        # attempt if this worker is killed, as a running one does; so jobs are held only
        # while they can spare one, and none on its last attempt ends dead unstarted.
        self._spare_attempts = True
        self._stopping = False
        self._hard = False
        self._burst = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._stop: asyncio.Event | None = None
        # The waiter thread's wait for work; on the threaded claim path it claims as soon
        # as it is woken, for the slots it was given (`_waiter_slots`, kept from the pump).
        self._waiting: asyncio.Future[list[JobRecord] | None] | None = None
        self._waiter_slots = 0
        self._storing: asyncio.Task[bool] | None = None  # the batch of outcomes being stored
        # Ids in that batch, and jobs claimed again meanwhile: a retried job can be claimed
        # once the store commits, before the store's reply comes back, and its "active"
        # event waits for the batch's "retried" one (see _say_started).
        self._in_store: frozenset[str] = frozenset()
        self._late_starts: list[Running] = []
        self._threads: list[concurrent.futures.ThreadPoolExecutor] = []  # engine threads to join
        self._aio: AsyncWork | None = None  # the engine's async claim/finish, where it has one
        self._claim_backoff = 0.0  # grows 0.1 s -> 5 s while the engine refuses claims
        self._outage = OutageLog(log)  # every loop's engine failures, told once per outage
        self._run_time = 0.0  # seconds a job holds its slot, moving average (see _LONG_JOB)
        # A claim failed: it may have leased jobs whose reply never came (see _take_back).
        self._claim_lost = False
        self._limits = app.limits_for(self.queues) or None  # rate/concurrency limits per queue
        # Job events, batched; set once the engine is reached (opening PostgreSQL connects).
        self._emit: Callable[[Iterable[Entry]], None] | None = None
        self._stop_early: bool | None = None  # stop() before the loop ran: hard or not
        self.started = threading.Event()  # set once the worker can be stopped

    # -- lifecycle ---------------------------------------------------------
    def run(self, *, burst: bool = False, handle_signals: bool = True) -> int:
        """Run until stopped (or, with burst, until no job is ready); returns an exit code.

        The loop is the `loop` setting's (uvloop's where installed); `arun()` runs on the
        caller's own loop instead.
        """
        with asyncio.Runner(loop_factory=loop_factory(self.settings.loop)) as runner:
            return runner.run(self.arun(burst=burst, handle_signals=handle_signals))

    def stop(self, *, hard: bool = False) -> None:
        """Stop claiming; running jobs finish within the grace period (hard: released now).

        Safe to call from any thread.
        """
        loop = self._loop
        if loop is None:
            self._stop_early = hard or bool(self._stop_early)
            return
        if loop.is_closed():
            return
        call_soon(loop, functools.partial(self._begin_stop, hard))

    def _begin_stop(self, hard: bool) -> None:
        self._stopping = True
        self._hard = self._hard or hard
        assert self._stop is not None
        assert self._wake is not None
        self._return_ahead()
        self._stop.set()
        self._wake.set()

    def _on_signal(self, signum: int) -> None:
        name = signal.Signals(signum).name
        if self._stopping:
            log.warning("%s again: releasing %d running job(s) and exiting now", name, len(self._running))
            self._begin_stop(hard=True)
            return
        log.info(
            "%s: finishing %d running job(s) within %gs; send it again to stop at once",
            name,
            len(self._running),
            self.settings.shutdown_grace,
        )
        self._begin_stop(hard=False)

    async def arun(self, *, burst: bool = False, handle_signals: bool = False) -> int:
        """The worker's main coroutine; returns 0 after a clean stop, 1 after a crash."""
        self._loop = asyncio.get_running_loop()
        # Each job's context starts as a copy of this one: a held job starts inside the
        # task of the job that freed its slot, whose own context variables are not its.
        self._context = contextvars.copy_context()
        self._wake, self._stop = asyncio.Event(), asyncio.Event()
        self._deadlines = Deadlines(self._loop)
        self._burst = burst
        self._open_threads()
        if handle_signals:
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._loop.add_signal_handler(signum, self._on_signal, signum)
        if self._stop_early is not None:
            self._begin_stop(self._stop_early)
        self.started.set()
        try:
            backend = await self._reach()
            if backend is None:
                return 0  # stopped while the engine was away
            self._emit = self.app.publisher().emit if self.settings.events else None
            self._leases, self._maintenance = self._keepers(backend)
            self._open_lanes(backend)
            self._aio = backend.async_work()
            self._storer = Storer(
                backend, self._aio, self._store, self.id, self._unstored, self._outage, self._emit,
                hard_stop=lambda: self._hard and self._stopping,
            )  # fmt: skip
            await self._warm_up()
            log.info(
                "worker %s started: queues %s, concurrency %d, engine %s, loop %s",
                self.id,
                ",".join(self.queues),
                self.concurrency,
                backend.url.split("://")[0],
                loop_name(self._loop),
            )
            return await self._supervise()
        finally:
            if handle_signals:
                for signum in (signal.SIGINT, signal.SIGTERM):
                    self._loop.remove_signal_handler(signum)
            if self._aio is not None:
                await self._aio.aclose()
            await self._close_threads()

    async def _reach(self) -> Backend | None:
        """Open and check the engine and report this worker; while the engine is
        unavailable (down, refusing, or missing a grant), try again (0.5 s doubling to
        5 s) for up to `start_timeout`. None if stopped meanwhile. Until 2026-12-07 a
        worker started before its Redis or PostgreSQL exited at once."""
        assert self._stop is not None
        limit = self.settings.start_timeout
        deadline = None if limit is None else time.monotonic() + limit
        pause = 0.5
        while not self._stop.is_set():
            try:
                backend = await in_thread(self._db, lambda: self.app.backend)
                await in_thread(self._db, backend.preflight)
                await in_thread(self._db, backend.report_worker, self._info())
                self._outage.worked("start")
                return backend
            except BackendUnavailable as exc:
                left = math.inf if deadline is None else deadline - time.monotonic()
                if left <= 0:
                    raise BackendUnavailable(f"{exc} (gave up after start_timeout={limit:g}s)") from exc
                wait = min(pause * random.uniform(0.8, 1.2), left)
                until = "for ever" if deadline is None else f"{left:.0f}s more"
                if self._outage.failed("start", exc):
                    said = " ".join(str(exc).split())  # libpq's reasons span lines
                    log.warning("engine unavailable at start (%s); trying again (%s), up to every %.0fs",
                                said, until, MAX_BACKOFF)  # fmt: skip
                await wait_event(self._stop, wait)
                pause = min(pause * 2, MAX_BACKOFF)
        return None

    def _keepers(self, backend: Backend) -> tuple[LeaseKeeper, Maintenance]:
        """The lease keeper (renewals, progress) and maintenance (recovery, retention)."""
        leases = LeaseKeeper(
            backend,
            self._held,
            self.settings.lease_timeout,
            self.settings.heartbeat_every,
            on_progress=self._progressed if self._emit is not None else None,
            outage=self._outage,
        )
        done, dead = self.settings.keep_completed, self.settings.keep_dead
        keep = {JobState.COMPLETED: done, JobState.CANCELLED: done, JobState.DEAD: dead}
        most, most_dead = self.settings.keep_completed_count, self.settings.keep_dead_count
        counts = {JobState.COMPLETED: most, JobState.CANCELLED: most, JobState.DEAD: most_dead}
        maintenance = Maintenance(
            backend, leases.thread, self.settings.lease_timeout, self._info, self._request_wake,
            retention=keep, now=self.app.clock.now, keep_counts=counts, outage=self._outage,
        )  # fmt: skip
        return leases, maintenance

    def _open_threads(self) -> None:
        """The engine's threads (the first claim lane's, the store's, the waiter's) and
        the task threads; each engine thread keeps its own connection. Threads start on
        first use."""
        self._db = concurrent.futures.ThreadPoolExecutor(1, "conveyor-engine")
        self._claimers = [self._db]
        self._store = concurrent.futures.ThreadPoolExecutor(1, "conveyor-store")
        self._waiter = concurrent.futures.ThreadPoolExecutor(1, "conveyor-wait")
        self._pool = concurrent.futures.ThreadPoolExecutor(self.concurrency, "conveyor-task")
        self._threads += [self._db, self._store, self._waiter]

    def _open_lanes(self, backend: Backend) -> None:
        """One more claim thread per lane the engine has beyond the first; and the lease
        keeper's thread, joined on the way out as the others are."""
        for lane in range(2, backend.claim_lanes + 1):
            self._claimers.append(concurrent.futures.ThreadPoolExecutor(1, f"conveyor-engine-{lane}"))
        self._threads += [*self._claimers[1:], self._leases.thread]

    async def _close_threads(self) -> None:
        """Join the engine threads (the waiter returns within _IDLE_WAIT) so the app can
        close its connections safely; task threads are the user's and may hang."""
        self._pool.shutdown(wait=False, cancel_futures=True)
        for executor in self._threads:
            await asyncio.to_thread(executor.shutdown, wait=True, cancel_futures=True)

    async def _warm_up(self) -> None:
        """Each engine thread's connection opened before the first claim (Backend.warm_up).
        An engine that fails here is only logged: the first claim backs off and retries."""
        backend = self.app.backend
        threads = (*self._claimers, self._store, self._waiter)
        try:
            await asyncio.gather(*(in_thread(thread, backend.warm_up) for thread in threads))
            if self._aio is not None:
                await self._aio.warm_up()
        except BackendUnavailable as exc:
            log.warning("could not connect the engine threads before claiming: %s", exc)

    async def _supervise(self) -> int:
        assert self._stop is not None
        pump = asyncio.create_task(self._pump(), name="conveyor-pump")
        side = [
            asyncio.create_task(self._leases.run(), name="conveyor-leases"),
            asyncio.create_task(self._maintenance.run(), name="conveyor-maintenance"),
        ]
        if self.settings.scheduler and self.app.schedules:
            app = self.app
            scheduler = Scheduler(
                app.backend, app.schedules, app.tick_job, app.clock.now, outage=self._outage
            )
            self._threads.append(scheduler.thread)
            side.append(asyncio.create_task(scheduler.run(), name="conveyor-scheduler"))
        stopper = asyncio.create_task(self._shutdown_when_asked(), name="conveyor-shutdown")
        # Side tasks never return; if one does (it raised), the worker must not go on.
        done, _ = await asyncio.wait([pump, *side], return_when=asyncio.FIRST_COMPLETED)
        crashed = [t for t in done if t.cancelled() or t.exception() is not None or t is not pump]
        for task in crashed:
            error = None if task.cancelled() else task.exception()
            log.critical("worker task %s died; stopping", task.get_name(), exc_info=error)
        if crashed and not pump.done():
            self._begin_stop(hard=True)
            await asyncio.wait([pump], timeout=self.settings.shutdown_grace)
        rest: list[asyncio.Task[Any]] = [*side, stopper, pump]
        if self._storing is not None:  # a crash left a batch on its way: its jobs' leases expire
            rest.append(self._storing)
        for task in rest:
            task.cancel()
        await asyncio.gather(*rest, return_exceptions=True)
        await self._farewell()
        return 1 if crashed else 0

    async def _shutdown_when_asked(self) -> None:
        assert self._stop is not None
        assert self._wake is not None
        await self._stop.wait()
        if not self._hard and self._running:
            deadline = time.monotonic() + self.settings.shutdown_grace
            while self._running and not self._hard and time.monotonic() < deadline:
                self._wake.clear()
                await wait_event(self._wake, deadline - time.monotonic())
        if self._running:
            log.warning(
                "releasing %d job(s) still running so other workers can take them",
                len(self._running),
            )
            for job in list(self._running.values()):
                self._release(job)

    async def _farewell(self) -> None:
        if self._waiting is not None:  # a wait still out (it ends within _IDLE_WAIT)
            waiting, self._waiting = self._waiting, None
            try:
                claimed = await waiting
            except Exception:  # an engine error while stopping: nothing was claimed
                claimed = None
            if claimed:  # claimed as the stop began: hand them back, their attempt unspent
                await self._hand_back(claimed)
        try:
            await in_thread(self._db, self.app.backend.report_worker, None, remove=self.id)
        except BackendUnavailable as exc:
            log.warning("could not unregister worker: %s", exc)
        except Exception:  # the stop goes on: the entry ages out of the list of workers
            log.exception("could not unregister worker")
        log.info("worker %s stopped after %d job(s)", self.id, self.processed)

    async def _hand_back(self, claimed: list[JobRecord]) -> None:
        back = [Outcome(r.id, r.lease_token or "", OutcomeKind.RELEASED, worker=self.id) for r in claimed]
        try:
            await in_thread(self._store, self.app.backend.finish, back)
        except BackendUnavailable as exc:
            log.error("could not hand back %d job(s); they run again after their lease: %s", len(back), exc)
        except Exception:  # the engine refused them: the same, and the worker goes on
            log.exception("could not hand back %d job(s); they run again after their lease", len(back))

    # -- the pump ----------------------------------------------------------
    async def _pump(self) -> None:
        assert self._wake is not None
        while True:
            self._wake.clear()
            # Long jobs' free slots claim before the finished batch is stored: a store sent
            # first takes the engine (and the GIL) ahead of the claim they wait for. Redis
            # io-bound, 4 alternating pairs: 1,823-1,854 -> 1,856-1,879 jobs/s. Short jobs
            # store first, so the store's round trip overlaps the claim's.
            long_jobs = self._long_jobs()
            if not long_jobs and not self._store_outcomes():
                return
            await self._waited()
            free = self.concurrency - self._used - self._waiter_slots
            idle = self._stopping or self._storer.refused or not self.settings.processors
            want = 0 if idle else free + self._ahead_wanted()
            if want == 0:
                if long_jobs and not self._store_outcomes():
                    return
                if self._stopping and not self._running and self._storing is None:
                    return
                await self._wake.wait()
                continue
            claimed = await self._claim(want)
            if not self._store_outcomes():
                return
            if self._stopping or len(claimed) == want:
                continue  # the queue may hold more: go round at once
            held_back = isinstance(claimed, Claimed) and claimed.held_back
            if not claimed and not self._running and self._burst and not held_back:
                self._begin_stop(hard=False)
                continue
            if held_back:  # ready jobs wait for a limit: look again soon, or when one of ours ends
                await wait_event(self._wake, HELD_BACK_POLL)
            elif want > len(claimed):
                await self._wait_for_work()
            else:
                await self._wake.wait()

    def _long_jobs(self) -> bool:
        """Whether jobs hold their slot long enough that claims want latency (_LONG_JOB)."""
        return self._run_time >= _LONG_JOB

    def _ahead_wanted(self) -> int:
        """How many more jobs to claim ahead of free slots (see _AHEAD_WAIT). None under
        rate or concurrency limits: a job held here would count against them unstarted."""
        if self._limits is not None or not self._spare_attempts:
            return 0
        return max(0, claim_ahead(self.concurrency, self._run_time) - len(self._ahead))

    def _store_outcomes(self) -> bool:
        """Start storing finished attempts unless a batch is on its way; False: give up.

        One batch at a time (on the engine's async path, else in the store thread), so
        claiming and running go on meanwhile; the batch's end wakes the pump.
        """
        assert self._wake is not None
        if self._storing is not None and self._storing.done():
            stored, self._storing = self._storing, None
            if not stored.result():  # a bug in _flush raises here and stops the worker
                return False
        if self._outcomes and self._storing is None:
            self._storing = asyncio.create_task(self._flush(), name="conveyor-store")
            self._storing.add_done_callback(lambda _: self._request_wake())
        return True

    async def _claim(self, want: int) -> list[JobRecord]:
        """Claim and start up to `want` jobs; [] (after a pause) when the engine refuses.
        First, after a failed claim, the jobs it may have leased (see _take_back)."""
        taken: list[JobRecord] = []
        if self._claim_lost and self._waiting is None and not self.app.backend.reclaims_lost_claims:
            try:
                taken = await self._take_back(want)
            except BackendUnavailable as exc:
                await self._claim_failed(exc)
                return []
            if len(taken) == want:
                return taken
        claimed = await self._claim_new(want - len(taken))
        return [*taken, *claimed] if taken else claimed

    async def _claim_new(self, want: int) -> list[JobRecord]:
        """Claim and start up to `want` ready jobs, whole, in parts or across lanes."""
        backend = self.app.backend
        lease = self.settings.lease_timeout
        try:
            if self._limits is None and want >= 2 * _FIRST_PART and self._long_jobs():
                return await self._claim_streamed(part_sizes(want), lease)
            if self._aio is not None and self._limits is None:
                claimed = await self._aio_claim(want, lease)
            elif len(self._claimers) > 1 and self._limits is None and want >= _SPLIT_FROM:
                return await self._claim_in_parts(want, lease)
            else:
                claim = functools.partial(backend.claim, limits=self._limits)
                claimed = await in_thread(self._db, _claim_call, claim, self.id, self.queues, want, lease)
        except BackendUnavailable as exc:
            await self._claim_failed(exc)
            return []
        self._claim_worked()
        self._begin(claimed)
        return claimed

    async def _aio_claim(self, want: int, lease: float) -> list[JobRecord]:
        """The engine's async claim, its faults as ClaimFault."""
        assert self._aio is not None
        with _claim_faults():
            return await self._aio.claim(self.id, self.queues, want, lease)

    async def _claim_streamed(self, sizes: list[int], lease: float) -> list[JobRecord]:
        """One claim as consecutive parts (see _LONG_JOB), each part's jobs started as
        it arrives; it ends early when a part comes back short (the queue is drained) or
        the worker is stopping. A part refused after others arrived is only logged."""
        claimed: list[JobRecord] = []
        claim = self.app.backend.claim
        for size in sizes:
            try:
                if self._aio is not None:
                    part = await self._aio_claim(size, lease)
                else:
                    part = await in_thread(self._db, _claim_call, claim, self.id, self.queues, size, lease)
            except BackendUnavailable as exc:
                if not claimed:
                    raise
                self._part_refused(exc)
                break
            self._begin(part)
            claimed.extend(part)
            if len(part) < size or self._stopping:
                break
        self._claim_worked()
        return claimed

    async def _claim_in_parts(self, want: int, lease: float) -> list[JobRecord]:
        """One claim split across the engine threads (`Backend.claim_lanes`), each part's
        jobs started as it arrives; a part the engine refused is only logged if another
        part got jobs."""
        lanes = len(self._claimers)
        sizes = [want // lanes + (i < want % lanes) for i in range(lanes)]
        backend = self.app.backend
        parts = [
            in_thread(thread, _claim_call, backend.claim, self.id, self.queues, size, lease)
            for thread, size in zip(self._claimers, sizes, strict=True)
        ]
        claimed: list[JobRecord] = []
        refused: BackendUnavailable | None = None
        for part in asyncio.as_completed(parts):
            try:
                records = await part
            except BackendUnavailable as exc:
                refused = exc
                continue
            self._begin(records)
            claimed.extend(records)
        if refused is not None and not claimed:
            await self._claim_failed(refused)
        elif refused is not None:
            self._part_refused(refused)
        else:
            self._claim_worked()
        return claimed

    def _part_refused(self, exc: BackendUnavailable) -> None:
        """A part of a claim failed after others landed: their jobs run; the failed part
        may have leased jobs whose reply never came (see _take_back)."""
        if self._outage.failed("claim", exc):
            log.error("could not claim part of a batch: %s", exc)
        self._claim_lost = True

    async def _take_back(self, want: int) -> list[JobRecord]:
        """Start the jobs leased to this worker that it does not know: a claim whose reply
        was lost (the engine ran it, then the connection dropped) leased them. Else they
        would sit leased until the lease ran out and then count as a failed attempt, so a
        job with no retries would end dead without having run. Worker ids are unique per
        process and no other claim is in flight here, so such a job is nobody else's.
        Beyond `want` they go back unspent. Engines whose claim takes them back itself
        (Backend.reclaims_lost_claims) are not asked."""
        # Known before the listing: a store in flight may finish a job the listing still
        # reads as active, and drop it from _unstored before the listing is back.
        known = self._held().keys()
        try:
            found = await in_thread(self._db, self._leased_to_me)
        except BackendUnavailable:
            raise
        except Exception:  # a row it cannot read: the jobs run again after their lease
            log.exception("could not list the jobs a lost claim may have leased")
            found = []
        self._claim_lost = False
        lost = [r for r in found if r.id not in known]
        if not lost:
            return []
        log.warning("took back %d job(s) whose claim's reply was lost", len(lost))
        if len(lost) > want:
            await self._hand_back(lost[want:])
        self._begin(lost[:want])
        return lost[:want]

    def _leased_to_me(self) -> list[JobRecord]:
        """In the engine thread: the active jobs of this worker's queues leased to it.
        Pages may shift while other workers finish jobs, so one can be missed: it then
        runs after its lease expires, as it did before any take-back."""
        found: list[JobRecord] = []
        for queue in self.queues:
            for offset in itertools.count(0, _PAGE):
                page = self.app.backend.list_jobs(
                    JobQuery(queue=queue, state=JobState.ACTIVE, limit=_PAGE, offset=offset)
                )
                found.extend(r for r in page if r.lease_owner == self.id)
                if len(page) < _PAGE:
                    break
        return found

    def _claim_worked(self) -> None:
        self._claim_backoff = 0.0
        self._outage.worked("claim")

    async def _claim_failed(self, exc: BackendUnavailable) -> None:
        self._claim_lost = True
        self._claim_backoff = min(MAX_BACKOFF, self._claim_backoff * 2 or 0.1)
        if isinstance(exc, ClaimFault):  # a bug, not an outage: its traceback is the news
            log.error("could not claim jobs, retrying in %.1fs: %s", self._claim_backoff, exc, exc_info=exc)
        elif self._outage.failed("claim", exc):
            log.error("could not claim jobs, retrying (backing off up to %.0fs): %s", MAX_BACKOFF, exc)
        assert self._stop is not None
        await wait_event(self._stop, self._claim_backoff)

    def _begin(self, claimed: list[JobRecord]) -> None:
        """Start claimed jobs and say so; those beyond the free slots wait in _ahead,
        but one on its last attempt goes back unspent (see _spare_attempts). A claim
        that lands after the stop began goes back whole: the stop's wait for running
        jobs may be over, and nothing would bound theirs."""
        if isinstance(claimed, Claimed) and claimed.unreadable:
            self._bury(claimed.unreadable)
        jobs = [Running(record, JobContext(record, self._leases.request)) for record in claimed]
        if self._stopping:
            for job in jobs:
                self._give_back(job)
            return
        if jobs:
            self._spare_attempts = all(map(_can_spare_one, claimed))
        room = max(0, self.concurrency - self._used)
        for job in jobs[room:]:
            if _can_spare_one(job.record):
                self._ahead[job.id] = job
            else:
                self._give_back(job)
        for job in jobs[:room]:
            self._run(job)
        self._say_started(jobs[:room])

    def _bury(self, unreadable: list[tuple[str, str, str]]) -> None:
        """Store dead the jobs a claim leased but the engine could not read (see
        Claimed.read), with the next batch: their code cannot run without their record."""
        for job_id, token, error in unreadable:
            log.error("job %s: the engine could not read it; storing it dead: %s", job_id, error)
            self._outcomes.append(
                Outcome(job_id, token, OutcomeKind.DEAD, worker=self.id, error=f"{_UNREADABLE}: {error}")
            )

    def _start_ahead(self) -> None:
        """Start jobs claimed ahead in the free slots; drop those whose lease is gone.
        One at a time: on Python 3.12+ a job that never waits ends inside _run, and
        its freed slot comes back here before the loop goes on."""
        started: list[Running] = []
        while self._ahead and self._used < self.concurrency:
            job = self._ahead.pop(next(iter(self._ahead)))
            if not job.lost:  # cancelled, or expired and taken over, while it waited here
                job.started = time.monotonic()
                self._run(job)
                started.append(job)
        self._say_started(started)

    def _return_ahead(self) -> None:
        """Hand the jobs claimed ahead back unspent: the worker is stopping."""
        for job in self._ahead.values():
            self._give_back(job)
        self._ahead.clear()

    def _held(self) -> dict[str, Running]:
        """Every job this worker holds a lease on, by id: finished but not yet stored,
        claimed ahead, and running (the lease keeper renews these)."""
        return {**{j.id: j for j in self._unstored.values()}, **self._ahead, **self._running}

    def _give_back(self, job: Running) -> None:
        """Hand a job that has not started back unspent: it is stored with the next batch
        and its lease renewed until then, like a finished job's."""
        self._unstored[job.id, job.token] = job
        self._outcomes.append(released(job, self.id))

    def _say_started(self, jobs: list[Running]) -> None:
        """Emit the jobs' "active" events, one entry per queue, task, claim and attempt.
        Those of jobs whose last outcome is still being stored go after that outcome's."""
        if self._in_store and not self._in_store.isdisjoint(j.id for j in jobs):  # rare: one pass
            self._late_starts.extend(j for j in jobs if j.id in self._in_store)
            jobs = [j for j in jobs if j.id not in self._in_store]
        if self._emit is not None and jobs:
            started: dict[tuple[str, str, float, int], list[str]] = {}
            for r in (job.record for job in jobs):
                started.setdefault((r.queue, r.task, r.started_at or 0.0, r.attempt), []).append(r.id)
            self._emit(
                JobEvents("active", ids, queue, task, at, {"worker": self.id, "attempt": attempt})
                for (queue, task, at, attempt), ids in started.items()
            )

    async def _flush(self) -> bool:
        """Store finished attempts; keeps them (and retries) on engine errors. False: give up."""
        await self._leases.quiet()  # the renewal on its way may carry these jobs' last lines
        outcomes, self._outcomes = self._outcomes, []
        if self._emit is not None:
            self._in_store = frozenset(o.job_id for o in outcomes)
        try:
            stored = await self._storer.store(outcomes)
            if not stored:  # a hard stop gave up on an engine that is out
                self._running.clear()
            return stored
        finally:
            self._in_store = frozenset()
            late, self._late_starts = self._late_starts, []
            self._say_started(late)

    async def _wait_for_work(self) -> None:
        """Block in the waiter thread until the engine signals work, or a job of ours ends.

        On the threaded claim path the waiter claims as soon as it is woken, for the slots
        free when it began (held back from the pump meanwhile): that saves the trip from
        the waiter to the loop and on to the engine thread, about 0.2 ms of latency.
        """
        assert self._loop is not None
        assert self._wake is not None
        if self._waiting is None:
            direct = self._aio is None and self._limits is None
            self._waiter_slots = self.concurrency - self._used if direct else 0
            wait = functools.partial(self._wait_then_claim, self._waiter_slots)
            self._waiting = self._loop.run_in_executor(self._waiter, wait)
            self._waiting.add_done_callback(lambda _: self._request_wake())
        await self._wake.wait()  # the waiter's end wakes the pump, as does a job's
        await self._waited()

    async def _waited(self) -> None:
        """Take the waiter's outcome once it is in: start what it claimed."""
        if self._waiting is None or not self._waiting.done():
            return
        waiting, self._waiting, self._waiter_slots = self._waiting, None, 0
        error = waiting.exception()
        if isinstance(error, BackendUnavailable):
            assert self._wake is not None
            if isinstance(error, ClaimFault):
                log.error("engine error while waiting for work: %s", error, exc_info=error)
            elif self._outage.failed("wait", error):
                log.error("engine error while waiting for work: %s", error)
            self._claim_lost = True  # it may have failed in its claim
            await wait_event(self._wake, _IDLE_WAIT)
        elif error is not None:
            raise error
        else:
            self._outage.worked("wait")
            if claimed := waiting.result():
                self._begin(claimed)

    def _wait_then_claim(self, slots: int) -> list[JobRecord] | None:
        """In the waiter thread: wait for work, then claim up to `slots` jobs (0: do not)."""
        backend = self.app.backend
        if not backend.wait_for_work(self.queues, _IDLE_WAIT) or not slots or self._stopping:
            return None
        return _claim_call(backend.claim, self.id, self.queues, slots, self.settings.lease_timeout)

    def _progressed(self, jobs: list[tuple[Running, float]]) -> None:
        if self._emit is not None:
            now = time.time()
            self._emit(
                JobEvent("progress", j.id, j.record.queue, j.record.task, now, {"progress": p})
                for j, p in jobs
            )

    # -- running jobs ------------------------------------------------------
    def _run(self, job: Running) -> None:
        """Run the job in its own task (started at once on Python 3.12+)."""
        assert self._loop is not None
        self._running[job.id] = job
        self._used += 1
        context = self._context.copy()
        context.run(bind, job.context)
        if _eager is None:
            job.runner = self._loop.create_task(self._execute(job), context=context)
        else:
            job.runner = _eager(self._loop, self._execute(job), context=context)

    async def _execute(self, job: Running) -> None:
        outcome: Outcome | None
        try:
            outcome = await run_attempt(self.app, self.settings, job, self._pool, self._deadlines, self.id)
        except asyncio.CancelledError as exc:
            # Ours (shutdown released the job, or its lease is lost) or the task's own.
            ours = job.lost or self._running.get(job.id) is not job
            outcome = (
                None if ours else failed(self.app, self.settings, job, self.id, exc, user_traceback(exc))
            )
        finally:
            self._free_slot_when_done(job)
        if outcome is not None and self._running.get(job.id) is job:
            self._hand_over(job, outcome)
        elif outcome is None and job.lost and self._running.get(job.id) is job:
            del self._running[job.id]  # cancelled or taken over: nothing to store
            self._request_wake()

    def _hand_over(self, job: Running, outcome: Outcome) -> None:
        assert self._wake is not None
        del self._running[job.id]
        self._unstored[job.id, outcome.token] = job
        self._outcomes.append(outcome)
        self.processed += 1
        self._run_time += (time.monotonic() - job.started - self._run_time) * _RUN_TIME_WEIGHT
        if outcome.kind is OutcomeKind.DEAD:
            log.error("job %s (%s) is dead: %s", job.id, job.record.task, outcome.error)
        elif outcome.kind is OutcomeKind.RETRY:
            log.warning(
                "job %s (%s) attempt %d failed, will retry: %s",
                job.id,
                job.record.task,
                job.record.attempt,
                outcome.error,
            )
        self._wake.set()

    def _release(self, job: Running) -> None:
        job.context.mark_cancelled()
        self._hand_over(job, released(job, self.id))
        if job.runner is not None and not job.runner.done():
            job.runner.cancel()

    def _free_slot_when_done(self, job: Running) -> None:
        """A slot is free once the job's code has returned; a timed-out thread keeps it."""
        assert self._loop is not None
        thread = job.thread
        if thread is None or thread.done():
            self._free_slot()
            return
        loop = self._loop
        thread.add_done_callback(lambda _: call_soon(loop, self._free_slot))

    def _free_slot(self) -> None:
        assert self._wake is not None
        self._used -= 1
        if self._ahead:
            self._start_ahead()
        self._wake.set()

    def _request_wake(self) -> None:
        if self._wake is not None:
            self._wake.set()

    def _info(self) -> WorkerInfo:
        host, pid = socket.gethostname(), os.getpid()
        return WorkerInfo(
            id=self.id,
            host=host,
            pid=pid,
            queues=self.queues,
            concurrency=self.concurrency,
            started_at=self.started_at,
            active=len(self._running),
            processed=self.processed,
        )
