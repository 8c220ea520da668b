"""The worker rides out engine errors: it logs, backs off, retries and loses nothing."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest

from conveyor import Conveyor, JobState
from conveyor.backends.sqlite import backend as sqlite_module
from conveyor.errors import BackendUnavailable
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


def test_a_finished_job_keeps_its_lease_while_its_result_cannot_be_stored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = Conveyor(f"sqlite:///{tmp_path / 'q.db'}")
    backend = app.backend
    store, renew = backend.finish, backend.extend_leases
    renewals: list[str] = []
    stored = threading.Event()

    def finish(outcomes: Any) -> Any:
        if not stored.is_set():
            raise BackendUnavailable("store refused for this test")
        return store(outcomes)

    def extend(renewal: Any, seconds: float) -> Any:
        renewals.extend(r.job_id for r in renewal)
        return renew(renewal, seconds)

    monkeypatch.setattr(backend, "finish", finish)
    monkeypatch.setattr(backend, "extend_leases", extend)

    @app.task(retries=0)
    def work() -> str:
        return "done"

    job = work.enqueue()
    with running(app, lease_timeout=0.6):
        # 8 renewals at 0.2 s apart span more than two whole leases after the job ended
        eventually(lambda: renewals.count(job.id) >= 8, message="lease renewed while unstored")
        assert job.refresh().state is JobState.ACTIVE
        stored.set()
        assert job.result(timeout=10) == "done"
    assert job.refresh().attempt == 1
    app.close()


def test_a_worker_claims_nothing_while_its_results_cannot_be_stored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Redis at maxmemory took small claims and refused the stores: a worker of 10 slots
    held 970 finished jobs it could not store. Now it claims again only once they are in."""
    app = Conveyor(f"sqlite:///{tmp_path / 'q.db'}")
    backend = app.backend
    store, claim = backend.finish, backend.claim
    calls: list[str] = []
    refusals = 3

    def finish(outcomes: Any) -> Any:
        nonlocal refusals
        if refusals:
            refusals -= 1
            calls.append("refused")
            raise BackendUnavailable("store refused for this test")
        calls.append("stored")
        return store(outcomes)

    def claim_and_note(*args: Any, **kw: Any) -> Any:
        claimed = claim(*args, **kw)
        calls.append(f"claimed {len(claimed)}")
        return claimed

    monkeypatch.setattr(backend, "finish", finish)
    monkeypatch.setattr(backend, "claim", claim_and_note)

    @app.task(retries=0)
    def work(i: int) -> int:
        return i

    jobs = work.enqueue_many([(i,) for i in range(20)])
    app.worker(concurrency=2).run(burst=True, handle_signals=False)
    refused, stored = calls.index("refused"), calls.index("stored")
    # At most the claim already on its way when the first store was refused (short jobs
    # send the store first, so the two overlap); none sent after it.
    assert calls[refused:stored].count("refused") == 3 and len(calls[refused:stored]) <= 4, calls
    assert [j.result(timeout=5) for j in jobs] == list(range(20))
    assert all(j.refresh().attempt == 1 for j in jobs)
    # One line for the three refusals (claims went through meanwhile), one at the end.
    assert caplog.text.count("retrying (backing off up to 5s); no new claims meanwhile: ") == 1
    assert "the engine answers again after" in caplog.text and "; 3 call(s) failed meanwhile" in caplog.text
    app.close()
