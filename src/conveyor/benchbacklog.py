"""`conveyor bench`'s backlog scenarios: does a drain slow down behind a large backlog?

The Redis and PostgreSQL issues each set a target: a 10,000-job drain with 1,000,000
jobs queued behind it, and with 1,000,000 finished jobs in the store, within 20% of
the same drain with nothing behind. Both scenarios run on every engine, but only when
asked (`--only backlog_queued,backlog_finished`): each stores `--backlog` jobs, and a
million take one to three minutes to store, run and delete here.

This project's VM drifts in speed by up to 2x within an hour, so the drain with nothing
behind runs twice, before the backlog is stored and after it is deleted, and the two
drains with the backlog run between them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from conveyor.job import TERMINAL_STATES, JobRecord

if TYPE_CHECKING:
    from conveyor.bench import Result, _Bench

DRAIN = 10_000  # the issues' "10,000-job figure" (fewer when --jobs is lower)
_BATCH = 1_000
_BEHIND = -1  # a queued backlog's priority: claimed only after the measured jobs
_ROUNDS = 2  # drains with the backlog in place
_WAIT = 600.0  # seconds a drain may take before the bench gives up on it
_POLL = 0.005  # a get() of one job: cheap enough to ask every 5 ms


@dataclass
class _Drain:
    jobs: int
    seconds: float
    server_us: float | None

    @property
    def rate(self) -> float:
        return self.jobs / self.seconds


def queued_behind(bench: _Bench, queue: str) -> list[Result]:
    """10,000 jobs drained ahead of `--backlog` lower-priority jobs in their own queue.
    The worker is stopped once the 10,000 are done, so it runs a few of the backlog's."""
    alone = [_burst(bench, queue)]
    _store(bench, queue, bench.backlog, priority=_BEHIND)
    behind = [_ahead_of_backlog(bench, queue) for _ in range(_ROUNDS)]
    bench.forget(queue)
    alone.append(_burst(bench, queue))
    return _rows(f"{bench.backlog:,} queued behind", alone, behind)


def finished_behind(bench: _Bench, queue: str) -> list[Result]:
    """10,000 jobs drained into a store already holding `--backlog` finished jobs of
    their queue, which a worker first ran: that drain is a row of its own."""
    from conveyor.bench import Result

    alone = [_burst(bench, queue)]
    _store(bench, queue, bench.backlog, priority=0)
    start = time.perf_counter()
    bench.work(queue, 1, bench.concurrency, burst=True)
    took = time.perf_counter() - start
    whole = Result(f"drain no-op async, {bench.backlog:,} at once, c={bench.concurrency}", bench.backlog,
                   took, bench.backlog / took, note="wall time, worker start-up included")  # fmt: skip
    behind = [_burst(bench, queue) for _ in range(_ROUNDS)]
    bench.forget(queue)
    alone.append(_burst(bench, queue))
    return [whole, *_rows(f"{bench.backlog:,} finished in the store", alone, behind)]


def _burst(bench: _Bench, queue: str) -> _Drain:
    """The queue's 10,000 new jobs, drained by a `--burst` worker."""
    ids = _store(bench, queue, _drain_size(bench), priority=0)
    cpu = bench.server_cpu()
    bench.work(queue, 1, bench.concurrency, burst=True)
    return _measured(bench, ids, bench.cpu_per_job(cpu, len(ids)))


def _ahead_of_backlog(bench: _Bench, queue: str) -> _Drain:
    """10,000 new jobs ahead of a backlog a `--burst` worker would run too: a worker
    that runs until they are done."""
    ids = _store(bench, queue, _drain_size(bench), priority=0)
    cpu = bench.server_cpu()
    stop = bench.start_worker(queue, 1, bench.concurrency)
    try:
        server_us = _wait_done(bench, ids, cpu)
    finally:
        stop()
    return _measured(bench, ids, server_us)


def _drain_size(bench: _Bench) -> int:
    return min(bench.jobs, DRAIN)


def _store(bench: _Bench, queue: str, count: int, *, priority: int) -> list[str]:
    ref = bench.app.ref("bench.noop").options(queue=queue, priority=priority)
    ids: list[str] = []
    for first in range(0, count, _BATCH):
        jobs = ref.enqueue_many([(i,) for i in range(first, min(count, first + _BATCH))])
        ids.extend(job.id for job in jobs)
    return ids


def _wait_done(bench: _Bench, ids: Sequence[str], cpu: float | None) -> float | None:
    """Wait until every job of `ids` is finished; the server's CPU a job from `cpu` until
    the last stored one finished (it tends to finish last). Only that one is asked for
    while the drain runs, so the bench's own reads stay out of the figure."""
    backend, deadline = bench.app.backend, time.monotonic() + _WAIT
    server_us, pending = None, list(ids)
    while pending:
        if not _done(backend.get(pending[-1:])[0]):
            if time.monotonic() > deadline:
                raise RuntimeError(f"bench: {len(pending)} of {len(ids)} jobs unfinished after {_WAIT:.0f} s")
            time.sleep(_POLL)  # pacing a poll of the engine, which has no "all done" signal
            continue
        if server_us is None:
            server_us = bench.cpu_per_job(cpu, len(ids))
        records = backend.get(pending)
        pending = [i for i, r in zip(pending, records, strict=True) if not _done(r)]
    return server_us


def _done(record: JobRecord | None) -> bool:
    """Finished, or gone (deleted: nothing left to wait for)."""
    return record is None or record.state in TERMINAL_STATES


def _measured(bench: _Bench, ids: Sequence[str], server_us: float | None) -> _Drain:
    """Throughput by the engine's own timestamps: first start to last finish."""
    from conveyor.bench import busy_seconds

    records = [r for r in bench.app.backend.get(ids) if r is not None and r.state in TERMINAL_STATES]
    if len(records) != len(ids):
        raise RuntimeError(f"bench: {len(records)} of {len(ids)} jobs finished")
    return _Drain(len(records), busy_seconds(records), server_us)


def _rows(backlog: str, alone: list[_Drain], behind: list[_Drain]) -> list[Result]:
    from conveyor.bench import Result

    def combined(label: str, drains: list[_Drain], note: str) -> Result:
        jobs, seconds = sum(d.jobs for d in drains), sum(d.seconds for d in drains)
        cpus = [d.server_us for d in drains if d.server_us is not None]
        server_us = sum(cpus) / len(cpus) if cpus else None
        return Result(label, jobs, seconds, jobs / seconds, server_us=server_us, note=note)

    runs = " / ".join(f"{d.rate:,.0f}" for d in behind)
    size = alone[0].jobs
    plain = combined(f"drain no-op async, {size:,}, nothing behind", alone,
                     f"before the backlog {alone[0].rate:,.0f}, after {alone[1].rate:,.0f}")  # fmt: skip
    loaded = combined(f"drain no-op async, {size:,}, {backlog}", behind, "")
    loaded.note = f"{loaded.jobs_per_second / plain.jobs_per_second:.2f} of nothing behind; runs {runs}"
    return [plain, loaded]


RUNNERS: dict[str, Callable[[_Bench, str], list[Result]]] = {
    "backlog_queued": queued_behind,
    "backlog_finished": finished_behind,
}
