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
    ) -> None:
        self.backend = backend
        self.running = running
        self.lease_seconds = lease_seconds
        self.every = every
        self.on_progress = on_progress  # told of progress stored, for job events
        self.thread = concurrent.futures.ThreadPoolExecutor(1, "conveyor-lease")
        self._asked = asyncio.Event()
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

    async def renew(self, jobs: list[Running]) -> None:
        """One engine call for all `jobs`; flags each one whose lease is lost."""
        renewals = [Renewal(j.id, j.token, *j.context.drain()) for j in jobs]
        try:
            fences = await in_thread(self.thread, self.backend.extend_leases, renewals, self.lease_seconds)
        except BackendUnavailable as exc:
            log.error("could not renew %d lease(s): %s", len(jobs), exc)
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
