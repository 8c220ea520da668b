"""A store whose commit landed but whose reply was lost is sent again by the worker:
its jobs' outcomes still count as stored (events, no "discarded" warning)."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from conveyor import Conveyor, Snooze, current_job
from conveyor.backends.base import Fence, Outcome
from conveyor.errors import BackendUnavailable
from conveyor.events import JobEvent
from conveyor.job import JobState
from tests.conftest import engine_url, running


def lose_each_first_reply(app: Conveyor, engine: str, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Make each batch of outcomes commit and then lose its reply, the first time it is
    sent: the worker sends it again. Returns the sizes of the batches whose reply was lost."""
    lost: list[int] = []
    seen: set[tuple[tuple[str, str, str], ...]] = set()

    def once(outcomes: Sequence[Outcome], fences: list[Fence]) -> list[Fence]:
        batch = tuple((o.job_id, o.token, str(o.kind)) for o in outcomes)
        if batch not in seen:
            seen.add(batch)
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
    return lost


def events_of(stream: Iterator[JobEvent], kinds: set[str], want: int) -> dict[str, set[str]]:
    """Job ids per event kind, until each kind has `want` of them (the stream's idle ends it)."""
    got: dict[str, set[str]] = {kind: set() for kind in kinds}
    for event in stream:
        if event.kind in got:
            got[event.kind].add(event.job_id)
        if all(len(ids) >= want for ids in got.values()):
            break
    return got


@pytest.fixture(params=["memory", "sqlite", "redis", "postgres"])
def lossy(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[Conveyor, list[int]]]:
    """An app on each engine whose stores of finished attempts lose their first reply,
    and the sizes of the batches whose reply was lost."""
    app = Conveyor(engine_url(request.param, tmp_path))
    yield app, lose_each_first_reply(app, request.param, monkeypatch)
    app.close()


def test_completed_jobs_of_a_store_retried_after_a_lost_reply_count_as_stored(
    lossy: tuple[Conveyor, list[int]], caplog: pytest.LogCaptureFixture
) -> None:
    app, lost = lossy

    @app.task
    def double(x: int) -> int:
        return 2 * x

    stream = app.events(idle=5)
    jobs = double.enqueue_many([(i,) for i in range(5)])
    with caplog.at_level(logging.WARNING, logger="conveyor.worker"), running(app):
        assert [j.result(timeout=10) for j in jobs] == [0, 2, 4, 6, 8]
        got = events_of(stream, {"completed"}, len(jobs))
    assert lost and got["completed"] == {j.id for j in jobs}
    assert "lease was lost" not in caplog.text


def test_failed_attempts_of_a_store_retried_after_a_lost_reply_count_as_stored(
    lossy: tuple[Conveyor, list[int]], caplog: pytest.LogCaptureFixture
) -> None:
    """A retry and a final failure are told from the lease recovery's by their error. The
    retry waits 1-2 s (the default backoff), so the worker reads it before it runs again."""
    app, lost = lossy

    @app.task(retries=1)
    def broken(x: int) -> None:
        raise ValueError(f"bad row {x}")

    stream = app.events(idle=5)
    jobs = broken.enqueue_many([(i,) for i in range(3)])
    with caplog.at_level(logging.WARNING, logger="conveyor.worker"), running(app):
        got = events_of(stream, {"retried", "dead"}, len(jobs))
    ids = {j.id for j in jobs}
    assert len(lost) >= 2 and got == {"retried": ids, "dead": ids}
    assert {j.refresh().state for j in jobs} == {JobState.DEAD}
    assert "lease was lost" not in caplog.text


def test_a_snooze_of_a_store_retried_after_a_lost_reply_counts_as_stored(
    lossy: tuple[Conveyor, list[int]], caplog: pytest.LogCaptureFixture
) -> None:
    """A snooze gives its attempt back, which the lease recovery never does: told apart
    by the attempt count. It waits 1 s, so the worker reads it before it runs again."""
    app, lost = lossy
    runs: list[int] = []

    @app.task
    def later(x: int) -> int:
        runs.append(current_job().attempt)
        if len(runs) == 1:
            raise Snooze(1.0)
        return x

    job = later.enqueue(7)
    with caplog.at_level(logging.WARNING, logger="conveyor.worker"), running(app):
        assert job.result(timeout=10) == 7
    assert len(lost) >= 2 and runs == [1, 1]  # the snooze spent no attempt
    assert "lease was lost" not in caplog.text
