"""A store whose commit landed but whose reply was lost is sent again by the worker:
its completed jobs still count as stored (events, no "discarded" warning). The engines
whose store the worker calls from a thread; PostgreSQL's async store takes the same
path in the worker after it."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import pytest

from conveyor import Conveyor
from conveyor.backends.base import Fence, Outcome
from conveyor.errors import BackendUnavailable
from tests.conftest import engine_url, running


@pytest.mark.parametrize("engine", ["memory", "sqlite", "redis"])
def test_completed_jobs_of_a_store_retried_after_a_lost_reply_count_as_stored(
    engine: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    app = Conveyor(engine_url(engine, tmp_path))

    @app.task
    def double(x: int) -> int:
        return 2 * x

    store = app.backend.finish
    lost: list[int] = []

    def reply_lost_once(outcomes: Sequence[Outcome]) -> list[Fence]:
        fences = store(outcomes)  # committed
        if not lost:
            lost.append(len(outcomes))
            raise BackendUnavailable("connection lost before the reply")
        return fences

    monkeypatch.setattr(app.backend, "finish", reply_lost_once)
    stream = app.events(idle=5)
    jobs = double.enqueue_many([(i,) for i in range(5)])
    with caplog.at_level(logging.WARNING, logger="conveyor.worker"), running(app):
        assert [j.result(timeout=10) for j in jobs] == [0, 2, 4, 6, 8]
        completed: set[str] = set()
        for event in stream:
            completed |= {event.job_id} if event.kind == "completed" else set()
            if len(completed) == len(jobs):
                break
    assert lost and completed == {j.id for j in jobs}
    assert "lease was lost" not in caplog.text
    app.close()
