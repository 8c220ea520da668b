"""Real worker processes: SIGKILL, SIGTERM and --processes, on engines shared across processes."""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from conveyor import Conveyor, JobState
from tests.conftest import engine_url, eventually
from tests.crash.crashapp import meet, record, slow

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.crash
PROCESS_ENGINES = ["sqlite", "redis", "postgres"]  # engines several processes can share


@pytest.fixture(params=PROCESS_ENGINES)
def shared_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return engine_url(str(request.param), tmp_path)


@pytest.fixture
def crash_app(shared_url: str) -> Iterator[Conveyor]:
    from tests.crash import crashapp

    crashapp.app.close()
    crashapp.app.configure(url=shared_url, prefix="crash")
    yield crashapp.app
    crashapp.app.close()


def start_worker(url: str, *args: str, log: Path | None = None) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "CONVEYOR_URL": url,
        "CONVEYOR_PREFIX": "crash",
        "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
    }
    command = [
        sys.executable,
        "-m",
        "conveyor",
        "--log-level=INFO",
        "worker",
        "tests.crash.crashapp:app",
        *args,
    ]
    if log is None:
        return subprocess.Popen(command, env=env, cwd=ROOT)
    with log.open("ab") as stderr:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(command, env=env, cwd=ROOT, stderr=stderr)


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def test_sigkilled_workers_job_runs_again_on_another_worker(
    crash_app: Conveyor, shared_url: str, tmp_path: Path
) -> None:
    marker = tmp_path / "started"
    job = slow.enqueue(str(marker), 60)
    first = start_worker(shared_url, "--lease-timeout=1.5", "--concurrency=1")
    try:
        eventually(lambda: len(lines(marker)) == 1, timeout=20, message="job never started")
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=10)
    finally:
        first.kill()
    second = start_worker(shared_url, "--lease-timeout=1.5", "--concurrency=1")
    try:
        result = job.result(timeout=30)
        second.send_signal(signal.SIGTERM)
        assert second.wait(timeout=20) == 0
    finally:
        second.kill()  # a failed wait for the result left it running into later tests once
    assert result == {"pid": second.pid, "attempt": 2}
    assert job.attempts[0].error.startswith("LeaseExpired")
    assert job.state is JobState.COMPLETED


def test_sigterm_lets_the_running_job_finish_and_exits_zero(
    crash_app: Conveyor, shared_url: str, tmp_path: Path
) -> None:
    marker = tmp_path / "started"
    job = slow.enqueue(str(marker), 1.0)
    worker = start_worker(shared_url, "--concurrency=2")
    try:
        eventually(lambda: len(lines(marker)) == 1, timeout=20, message="job never started")
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=20) == 0
    finally:
        worker.kill()
    assert job.refresh().state is JobState.COMPLETED
    assert job.attempt == 1


def test_a_second_sigterm_releases_the_job_at_once(
    crash_app: Conveyor, shared_url: str, tmp_path: Path
) -> None:
    marker = tmp_path / "started"
    job = slow.enqueue(str(marker), 60)
    log = tmp_path / "worker.log"
    worker = start_worker(shared_url, "--concurrency=1", "--shutdown-grace=60", log=log)
    try:
        eventually(lambda: len(lines(marker)) == 1, timeout=20, message="job never started")
        worker.send_signal(signal.SIGTERM)
        # Two quick SIGTERMs coalesce into one: send the second once the first was handled.
        eventually(lambda: "send it again to stop at once" in log.read_text(), timeout=10)
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=20) == 0
    finally:
        worker.kill()
    job.refresh()
    assert job.state is JobState.QUEUED and job.attempt == 0  # released, attempt given back


def test_three_processes_run_each_of_2000_jobs_exactly_once(
    crash_app: Conveyor, shared_url: str, tmp_path: Path
) -> None:
    runs = tmp_path / "runs"
    worker = start_worker(shared_url, "--processes=3", "--concurrency=20")
    try:
        # All three must be up before the jobs land: on a busy machine the first process
        # to start would otherwise drain 2,000 no-op jobs before the others exist.
        eventually(lambda: len(crash_app.backend.workers()) == 3, timeout=30, message="workers")
        jobs = record.enqueue_many([(str(runs), i) for i in range(2000)])
        eventually(lambda: crash_app.stats()["totals"]["completed"] == 2000, timeout=120)
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=30) == 0
    finally:
        worker.kill()
    seen = [line.split() for line in lines(runs)]
    assert sorted(job_id for job_id, _ in seen) == sorted(j.id for j in jobs)
    assert len({pid for _, pid in seen}) >= 2, "expected more than one process to take jobs"
    assert crash_app.stats()["totals"]["completed"] == 2000


def test_processes_supervisor_forwards_sigterm_and_exits_zero(
    crash_app: Conveyor, shared_url: str, tmp_path: Path
) -> None:
    marker = tmp_path / "started"
    # Each job waits for the other to start: with a slot per process, one process could
    # run both one after the other (CI saw it once, when the second process started
    # after the first had finished a 0.5 s job), and then the test would show nothing.
    jobs = meet.enqueue_many([(str(marker), 2, 20.0)] * 2)
    log = tmp_path / "worker.log"
    supervisor = start_worker(shared_url, "--processes=2", "--concurrency=1", log=log)
    try:
        eventually(lambda: len(lines(marker)) == 2, timeout=20, message="jobs never started")
        supervisor.send_signal(signal.SIGTERM)
        assert supervisor.wait(timeout=20) == 0
    finally:
        supervisor.kill()
    assert [j.refresh().state for j in jobs] == [JobState.COMPLETED] * 2
    assert len({line.split()[1] for line in lines(marker)}) == 2  # two processes ran them


