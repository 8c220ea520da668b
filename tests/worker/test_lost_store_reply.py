"""A store whose commit landed but whose reply was lost is sent again by the worker:
its completed jobs still count as stored (events, no "discarded" warning)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import pytest

from conveyor import Conveyor
from conveyor.backends.base import Fence, Outcome
from conveyor.errors import BackendUnavailable
from tests.conftest import engine_url, running


@pytest.mark.parametrize("engine", ["memory", "sqlite", "redis", "postgres"])
def test_completed_jobs_of_a_store_retried_after_a_lost_reply_count_as_stored(
    engine: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    app = Conveyor(engine_url(engine, tmp_path))

    @app.task
    def double(x: int) -> int:
        return 2 * x

    lost: list[int] = []

    def once(outcomes: Sequence[Outcome], fences: list[Fence]) -> list[Fence]:
        if not lost:
            lost.append(len(outcomes))
            raise BackendUnavailable("connection lost before the reply")
        return fences

    if engine == "postgres":  # the worker stores through the engine's async work
        from conveyor.backends.postgres.aio import PostgresAsyncWork

        store_async = PostgresAsyncWork.finish

        async def reply_lost_async(self: PostgresAsyncWork, outcomes: Sequence[Outcome]) -> list[Fence]:
            return once(outcomes, await store_async(self, outcomes))  # committed, then lost

        monkeypatch.setattr(PostgresAsyncWork, "finish", reply_lost_async)
    else:
        store = app.backend.finish
        monkeypatch.setattr(app.backend, "finish", lambda outcomes: once(outcomes, store(outcomes)))
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
