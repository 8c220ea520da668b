"""`conveyor bench`: throughput and latency of an engine, measured the way users run it.

Drain scenarios start real worker processes (`conveyor worker --burst`) and
compute throughput from the engine's own timestamps (first start to last
finish), so interpreter start-up is not counted. Latency is enqueue-to-start.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

from rich.console import Console
from rich.table import Table

from conveyor import benchbacklog
from conveyor.app import Conveyor
from conveyor.backends.base import JobQuery
from conveyor.benchapp import register
from conveyor.job import JobRecord, JobState
from conveyor.worker._aio import chosen_loop

SCENARIOS = (
    "enqueue", "enqueue_threads", "aenqueue", "aenqueue_tasks", "bulk", "drain", "drain_sync", "latency",
    "io",
)  # fmt: skip
# Run only when asked: each stores --backlog jobs (see benchbacklog).
BACKLOG_SCENARIOS = tuple(benchbacklog.RUNNERS)
_PRODUCERS = 8  # threads in enqueue_threads, tasks in aenqueue_tasks: a web server's handlers, say
_BULK_PER_JOB = 5  # bulk enqueue stores 5 x --jobs: 100,000 at the default 20,000
_BULK_BATCH = 1_000
_LATENCY_SAMPLES = 300
_LATENCY_GAP = 0.01  # 100 jobs/s: "low load"
_IO_JOBS, _IO_SLEEP, _IO_CONCURRENCY = 2_000, 0.05, 100
_PREFIX = "bench"


@dataclass
class Result:
    """One row of the benchmark table."""

    scenario: str
    jobs: int
    seconds: float
    jobs_per_second: float
    p50_ms: float | None = None
    p95_ms: float | None = None
    p99_ms: float | None = None
    # The engine server's CPU a job, where it tells (Redis: INFO cpu; see Backend.server_cpu):
    # how near the engine comes to the server's own limit.
    server_us: float | None = None
    note: str = ""


def run_bench(
    *,
    url: str | None,
    jobs: int,
    processes: int,
    concurrency: int,
    scenarios: list[str] | None,
    json_path: str | None,
    console: Console,
    backlog: int = 1_000_000,
    rounds: int = 1,
) -> list[Result]:
    """Run the chosen scenarios and print (and optionally save) the results. With
    `rounds` > 1 every scenario runs that many times, the rounds one after another, and
    each row is the median of its runs (see median_row)."""
    unknown = set(scenarios or ()) - set(SCENARIOS) - set(BACKLOG_SCENARIOS)
    if unknown:
        known = ", ".join((*SCENARIOS, *BACKLOG_SCENARIOS))
        raise SystemExit(f"error: unknown scenario {sorted(unknown)[0]!r}; choose from {known}")
    with tempfile.TemporaryDirectory(prefix="conveyor-bench-") as folder:
        # The jobs go when the run ends, except where they go with the process or the
        # temporary folder anyway (deleting 100,000 from memory took 7 s).
        clean = url is not None and not url.startswith("memory://")
        url = url or f"sqlite:///{os.path.join(folder, 'bench.db')}"
        app = register(Conveyor(url, prefix=_PREFIX))
        bench = _Bench(app, url, jobs, concurrency, console, clean=clean, backlog=backlog)
        each: list[list[Result]] = []
        for done in range(rounds):
            each.append([])
            which = f" (round {done + 1} of {rounds})" if rounds > 1 else ""
            for name in scenarios or SCENARIOS:
                console.print(f"[dim]running {name}{which}...[/]")
                each[-1].extend(bench.run(name))
                if name.startswith("drain") and processes > 1:
                    each[-1].extend(bench.run(name, processes=processes))
        app.close()
    results = [median_row(runs) for runs in _by_scenario(each)]
    loop = chosen_loop(app.settings.loop)
    _print(results, url, loop, console)
    if json_path:
        saved: dict[str, object] = {"url": url, "loop": loop, "results": [asdict(r) for r in results]}
        if rounds > 1:
            saved["rounds"] = [[asdict(r) for r in round_] for round_ in each]
        with open(json_path, "w", encoding="utf-8") as out:
            json.dump(saved, out, indent=2)
    return results


def _by_scenario(rounds: list[list[Result]]) -> list[list[Result]]:
    """Each row's runs across the rounds, in the first round's order. Rows are matched
    by place, not label: every round runs the same scenarios in the same order, and two
    scenarios may print the same label (both backlog scenarios have a "nothing behind"
    row)."""
    return [list(runs) for runs in zip(*rounds, strict=True)]


def median_row(runs: list[Result]) -> Result:
    """One row for a scenario's runs: the median of each figure, and the note gives the
    runs' range of jobs/s. A single run is its own row. Rounds exist because this kind of
    machine drifts: the same Redis drain here ran at 16,188-24,272 jobs/s in seven
    runs within half an hour, so one run says little about a difference of 10%."""
    if len(runs) == 1:
        return runs[0]

    def median(values: list[float | None]) -> float | None:
        known = [v for v in values if v is not None]
        return statistics.median(known) if known else None

    rates = [r.jobs_per_second for r in runs]
    notes = list(dict.fromkeys(r.note for r in runs if r.note))  # each once, in order
    note = f"median of {len(runs)}: {min(rates):,.0f}-{max(rates):,.0f} jobs/s"
    return Result(
        runs[0].scenario,
        runs[0].jobs,
        statistics.median(r.seconds for r in runs),
        statistics.median(rates),
        median([r.p50_ms for r in runs]),
        median([r.p95_ms for r in runs]),
        median([r.p99_ms for r in runs]),
        median([r.server_us for r in runs]),
        "; ".join([note, *notes]),
    )


class _Bench:
    def __init__(
        self,
        app: Conveyor,
        url: str,
        jobs: int,
        concurrency: int,
        console: Console,
        *,
        clean: bool,
        backlog: int = 1_000_000,
    ) -> None:
        self.app, self.url, self.jobs, self.concurrency, self.console = (
            app,
            url,
            jobs,
            concurrency,
            console,
        )
        self.clean, self.backlog = clean, backlog
        self.in_process = url.startswith("memory://")
        self.round = 0
        # Queues are new per run: a server engine may hold an earlier run's jobs.
        self.run_id = secrets.token_hex(3)

    def run(self, name: str, processes: int = 1) -> list[Result]:
        self.round += 1
        queue = f"{name}-{self.run_id}-{self.round}"
        try:
            if name in BACKLOG_SCENARIOS:
                return benchbacklog.RUNNERS[name](self, queue)
            runner: Callable[..., Result] = getattr(self, f"_{name}")
            return [runner(queue, processes) if name.startswith("drain") else runner(queue)]
        finally:
            if self.clean:
                self.forget(queue)

    def forget(self, queue: str) -> None:
        """Delete the scenario's jobs, whatever their state: a full run stores about
        160,000 (most never run), and a shared server should not keep them."""
        backend = self.app.backend
        while page := backend.list_jobs(JobQuery(queue=queue, limit=_BULK_BATCH)):
            if not backend.delete([r.id for r in page]):
                break  # listed but gone: another process deletes them too

    def _enqueue(self, queue: str) -> Result:
        task = self.app.ref("bench.noop").options(queue=queue)
        n = min(self.jobs, 20_000)
        cpu, start = self.server_cpu(), time.perf_counter()
        for i in range(n):
            task.enqueue(i)
        took = time.perf_counter() - start
        return Result("enqueue (one at a time)", n, took, n / took, server_us=self.cpu_per_job(cpu, n))

    def _enqueue_threads(self, queue: str) -> Result:
        """One job per call from several threads: a network engine's round trips overlap."""
        from concurrent.futures import ThreadPoolExecutor

        task = self.app.ref("bench.noop").options(queue=queue)
        each = min(self.jobs, 20_000) // _PRODUCERS

        def produce(_: int) -> None:
            for i in range(each):
                task.enqueue(i)

        cpu, start = self.server_cpu(), time.perf_counter()
        with ThreadPoolExecutor(_PRODUCERS) as pool:
            list(pool.map(produce, range(_PRODUCERS)))
        took = time.perf_counter() - start
        n = each * _PRODUCERS
        name = f"enqueue (one at a time, {_PRODUCERS} threads)"
        return Result(name, n, took, n / took, server_us=self.cpu_per_job(cpu, n))

    def _aenqueue(self, queue: str) -> Result:
        """One job per await from async code: the engine's async path, where it has one."""
        return self._awaited(queue, 1, "enqueue from async code (one await at a time)")

    def _aenqueue_tasks(self, queue: str) -> Result:
        """One job per await from tasks on one loop: an async web server's handlers."""
        return self._awaited(queue, _PRODUCERS, f"enqueue from async code ({_PRODUCERS} tasks on one loop)")

    def _awaited(self, queue: str, tasks: int, name: str) -> Result:
        task = self.app.ref("bench.noop").options(queue=queue)
        each = min(self.jobs, 20_000) // tasks

        async def produce() -> None:
            for i in range(each):
                await task.aenqueue(i)

        async def all_tasks() -> None:
            await asyncio.gather(*(produce() for _ in range(tasks)))

        cpu, start = self.server_cpu(), time.perf_counter()
        asyncio.run(all_tasks())
        took = time.perf_counter() - start
        n = each * tasks
        return Result(name, n, took, n / took, server_us=self.cpu_per_job(cpu, n))

    def _bulk(self, queue: str) -> Result:
        task = self.app.ref("bench.noop").options(queue=queue)
        cpu, start = self.server_cpu(), time.perf_counter()
        total = self.jobs * _BULK_PER_JOB
        for first in range(0, total, _BULK_BATCH):
            task.enqueue_many([(i,) for i in range(first, min(total, first + _BULK_BATCH))])
        took = time.perf_counter() - start
        name = f"enqueue_many (batches of {_BULK_BATCH})"
        return Result(name, total, took, total / took, server_us=self.cpu_per_job(cpu, total))

    def _drain(self, queue: str, processes: int) -> Result:
        return self._drain_task("bench.noop", "drain no-op async", queue, processes)

    def _drain_sync(self, queue: str, processes: int) -> Result:
        return self._drain_task("bench.noop_sync", "drain no-op sync", queue, processes)

    def _drain_task(self, task: str, label: str, queue: str, processes: int) -> Result:
        ref = self.app.ref(task).options(queue=queue)
        for first in range(0, self.jobs, _BULK_BATCH):
            ref.enqueue_many([(i,) for i in range(first, min(self.jobs, first + _BULK_BATCH))])
        cpu = self.server_cpu()
        self.work(queue, processes, self.concurrency, burst=True)
        server_us = self.cpu_per_job(cpu, self.jobs)  # before the listing below adds its own
        records = self._finished(queue, self.jobs)
        took = busy_seconds(records)
        name = f"{label}, {processes} process{'es' if processes > 1 else ''}, c={self.concurrency}"
        return Result(name, len(records), took, len(records) / took, server_us=server_us)

    def _io(self, queue: str) -> Result:
        ref = self.app.ref("bench.sleep").options(queue=queue)
        ref.enqueue_many([(_IO_SLEEP,)] * _IO_JOBS)
        cpu = self.server_cpu()
        self.work(queue, 1, _IO_CONCURRENCY, burst=True)
        server_us = self.cpu_per_job(cpu, _IO_JOBS)
        records = self._finished(queue, _IO_JOBS)
        took = busy_seconds(records)
        name = f"io-bound: {_IO_JOBS} x sleep {_IO_SLEEP * 1000:.0f} ms, c={_IO_CONCURRENCY}"
        return Result(
            name, len(records), took, len(records) / took, server_us=server_us, note="ideal 2,000/s"
        )

    def _latency(self, queue: str) -> Result:
        ref = self.app.ref("bench.noop").options(queue=queue)
        stop = self.start_worker(queue, 1, self.concurrency)
        try:
            ref.enqueue(-1).result(timeout=30)  # the worker is up and warm
            cpu = self.server_cpu()
            handles = []
            for i in range(_LATENCY_SAMPLES):
                handles.append(ref.enqueue(i))
                time.sleep(_LATENCY_GAP)  # pacing the load, not synchronising
            for handle in handles:
                handle.result(timeout=30)
            server_us = self.cpu_per_job(cpu, _LATENCY_SAMPLES)
        finally:
            stop()
        records = self._finished(queue, _LATENCY_SAMPLES + 1)[1:]
        lat = sorted(((r.started_at or 0) - r.enqueued_at) * 1000 for r in records)
        q = statistics.quantiles(lat, n=100)
        took = _LATENCY_SAMPLES * _LATENCY_GAP
        return Result(
            "latency enqueue->start, 100 jobs/s",
            len(lat),
            took,
            len(lat) / took,
            p50_ms=q[49],
            p95_ms=q[94],
            p99_ms=q[98],
            server_us=server_us,
        )

    # -- workers ------------------------------------------------------------
    def work(self, queue: str, processes: int, concurrency: int, *, burst: bool) -> None:
        if self.in_process:
            self.app.worker(queues=[queue], concurrency=concurrency).run(burst=burst, handle_signals=False)
            return
        command = [*self._command(queue, concurrency), "--burst"]
        if processes > 1:
            command.append(f"--processes={processes}")
        subprocess.run(command, check=True, env=self._env(), timeout=600)

    def start_worker(self, queue: str, processes: int, concurrency: int) -> Callable[[], None]:
        if self.in_process:
            import threading

            worker = self.app.worker(queues=[queue], concurrency=concurrency)
            thread = threading.Thread(target=worker.run, kwargs={"handle_signals": False})
            thread.start()

            def stop_thread() -> None:
                worker.stop()
                thread.join(timeout=30)

            return stop_thread
        child = subprocess.Popen(self._command(queue, concurrency), env=self._env())

        def stop_process() -> None:
            child.send_signal(signal.SIGTERM)
            child.wait(timeout=30)

        return stop_process

    def _command(self, queue: str, concurrency: int) -> list[str]:
        return [
            sys.executable,
            "-m",
            "conveyor",
            "--log-level=WARNING",
            "worker",
            "conveyor.benchapp:app",
            f"--queues={queue}",
            f"--concurrency={concurrency}",
        ]

    def _env(self) -> dict[str, str]:
        return {**os.environ, "CONVEYOR_URL": self.url, "CONVEYOR_PREFIX": _PREFIX}

    def server_cpu(self) -> float | None:
        return self.app.backend.server_cpu()

    def cpu_per_job(self, before: float | None, jobs: int) -> float | None:
        """Microseconds of the engine server's CPU a job since `before`; None if not told."""
        after = self.server_cpu()
        if before is None or after is None or jobs <= 0:
            return None
        return (after - before) / jobs * 1e6

    def _finished(self, queue: str, expected: int) -> list[JobRecord]:
        query = JobQuery(queue=queue, state=JobState.COMPLETED, limit=expected + 1)
        records = sorted(self.app.backend.list_jobs(query), key=lambda r: r.enqueued_at)
        if len(records) != expected:
            raise RuntimeError(f"bench queue {queue}: {len(records)} of {expected} jobs completed")
        return records


def busy_seconds(records: list[JobRecord]) -> float:
    """A drain's time by the engine's own timestamps: first start to last finish."""
    return max(r.finished_at or 0 for r in records) - min(r.started_at or 0 for r in records)


def _print(results: list[Result], url: str, loop: str, console: Console) -> None:
    engine, cores = url.split("://", maxsplit=1)[0], os.cpu_count()
    table = Table(title=f"conveyor bench on {engine} ({cores} cores, worker loop {loop})")
    columns = ("scenario", "jobs", "seconds", "jobs/s", "p50 ms", "p95 ms", "p99 ms", "server µs/job", "note")
    for column in columns:
        table.add_column(column, justify="left" if column in ("scenario", "note") else "right")
    for r in results:
        table.add_row(
            r.scenario,
            f"{r.jobs:,}",
            f"{r.seconds:.2f}",
            f"{r.jobs_per_second:,.0f}",
            *(f"{v:.2f}" if v is not None else "" for v in (r.p50_ms, r.p95_ms, r.p99_ms)),
            "" if r.server_us is None else f"{r.server_us:.1f}",
            r.note,
        )
    console.print(table)


__all__ = ["BACKLOG_SCENARIOS", "SCENARIOS", "Result", "median_row", "run_bench"]