def children(pid: int) -> set[int]:
    """Live child processes of `pid`, read from /proc."""
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            fields = stat.rsplit(")", 1)[1].split()
            if int(fields[1]) == pid and fields[0] != "Z":
                found.add(int(entry.name))
    return found


def test_supervisor_restarts_a_worker_process_that_dies(
    crash_app: Conveyor, shared_url: str, tmp_path: Path
) -> None:
    marker = tmp_path / "started"
    first = slow.enqueue(str(marker), 60)
    supervisor = start_worker(shared_url, "--processes=2", "--concurrency=1", "--lease-timeout=1.5")
    try:
        eventually(lambda: len(lines(marker)) == 1, timeout=20, message="job never started")
        eventually(lambda: len(children(supervisor.pid)) == 2, timeout=20)
        victim = int(lines(marker)[0].split()[1])
        os.kill(victim, signal.SIGKILL)
        eventually(lambda: len(children(supervisor.pid) - {victim}) == 2, timeout=20, message="no restart")
        assert first.result(timeout=30)["attempt"] == 2  # recovered once the lease expired
        supervisor.send_signal(signal.SIGTERM)
        assert supervisor.wait(timeout=20) == 0
    finally:
        supervisor.kill()


def _alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie does not: an orphan may wait a while to be reaped)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="children follow the supervisor on Linux")
def test_workers_stop_when_their_supervisor_is_killed(
    crash_app: Conveyor, shared_url: str, tmp_path: Path
) -> None:
    """A SIGKILLed supervisor cannot forward anything: each worker process has the
    kernel send it SIGTERM when its parent dies, and stops as on a SIGTERM."""
    marker = tmp_path / "started"
    job = slow.enqueue(str(marker), 0.5)
    supervisor = start_worker(shared_url, "--processes=2", "--concurrency=1")
    workers: set[int] = set()
    try:
        eventually(lambda: len(children(supervisor.pid)) == 2, timeout=20, message="no worker processes")
        workers = children(supervisor.pid)
        eventually(lambda: len(lines(marker)) == 1, timeout=20, message="job never started")
        supervisor.send_signal(signal.SIGKILL)
        supervisor.wait(timeout=10)
        eventually(lambda: not any(map(_alive, workers)), timeout=30, message="orphaned workers ran on")
    finally:
        supervisor.kill()
        for pid in filter(_alive, workers):
            os.kill(pid, signal.SIGKILL)
    assert job.refresh().state is JobState.COMPLETED  # the running job had its grace


def start_cron_worker(url: str, *args: str) -> subprocess.Popen[bytes]:
    """`conveyor worker tests.crash.cronapp:app` on `url`, prefix "cron"."""
    env = {**os.environ, "CONVEYOR_URL": url, "CONVEYOR_PREFIX": "cron",
           "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}  # fmt: skip
    command = [
        sys.executable,
        "-m",
        "conveyor",
        "--log-level=WARNING",
        "worker",
        "tests.crash.cronapp:app",
        *args,
    ]
    return subprocess.Popen(command, env=env, cwd=ROOT)


def test_five_scheduler_processes_produce_one_job_per_tick(shared_url: str, tmp_path: Path) -> None:
    supervisor = start_cron_worker(shared_url, "--processes=5", "--concurrency=2")
    app = Conveyor(shared_url, prefix="cron")

    def ticks(schedule: str) -> list[float]:
        return sorted(j.meta["tick"] for j in app.jobs(limit=1000) if j.meta["schedule"] == schedule)

    try:
        # 5 s: 5 ticks of one schedule and about 20 of the other, each raced for by 5 processes.
        eventually(lambda: len(ticks("cron.second")) >= 5, timeout=40, message="too few cron ticks")
        supervisor.send_signal(signal.SIGTERM)
        assert supervisor.wait(timeout=30) == 0
    finally:
        supervisor.kill()
    for schedule, every in (("cron.quarter", 0.25), ("cron.second", 1.0)):
        found = ticks(schedule)
        assert len(found) == len(set(found)), f"{schedule}: a tick was enqueued twice"
        gaps = {round(b - a, 6) for a, b in itertools.pairwise(found)}
        assert gaps == {every}, f"{schedule}: ticks were skipped or doubled: {gaps}"
    app.close()


def test_a_scheduler_only_worker_enqueues_ticks_but_runs_nothing(shared_url: str) -> None:
    worker = start_cron_worker(shared_url, "--no-processors")
    app = Conveyor(shared_url, prefix="cron")
    try:
        eventually(lambda: len(app.jobs(limit=100)) >= 3, timeout=30, message="no ticks enqueued")
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=30) == 0
    finally:
        worker.kill()
    assert {job.state for job in app.jobs(limit=100)} == {JobState.QUEUED}
    app.close()
