"""Maintenance: recover expired leases (any worker may) and report this worker."""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import random
import time
from collections.abc import Callable, Mapping

from conveyor.backends.base import Backend, WorkerInfo
from conveyor.errors import BackendUnavailable
from conveyor.job import JobState
from conveyor.worker._aio import in_thread

log = logging.getLogger("conveyor.worker")
_PRUNE_EVERY = 60.0  # seconds between retention passes
_PRUNE_BATCH = 5_000  # rows per delete: keeps each write transaction short


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
        retention: Mapping[JobState, float | None] | None = None,
        now: Callable[[], float] = time.time,
    ) -> None:
        self.backend = backend
        self.thread = thread
        self.interval = min(5.0, lease_seconds / 4)
        self.report = report
        self.on_recovered = on_recovered
        self.retention = dict(retention or {})
        self.now = now
        self._pruned_at = -_PRUNE_EVERY

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
            if time.monotonic() - self._pruned_at >= _PRUNE_EVERY:
                self._pruned_at = time.monotonic()
                await self.prune()
        except BackendUnavailable as exc:
            log.error("maintenance failed: %s", exc)

    async def prune(self) -> int:
        """Delete finished jobs older than their retention, in short batches."""
        total = 0
        for state, keep in self.retention.items():
            if keep is None:
                continue
            cutoff = self.now() - keep
            while True:
                deleted = await in_thread(
                    self.thread, self.backend.purge, states=[state], older_than=cutoff, limit=_PRUNE_BATCH
                )
                total += deleted
                if deleted < _PRUNE_BATCH:
                    break
        if total:
            log.info("pruned %d finished job(s) past their retention", total)
        return total
