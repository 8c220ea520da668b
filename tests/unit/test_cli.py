"""The `conveyor` command, run as users run it: a real subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conveyor import Conveyor, JobState

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def db(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'cli.db'}"


def conveyor(
    db: str, *args: str, ok: bool = True, stdin: str = "", **variables: str
) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "CONVEYOR_URL": db,
        "CONVEYOR_PREFIX": "cli",
        "COLUMNS": "200",
        "PYTHONPATH": str(ROOT),
        **variables,
    }
    done = subprocess.run(
        [sys.executable, "-m", "conveyor", *args],
        env=env,
        cwd=ROOT,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
    )
    if ok:
        assert done.returncode == 0, done.stderr
    return done


def test_enqueue_work_and_inspect(db: str) -> None:
    out = conveyor(db, "enqueue", "tests.unit.cliapp:app", "cli.add", "2", "--kwargs", '{"b": 40}').stdout
    assert "enqueued job 1 (cli.add) on queue default: queued" in out
    conveyor(db, "worker", "tests.unit.cliapp:app", "--burst")
    app = Conveyor(db, prefix="cli")
    assert app.get_job("1").result(timeout=5) == 42
    status = conveyor(db, "status").stdout
    assert "default" in status and "completed" in status
    listed = json.loads(conveyor(db, "jobs", "--json").stdout)
    assert [(j["id"], j["state"], j["result"]) for j in listed] == [("1", "completed", 42)]
    story = json.loads(conveyor(db, "jobs", "1", "--json").stdout)
    assert story["args"] == [2] and story["kwargs"] == {"b": 40}
    app.close()


def test_the_worker_process_collects_garbage_less_often(db: str) -> None:
    """`conveyor worker` owns its process: start-up objects frozen, first threshold raised."""
    from conveyor.worker.collector import FIRST_THRESHOLD

    app = Conveyor(db, prefix="cli")
    job = app.enqueue("cli.collector")
    conveyor(db, "worker", "tests.unit.cliapp:app", "--burst")
    threshold, frozen = job.result(timeout=5)
    assert threshold == FIRST_THRESHOLD
    assert frozen > 1_000  # modules, the app: what start-up left behind
    app.close()


def test_cancel_retry_and_purge(db: str) -> None:
    conveyor(db, "enqueue", "tests.unit.cliapp:app", "cli.add", "1")
    assert "cancelled 1 of 1" in conveyor(db, "cancel", "1").stdout
    assert conveyor(db, "cancel", "1", ok=False).returncode == 1
    assert "requeued 1 of 1" in conveyor(db, "retry", "1").stdout
    conveyor(db, "cancel", "1")
    assert "deleted 1 job(s)" in conveyor(db, "purge", "--yes").stdout
    app = Conveyor(db, prefix="cli")
    assert app.jobs() == []
    app.close()


def test_delete_by_id_asks_first_and_names_what_it_did_not_find(db: str) -> None:
    conveyor(db, "enqueue", "tests.unit.cliapp:app", "cli.add", "1")
    conveyor(db, "enqueue", "tests.unit.cliapp:app", "cli.add", "2")
    refused = conveyor(db, "delete", "1", ok=False, stdin="n\n")
    assert refused.returncode == 1 and "aborted" in refused.stderr
    out = conveyor(db, "delete", "1", "7", stdin="y\n").stdout
    assert "job 7: not deleted (unknown)" in out and "deleted 1 of 2 job(s)" in out
    assert conveyor(db, "delete", "1", "--yes", ok=False).returncode == 1
    app = Conveyor(db, prefix="cli")
    assert [j.id for j in app.jobs()] == ["2"]
    app.close()


def test_retry_all_dead(db: str) -> None:
    app = Conveyor(db, prefix="cli")
    job = app.enqueue("cli.add", "x", "y", "z")  # too many arguments: dead
    conveyor(db, "worker", "tests.unit.cliapp:app", "--burst")
    assert job.refresh().state is JobState.DEAD
    assert "requeued 1 of 1" in conveyor(db, "retry", "--all-dead").stdout
    app.close()


@pytest.mark.parametrize(
    ("args", "message", "code"),
    [
        (["worker", "nocolon"], "'nocolon' must look like module:attribute", 2),
        (["worker", "no_such_module:app"], "cannot import module 'no_such_module'", 2),
        (["worker", "tests.unit.cliapp:missing"], "has no attribute 'missing'", 2),
        (["worker", "tests.unit.cliapp:not_an_app"], "is a int, not a Conveyor app", 2),
        (
            ["worker", "tests.unit.cliapp:app", "--concurrency", "0"],
            "concurrency: must be a positive integer",
            1,
        ),
        (["worker", "tests.unit.cliapp:app", "--queues", "a b"], "invalid queue name 'a b'", 1),
        (["worker", "tests.unit.cliapp:app", "--loop", "trio"], "'trio' is not one of 'auto', 'asyncio'", 2),
        (["--url", "bogus://x", "status"], "unsupported engine URL 'bogus://x'", 1),
        (["jobs", "424242"], "no job with id '424242'", 1),
        (["enqueue", "tests.unit.cliapp:app", "cli.add", "--kwargs", "{bad"], "--kwargs", 2),
        (["enqueue", "tests.unit.cliapp:app", "cli.add", "--delay", "soon"], "not a duration", 2),
        (
            ["enqueue", "tests.unit.cliapp:app", "cli.add", "--priority", "x"],
            "'x' is not a valid integer",
            2,
        ),
        (["bench", "--only", "warp"], "unknown scenario 'warp'", 1),
    ],
)
def test_bad_input_is_one_clear_line(db: str, args: list[str], message: str, code: int) -> None:
    done = conveyor(db, *args, ok=False)
    assert done.returncode == code
    assert message in done.stderr
    assert "Traceback" not in done.stderr


def test_the_worker_says_which_loop_it_runs_on(db: str) -> None:
    pytest.importorskip("uvloop", reason="the uvloop extra is not installed")
    assert "loop uvloop" in conveyor(db, "worker", "tests.unit.cliapp:app", "--burst").stderr
    done = conveyor(db, "worker", "tests.unit.cliapp:app", "--burst", CONVEYOR_LOOP="asyncio")
    assert "loop asyncio" in done.stderr


def test_settings_come_from_the_environment(db: str) -> None:
    done = conveyor(db, "worker", "tests.unit.cliapp:app", "--burst", ok=False, CONVEYOR_CONCURRENCY="nope")
    assert done.returncode == 2
    assert "'nope' is not a valid integer" in done.stderr and "--concurrency" in done.stderr


def test_pause_and_resume(db: str) -> None:
    conveyor(db, "enqueue", "tests.unit.cliapp:app", "cli.add", "1", "--queue", "media")
    assert "paused media" in conveyor(db, "pause", "media").stdout
    assert "media (paused)" in conveyor(db, "status").stdout
    assert "resumed media" in conveyor(db, "resume", "media").stdout
    assert "(paused)" not in conveyor(db, "status").stdout
    assert "invalid queue name" in conveyor(db, "pause", "a b", ok=False).stderr


def test_schedules_are_listed_and_the_scheduler_can_be_switched_off(db: str) -> None:
    out = conveyor(db, "schedules", "tests.crash.cronapp:app").stdout
    assert "cron.quarter" in out and "every 0:00:00.250000" in out and "skip" in out
    assert "has no periodic schedules" in conveyor(db, "schedules", "tests.unit.cliapp:app").stdout
    # A burst worker without its scheduler runs nothing and enqueues nothing.
    conveyor(db, "worker", "tests.crash.cronapp:app", "--burst", "--no-scheduler", CONVEYOR_PREFIX="cron")
    app = Conveyor(db, prefix="cron")
    assert app.jobs() == []
    app.close()
