"""A large claim split across engine threads (`Backend.claim_lanes`): every job still
runs once, and a part the engine refuses costs nothing of the other part."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from conveyor import Conveyor, JobState
from conveyor.job import JobRecord
from tests.conftest import engine_url, run_with_one_part_refused


def test_redis_claims_a_large_batch_in_two_parts_and_runs_each_job_once(tmp_path: Path) -> None:
    app = Conveyor(engine_url("redis", tmp_path), prefix="t")
    assert app.backend.claim_lanes == 2

    @app.task
    async def work(i: int) -> int:
        return i

    parts: list[tuple[str, int]] = []
    claim = app.backend.claim

    def traced(worker_id: str, queues: Any, limit: int, *args: Any, **kwargs: Any) -> list[JobRecord]:
        parts.append((threading.current_thread().name.rsplit("_", 1)[0], limit))  # pool threads end _0
        return claim(worker_id, queues, limit, *args, **kwargs)

    app.backend.claim = traced  # type: ignore[method-assign]
    jobs = work.enqueue_many([(i,) for i in range(300)])
    app.worker(concurrency=64).run(burst=True, handle_signals=False)
    assert ("conveyor-engine", 32) in parts and ("conveyor-engine-2", 32) in parts
    records = app.backend.get([j.id for j in jobs])
    assert [(r.state, r.attempt) for r in records if r is not None] == [(JobState.COMPLETED, 1)] * 300
    assert [r.result for r in records if r is not None] == [str(i) for i in range(300)]
    app.close()


def test_a_refused_part_is_logged_and_the_other_part_runs(caplog: pytest.LogCaptureFixture) -> None:
    app = Conveyor("memory://")
    app.backend.claim_lanes = 2

    @app.task
    async def work(i: int) -> int:
        return i

    jobs = work.enqueue_many([(i,) for i in range(100)])
    # The part claimed on the second engine thread is refused.
    run_with_one_part_refused(
        app, 64, caplog, refuse=lambda _: threading.current_thread().name.startswith("conveyor-engine-2")
    )
    assert {j.refresh().state for j in jobs} == {JobState.COMPLETED}
    app.close()
