"""A soak run: producers and workers under SIGKILLs and an engine restart, then a check
that every job whose id an enqueue returned exists, completed and ran.

    .venv/bin/python -m tests.soak redis [--seconds 60]     (also postgres, sqlite)

It starts its own servers (Redis with appendfsync always; PostgreSQL with initdb) and
restarts them halfway (PostgreSQL in immediate mode, a crash). Three worker processes
(-c 20, 3 s leases) run meanwhile, one SIGKILLed every 2-5 s and started again; one
thread enqueues single jobs, jobs with unique keys and bulk jobs, one event loop awaits
8 `aenqueue`s at a time.
An enqueue may fail while the engine is away; one that returned an id must have
stored that job. Not part of the suite: a run takes about two minutes. Its first run
found `aenqueue` on Redis returning a LOADING error's text as a job id.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from conveyor import Conveyor, JobState

_LIVE = {JobState.SCHEDULED, JobState.QUEUED, JobState.ACTIVE, JobState.WAITING}
_WORKERS = 3
_SETTLE_SECONDS = 180.0


class _Looks(logging.Handler):
    """Counts the producers' looks for their lost calls, by answer (see lostcall.py);
    warnings go on to stderr, as they would with no handler of ours."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.answers: Counter[str] = Counter()

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if "dropped after it was sent" in message:
            self.answers["sent again" if "sent again" in message else "had stored its jobs"] += 1
        if record.levelno >= logging.WARNING and logging.lastResort is not None:
            logging.lastResort.handle(record)


class Soak:
    def __init__(self, url: str, restart: Callable[[], None] | None, folder: Path) -> None:
        self.url, self.restart, self.folder = url, restart, folder
        self.log = str(folder / "ran")
        own = {"CONVEYOR_URL": url, "CONVEYOR_PREFIX": "soak", "CONVEYOR_SOAK_LOG": self.log}
        self.env = {**os.environ, **own}
        os.environ.update(self.env)  # the producers' app reads them too
        from tests.soak import app as tasks

        self.tasks = tasks
        self.ids: list[tuple[str, int]] = []  # (id, argument) of every job an enqueue returned
        self.failures: Counter[str] = Counter()
        self.stop = threading.Event()
        self.looks = _Looks()
        postgres_log = logging.getLogger("conveyor.postgres")
        postgres_log.addHandler(self.looks)
        postgres_log.setLevel(logging.INFO)

    def run(self, seconds: float) -> bool:
        workers = [self._worker(n) for n in range(_WORKERS)]
        # Daemon threads, and workers killed on the way out: a run stopped with Ctrl-C used
        # to hang, its producers enqueueing for ever against the server it had removed.
        producers = [
            threading.Thread(target=self._produce, daemon=True),
            threading.Thread(target=self._produce_async, daemon=True),
        ]
        for thread in producers:
            thread.start()
        try:
            kills, restarted = self._churn(workers, seconds)
        except BaseException:
            for worker in workers:
                worker.kill()
            raise
        finally:
            self.stop.set()
        for thread in producers:
            thread.join()
        print(f"{len(self.ids):,} jobs enqueued, {kills} workers killed, engine restarted: {restarted}")
        print(f"enqueues that failed: {sum(self.failures.values())} {dict(self.failures.most_common(3))}")
        print(f"looks for lost calls: {self.looks.answers.total()} {dict(self.looks.answers)}")
        settled = self._settle()
        for worker in workers:
            worker.send_signal(signal.SIGTERM)
        for worker in workers:
            worker.wait(60)
        return settled and self._check()

    def _churn(self, workers: list[subprocess.Popen[bytes]], seconds: float) -> tuple[int, bool]:
        """SIGKILL a worker every 2-5 s (and start it again), and restart the engine halfway;
        the kills made and whether it restarted."""
        kills, restarted, started = 0, False, time.monotonic()
        next_kill = started + random.uniform(2, 5)
        while time.monotonic() - started < seconds:
            time.sleep(0.2)
            if time.monotonic() > next_kill:
                n = random.randrange(_WORKERS)
                workers[n].send_signal(signal.SIGKILL)
                workers[n].wait()
                workers[n], kills = self._worker(n), kills + 1
                next_kill = time.monotonic() + random.uniform(2, 5)
            if self.restart is not None and not restarted and time.monotonic() - started > seconds / 2:
                self.restart()
                restarted = True
        return kills, restarted

    def _worker(self, n: int) -> subprocess.Popen[bytes]:
        command = [sys.executable, "-m", "conveyor", "--log-level", "warning", "worker", "tests.soak.app:app",
                   "-c", "20", "--lease-timeout", "3"]  # fmt: skip
        out = (self.folder / f"worker-{n}.log").open("ab")
        return subprocess.Popen(command, env=self.env, stdout=out, stderr=subprocess.STDOUT, cwd=Path.cwd())

    def _produce(self) -> None:
        i = 0
        while not self.stop.is_set():
            try:
                kind = random.random()
                if kind < 0.05:
                    jobs = self.tasks.work.enqueue_many([(i + j,) for j in range(50)])
                elif kind < 0.10:  # a key of its own: stored, never matched (PostgreSQL: a transaction)
                    jobs = [self.tasks.work.options(unique_key=f"soak-{i}").enqueue(i)]
                else:
                    jobs = [(self.tasks.work if i % 3 else self.tasks.work_sync).enqueue(i)]
                self.ids.extend((job.id, i + n) for n, job in enumerate(jobs))
                i += len(jobs)
            except Exception as exc:
                self.failures[_reason(exc)] += 1
                time.sleep(0.05)
            time.sleep(0.005)

    def _produce_async(self) -> None:
        async def one(i: int) -> None:
            try:
                job = await (self.tasks.work if i % 3 else self.tasks.work_sync).aenqueue(i)
                self.ids.append((job.id, i))
            except Exception as exc:
                self.failures[_reason(exc)] += 1

        async def produce() -> None:
            i = 10_000_000
            while not self.stop.is_set():
                await asyncio.gather(*(one(i + n) for n in range(8)))
                i += 8
                await asyncio.sleep(0.005)

        asyncio.run(produce())

    def _settle(self) -> bool:
        app = Conveyor(self.url, prefix="soak")
        deadline = time.monotonic() + _SETTLE_SECONDS
        try:
            while time.monotonic() < deadline:
                counts = app.backend.counts()
                if not any(n for states in counts.values() for s, n in states.items() if s in _LIVE):
                    return True
                time.sleep(1)
            print(f"jobs still live after {_SETTLE_SECONDS:.0f} s: {counts}")
            return False
        finally:
            app.close()

    def _check(self) -> bool:
        app = Conveyor(self.url, prefix="soak")
        ran: Counter[int] = Counter()
        for path in self.folder.glob("ran.*"):
            ran.update(int(line) for line in path.read_text().split())
        ids = [job_id for job_id, _ in self.ids]
        records = {}
        for start in range(0, len(ids), 1_000):
            records.update({r.id: r for r in app.backend.get(ids[start : start + 1_000]) if r is not None})
        stored = sum(n for states in app.backend.counts().values() for n in states.values())
        app.close()
        # Jobs no returned id names: each is a second copy of a job, or the job of an
        # enqueue that raised (which may have stored it; a bulk one, up to 50).
        extra = stored - len(set(ids))
        print(f"jobs stored beyond the ids returned: {extra} (enqueues that failed: {self.failures.total()})")
        missing = [i for i in ids if i not in records]
        unfinished = [i for i in ids if i in records and records[i].state is not JobState.COMPLETED]
        never_ran = [arg for _, arg in self.ids if arg not in ran]
        twice = sum(1 for count in ran.values() if count > 1)
        print(
            f"ids without a job: {len(missing)} {missing[:3]}; not completed: {len(unfinished)}; "
            f"never ran: {len(never_ran)}; ran more than once (at least once is the promise): {twice}"
        )
        stored_twice = extra > 50 * self.failures.total()
        return not (missing or unfinished or never_ran or len(set(ids)) != len(ids) or stored_twice)


