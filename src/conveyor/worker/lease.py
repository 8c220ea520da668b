"""The lease keeper: renews the lease of every job running or awaiting storage, in one call.

It runs its engine calls on its own thread, so neither a long sync task nor a
busy event loop nor a slow claim can starve it. Progress and log lines buffered
by the jobs travel with the renewal. A job whose lease is gone (cancelled, or
expired and taken by another worker) is flagged so cooperative code can stop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
from collections.abc import Callable

from conveyor.backends.base import Backend, Fence, Renewal
from conveyor.errors import BackendUnavailable
from conveyor.outage import OutageLog
from conveyor.worker._aio import call_soon, in_thread, wait_event
from conveyor.worker.executor import Running

log = logging.getLogger("conveyor.worker")


class LeaseKeeper:
    """Renews leases every `every` seconds, or at once when a job asks (`request`)."""

    def __init__(
        self,
        backend: Backend,
        running: Callable[[], dict[str, Running]],
        lease_seconds: float,
        every: float,
        on_progress: Callable[[list[tuple[Running, float]]], None] | None = None,
        outage: OutageLog | None = None,
    ) -> None:
        self.backend = backend
        self.running = running
        self.lease_seconds = lease_seconds
        self.every = every
        self.on_progress = on_progress  # told of progress stored, for job events
        self.outage = outage or OutageLog(log)
        self.thread = concurrent.futures.ThreadPoolExecutor(1, "conveyor-lease")
        self._asked = asyncio.Event()
        self._idle = asyncio.Event()  # no renewal on its way (see quiet)
        self._idle.set()
        self._loop = asyncio.get_running_loop()

    def request(self) -> None:
        """Renew now rather than at the next interval; safe from any thread."""
        call_soon(self._loop, self._asked.set)

    async def run(self) -> None:
        """Renew forever; the worker cancels this task when it stops."""
        while True:
            await wait_event(self._asked, self.every)
            self._asked.clear()
            jobs = list(self.running().values())
            if jobs:
                await self.renew(jobs)

    async def quiet(self) -> None:
        """Return once no renewal is on its way. A store of finished attempts waits for
        it: stored first, a job's end would fence off the renewal carrying the job's last
        log lines and progress, and they were lost (a sync task that logged, asked for a
        heartbeat and returned lost its line on 3 to 6 of 9 engines in a parallel test run).

        Looked at again on waking: a renewal's end wakes the waiter, but an asked-for
        renewal may start in the same step of the loop, before the waiter runs, carrying
        a line whose job then finishes; the store went on beside it, and CI lost a line
        once in 27 engine runs that way."""
        while not self._idle.is_set():
            await self._idle.wait()

    async def renew(self, jobs: list[Running]) -> None:
        """One engine call for all `jobs`; flags each one whose lease is lost."""
        renewals = [Renewal(j.id, j.token, *j.context.drain()) for j in jobs]
        self._idle.clear()
        try:
            fences = await self._extend(renewals)
        finally:
            self._idle.set()
        if fences is None:
            return
        if self.on_progress is not None:
            moved = [
                (j, r.progress)
                for j, r, f in zip(jobs, renewals, fences, strict=True)
                if r.progress is not None and f is Fence.OK
            ]
            if moved:
                self.on_progress(moved)
        still_running = self.running()
        for job, fence in zip(jobs, fences, strict=True):
            finished = job.runner is not None and job.runner.done()  # its outcome is being stored
            if fence is Fence.LEASE_LOST and still_running.get(job.id) is job and not finished:
                log.warning("job %s: lease lost (cancelled, or expired and taken over); stopping it", job.id)
                job.lost = True
                job.context.mark_cancelled()  # sync code checks current_job().cancelled
                if job.thread is None and job.runner is not None:
                    job.runner.cancel()  # async code receives CancelledError

    async def _extend(self, renewals: list[Renewal]) -> list[Fence] | None:
        """The engine's fences for the renewals; None when it could not renew them. A
        renewal the engine refuses for what it carries (a log line it cannot store) is
        sent again without the progress and log lines: raised, the refusal stopped the
        worker, and the leases then ran out under running jobs."""
        extend = self.backend.extend_leases
        try:
            fences = await in_thread(self.thread, extend, renewals, self.lease_seconds)
        except BackendUnavailable as exc:
            if self.outage.failed("lease renewal", exc):
                log.error("could not renew %d lease(s): %s", len(renewals), exc)
            return None
        except Exception as exc:  # what the renewal carries, not the engine being away
            return await self._extend_bare(renewals, exc)
        self.outage.worked("lease renewal")
        return fences

    async def _extend_bare(self, renewals: list[Renewal], exc: Exception) -> list[Fence] | None:
        """The renewals again without their progress and log lines, which the engine
        refused (`exc`)."""
        extend = self.backend.extend_leases
        log.error(
            "the engine refused %d lease renewal(s) for the progress and log lines they "
            "carry, which are dropped; renewing without them: %r", len(renewals), exc,
        )  # fmt: skip
        bare = [Renewal(r.job_id, r.token) for r in renewals]
        try:
            return await in_thread(self.thread, extend, bare, self.lease_seconds)
        except Exception:
            log.exception("could not renew %d lease(s)", len(renewals))
            return None
