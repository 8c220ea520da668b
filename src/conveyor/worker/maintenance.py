"""Maintenance: recover expired leases (any worker may), settle flows a crash left
waiting, prune past retention, and report this worker."""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping

from conveyor.backends.base import Backend, JobQuery, WorkerInfo
from conveyor.errors import BackendUnavailable
from conveyor.flows import settle
from conveyor.job import TERMINAL_STATES, JobState
from conveyor.outage import OutageLog
from conveyor.worker._aio import in_thread

log = logging.getLogger("conveyor.worker")
_PRUNE_EVERY = 60.0  # seconds between retention passes
_PRUNE_BATCH = 5_000  # rows per delete: keeps each write transaction short
_FLOWS_EVERY = 30.0  # seconds between passes over waiting flow jobs
_FLOWS_BATCH = 500  # waiting jobs read per pass; the offset walks through the rest


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
        keep_counts: Mapping[JobState, int | None] | None = None,
        outage: OutageLog | None = None,
    ) -> None:
        self.backend = backend
        self.thread = thread
        self.interval = min(5.0, lease_seconds / 4)
        self.report = report
        self.on_recovered = on_recovered
        self.retention = dict(retention or {})
        self.keep_counts = {state: n for state, n in (keep_counts or {}).items() if n is not None}
        self.now = now
        self.outage = outage or OutageLog(log)
        self._pruned_at = -_PRUNE_EVERY
        self._flows_at = -_FLOWS_EVERY
        self._flows_offset = 0

    async def run(self) -> None:
        """Sweep forever; the worker cancels this task after its last flush."""
        while True:
            await self.sweep()
            await asyncio.sleep(self.interval * random.uniform(0.8, 1.2))

    async def sweep(self) -> None:
        """Recover expired leases once, refresh this worker's heartbeat, and run what
        else is due. Each step goes on when another fails: a heartbeat refused (Redis at
        maxmemory, a role without a grant) used to skip the prune that would free room."""
        await self._step("recovering expired leases", self._recover())
        heartbeat = in_thread(self.thread, self.backend.report_worker, self.report())
        await self._step("reporting this worker", heartbeat)
        await self._step("engine upkeep", in_thread(self.thread, self.backend.maintain))
        if time.monotonic() - self._pruned_at >= _PRUNE_EVERY:
            self._pruned_at = time.monotonic()
            await self._step("pruning finished jobs", self.prune())
        if time.monotonic() - self._flows_at >= _FLOWS_EVERY:
            self._flows_at = time.monotonic()
            await self._step("settling flows", in_thread(self.thread, self.settle_flows))

    async def _step(self, what: str, step: Awaitable[object]) -> None:
        """Run one step of a sweep; an engine outage is logged in a line (once an outage,
        see OutageLog), anything else (a row the engine cannot read, a bug) with its
        traceback, and the sweep goes on. Raised, it would stop the worker, and every
        worker after it."""
        try:
            await step
        except BackendUnavailable as exc:
            if self.outage.failed(f"maintenance ({what})", exc):
                log.error("maintenance: %s failed: %s", what, exc)
        except Exception:
            log.exception("maintenance: %s failed", what)
        else:
            self.outage.worked(f"maintenance ({what})")

    async def _recover(self) -> None:
        recovered = await in_thread(self.thread, self.backend.recover_expired)
        if recovered:
            shown = ", ".join(recovered[:10])
            log.warning("recovered %d job(s) whose lease expired: %s", len(recovered), shown)
            self.on_recovered()
            await in_thread(self.thread, self._settle_parents_of, recovered)

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
        if self.keep_counts:
            total += await in_thread(self.thread, self._prune_counts)
        if total:
            log.info("pruned %d finished job(s) past their retention", total)
        return total

    def _prune_counts(self) -> int:
        """Keep at most the configured number of finished jobs per queue and state,
        deleting the longest finished first."""
        total = 0
        for queue, per_state in self.backend.counts().items():
            for state, keep in self.keep_counts.items():
                excess = per_state.get(state, 0) - keep
                while excess > 0:
                    deleted = self.backend.purge(queue=queue, states=[state], limit=min(excess, _PRUNE_BATCH))
                    if deleted == 0:
                        break
                    total += deleted
                    excess -= deleted
        return total

    def _settle_parents_of(self, job_ids: list[str]) -> None:
        """A lease that expired for good ended a job: its flow parent may move on."""
        ended = [r for r in self.backend.get(job_ids) if r is not None and r.state in TERMINAL_STATES]
        parents = [r.parent_id for r in ended if r.parent_id]
        if parents:
            settle(self.backend, parents)

    def settle_flows(self) -> list[str]:
        """Settle a batch of waiting jobs: the worker that finished their last child may
        have died between storing it and settling the parent. Returns the ids moved."""
        query = JobQuery(state=JobState.WAITING, limit=_FLOWS_BATCH, offset=self._flows_offset)
        waiting = [r.id for r in self.backend.list_jobs(query)]
        self._flows_offset = self._flows_offset + _FLOWS_BATCH if len(waiting) == _FLOWS_BATCH else 0
        moved = settle(self.backend, waiting) if waiting else []
        if moved:
            log.warning("settled %d flow job(s) left waiting: %s", len(moved), ", ".join(moved[:10]))
        return moved