def _reason(exc: Exception) -> str:
    """A failed enqueue's class and the start of its message, where the reason follows
    the URL (whose port is the run's own); 160 characters cut the reason off."""
    return f"{type(exc).__name__}: {str(exc)[:400]}"


def _redis(folder: Path) -> tuple[str, Callable[[], None], Callable[[], None]]:
    from tests.redis import servers

    server = servers.server(folder / "redis", "--appendonly", "yes", "--appendfsync", "always")

    def restart() -> None:
        server.stop()
        server.start()

    return f"redis://127.0.0.1:{server.port}/0", restart, server.stop


def _postgres(folder: Path) -> tuple[str, Callable[[], None], Callable[[], None]]:
    from conveyor.backends.postgres import migrate_database
    from tests.postgres import server

    own = server.server()
    migrate_database(own.url, "soak")

    def restart() -> None:
        own.stop("immediate")
        own.start()

    return own.url, restart, own.remove


def _nothing() -> None:
    pass


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.soak", description=__doc__.split("\n")[0])
    parser.add_argument("engine", choices=["redis", "postgres", "sqlite"])
    parser.add_argument("--seconds", type=float, default=60.0)
    options = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="conveyor-soak-") as name:
        folder = Path(name)
        restart: Callable[[], None] | None = None
        if options.engine == "sqlite":
            url, done = f"sqlite:///{folder / 'soak.db'}", _nothing
        else:
            url, restart, done = (_redis if options.engine == "redis" else _postgres)(folder)
        try:
            passed = Soak(url, restart, folder).run(options.seconds)
        finally:
            done()
    print("PASSED" if passed else "FAILED")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
