"""Maintenance: recover expired leases (any worker may) and report this worker."""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import random
from collections.abc import Callable

from conveyor.backends.base import Backend, WorkerInfo
from conveyor.errors import BackendUnavailable
from conveyor.worker._aio import in_thread

log = logging.getLogger("conveyor.worker")


class Maintenance:
    """Sweeps every quarter lease (at most 5 s), so a dead worker's jobs restart
    within lease + interval; jitter keeps many workers from sweeping in lockstep."""

    def __init__(
        self,
        backend: Backend,
        thread: concurrent.futures.Executor,
        lease_seconds: float,
        report: Callable[[], WorkerInfo],
        on_recovered: Callable[[], None],
    ) -> None:
        self.backend = backend
        self.thread = thread
        self.interval = min(5.0, lease_seconds / 4)
        self.report = report
        self.on_recovered = on_recovered

    async def run(self) -> None:
        """Sweep forever; the worker cancels this task after its last flush."""
        while True:
            await self.sweep()
            await asyncio.sleep(self.interval * random.uniform(0.8, 1.2))

    async def sweep(self) -> None:
        """Recover expired leases once and refresh this worker's heartbeat."""
        try:
            recovered = await in_thread(self.thread, self.backend.recover_expired)
            if recovered:
                shown = ", ".join(recovered[:10])
                log.warning("recovered %d job(s) whose lease expired: %s", len(recovered), shown)
                self.on_recovered()
            await in_thread(self.thread, self.backend.report_worker, self.report())
            await in_thread(self.thread, self.backend.maintain)
        except BackendUnavailable as exc:
            log.error("maintenance failed: %s", exc)
