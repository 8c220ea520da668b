"""The worker rides out engine errors: it logs, backs off, retries and loses nothing."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from conveyor import Conveyor, JobState
from conveyor.backends.sqlite import backend as sqlite_module
from tests.conftest import eventually, running


def test_a_locked_sqlite_file_pauses_the_worker_and_loses_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(sqlite_module, "_BUSY_TIMEOUT_MS", 50)  # fail fast instead of waiting 10 s
    path = tmp_path / "locked.db"
    app = Conveyor(f"sqlite:///{path}", retry_backoff=0.01)

    @app.task(retries=0)
    async def work(i: int) -> int:
        await asyncio.sleep(0.02)
        return i

    first = work.enqueue(-1)
    jobs = work.enqueue_many([(i,) for i in range(30)])
    blocker = sqlite3.connect(path, isolation_level=None)
    with running(app, concurrency=5):
        eventually(lambda: first.refresh().state is JobState.COMPLETED)
        blocker.execute("BEGIN IMMEDIATE")  # every write now fails with "database is locked"
        eventually(lambda: "database is locked" in caplog.text, timeout=10)
        blocker.execute("ROLLBACK")
        results = [job.result(timeout=20) for job in jobs]
    blocker.close()
    assert results == list(range(30))
    assert all(job.refresh().attempt == 1 for job in jobs)  # each ran exactly once
    app.close()
