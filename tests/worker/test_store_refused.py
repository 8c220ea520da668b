"""An outcome the engine refuses to store (for what it holds, not because the engine is
away) never stops the worker: its batch is stored one outcome at a time, and the
refused one is stored as its job's death."""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence

import pytest

from conveyor import Conveyor, JobFailed, current_job
from conveyor.backends.base import Fence, Outcome, Renewal
from conveyor.job import JobState
from tests.conftest import running


def refuse(
    app: Conveyor, monkeypatch: pytest.MonkeyPatch, marker: str, *, in_errors: bool = False
) -> list[int]:
    """Make the engine refuse every batch holding `marker` in a result (or, `in_errors`,
    an error), as PostgreSQL refused a NUL; returns the sizes of the batches refused."""
    refused: list[int] = []
    store = app.backend.finish

    def picky(outcomes: Sequence[Outcome]) -> list[Fence]:
        if any(marker in (o.result or "") + (o.error or "" if in_errors else "") for o in outcomes):
            refused.append(len(outcomes))
            raise ValueError(f"cannot store {marker!r}")
        return store(outcomes)

    monkeypatch.setattr(app.backend, "finish", picky)
    return refused


def test_a_refused_outcome_ends_its_job_dead_and_the_worker_goes_on(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    app = Conveyor("memory://")

    @app.task
    def echo(text: str) -> str:
        return text

    refused = refuse(app, monkeypatch, "poison")
    jobs = echo.enqueue_many([(f"fine {i}",) for i in range(20)] + [("poison",)])
    with running(app, concurrency=25):
        fine = [job.result(timeout=10) for job in jobs[:-1]]
        with pytest.raises(JobFailed, match="StoreRefused: the engine could not store"):
            jobs[-1].result(timeout=10)
        assert fine == [f"fine {i}" for i in range(20)]
        after = echo.enqueue("after")
        assert after.result(timeout=10) == "after"  # the worker is still at work
    assert jobs[-1].refresh().state is JobState.DEAD
    assert "ValueError(\"cannot store 'poison'\")" in (jobs[-1].error or "")
    assert refused[-1] == 1  # alone at last
    assert "storing it as dead, without its result, traceback and logs" in caplog.text
    app.close()


def test_a_death_refused_too_leaves_the_job_to_its_lease(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The engine refuses the death the worker makes of it too: the worker gives the job
    up (its lease expires and counts the attempt) and keeps running."""
    app = Conveyor("memory://")

    @app.task
    def echo(text: str) -> str:
        return text

    refuse(app, monkeypatch, "poison", in_errors=True)  # the death's error names the refusal
    bad = echo.enqueue("poison")
    with running(app, lease_timeout=30):
        assert echo.enqueue("fine").result(timeout=10) == "fine"
        assert echo.enqueue("also fine").result(timeout=10) == "also fine"
    assert bad.refresh().state is JobState.ACTIVE  # left to its lease
    assert "refused without its contents too" in caplog.text
    app.close()


def test_a_refused_retry_stays_a_retry(monkeypatch: pytest.MonkeyPatch) -> None:
    """The engine refuses a failed attempt for its traceback: the attempt is stored as a
    retry without it, so the job keeps the attempts it has left, and its next one runs."""
    app = Conveyor("memory://")
    store = app.backend.finish
    tries: list[int] = []

    def picky(outcomes: Sequence[Outcome]) -> list[Fence]:
        if any("poison" in (o.traceback or "") for o in outcomes):
            raise ValueError("cannot store this traceback")
        return store(outcomes)

    @app.task(retries=2)
    def flaky() -> str:
        tries.append(1)
        if len(tries) == 1:
            raise RuntimeError("poison")
        return "done"

    monkeypatch.setattr(app.backend, "finish", picky)
    job = flaky.enqueue()
    with running(app, retry_backoff=0.01):
        assert job.result(timeout=10) == "done"
    [first] = job.refresh().attempts
    assert first.error.startswith("StoreRefused: the engine could not store this attempt's outcome: ")
    assert "cannot store this traceback" in first.error and first.traceback is None
    app.close()


def test_a_renewal_refused_for_its_log_lines_is_sent_without_them(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The engine refuses a lease renewal for a log line it carries: the renewal goes
    again without progress and lines, the job keeps its lease and ends, and the worker
    goes on. Raised, the refusal stopped the worker, leases and all."""
    app = Conveyor("memory://")
    extend = app.backend.extend_leases
    refused, seen = list[int](), threading.Event()

    def picky(renewals: Sequence[Renewal], lease_seconds: float) -> list[Fence]:
        if any(line.message == "poison" for r in renewals for line in r.logs):
            refused.append(len(renewals))
            seen.set()
            raise ValueError("cannot store this line")
        return extend(renewals, lease_seconds)

    @app.task
    def chatty() -> str:
        job = current_job()
        job.log("poison")
        job.heartbeat()
        seen.wait(5)  # the renewal carrying the line goes while the task still runs
        return "done"

    monkeypatch.setattr(app.backend, "extend_leases", picky)
    job = chatty.enqueue()
    with caplog.at_level(logging.ERROR, "conveyor.worker"), running(app):
        assert job.result(timeout=10) == "done"
        assert chatty.enqueue().result(timeout=10) == "done"  # still at work
    assert refused and job.logs() == []
    assert "renewing without them: ValueError('cannot store this line')" in caplog.text
    app.close()
