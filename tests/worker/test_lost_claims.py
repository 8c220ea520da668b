"""A claim whose reply was lost (the engine leased the jobs, then the call failed, as when
a connection drops or the server dies after its commit): the worker takes those jobs back
on its next claim. Left alone they would sit leased until the lease ran out and then count
as a failed attempt, so a job without retries would end dead without having run (the
PostgreSQL restart test once saw this). Redis takes them back inside its own claim, by
lease token (tests/redis/test_lost_replies.py)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from conveyor import Conveyor
from conveyor.backends.base import AsyncWork
from conveyor.errors import BackendUnavailable
from conveyor.job import JobRecord
from tests.conftest import engine_url, running


def _lose_first_reply(app: Conveyor, lost: threading.Event) -> None:
    """The first claim that leases anything raises afterwards, on the threaded and the
    async path alike, as a dropped reply does."""

    def lose(claimed: list[JobRecord]) -> list[JobRecord]:
        if claimed and not lost.is_set():
            lost.set()
            raise BackendUnavailable("the connection dropped before the reply")
        return claimed

    claim = app.backend.claim

    def threaded(worker_id: str, queues: Sequence[str], limit: int, *args: Any, **kw: Any) -> Any:
        return lose(claim(worker_id, queues, limit, *args, **kw))

    make_work: Callable[[], AsyncWork | None] = app.backend.async_work

    def async_work() -> AsyncWork | None:
        work = make_work()
        if work is not None:
            inner = work.claim

            async def claim_async(worker_id: str, queues: Sequence[str], limit: int, lease: float) -> Any:
                return lose(await inner(worker_id, queues, limit, lease))

            setattr(work, "claim", claim_async)  # noqa: B010 - an instance's own method
        return work

    app.backend.claim = threaded  # type: ignore[method-assign]
    app.backend.async_work = async_work  # type: ignore[method-assign]


@pytest.mark.parametrize("engine", ["memory", "sqlite", "postgres"])
def test_jobs_of_a_claim_whose_reply_was_lost_run_once_long_before_their_lease_ends(
    engine: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    app = Conveyor(engine_url(engine, tmp_path), prefix="lost")
    assert not app.backend.reclaims_lost_claims
    lost, runs = threading.Event(), []

    @app.task(retries=0)
    async def work(i: int) -> int:
        runs.append(i)
        return i

    _lose_first_reply(app, lost)
    jobs = work.enqueue_many([(i,) for i in range(20)])
    logged = caplog.at_level(logging.WARNING, logger="conveyor.worker")
    with logged, running(app, concurrency=5, lease_timeout=30):
        results = [job.result(timeout=10) for job in jobs]  # the lease would take 30 s
    assert lost.is_set()
    assert results == list(range(20))
    assert sorted(runs) == list(range(20))  # each once: nothing taken back twice
    assert [r.attempt for r in app.backend.get([j.id for j in jobs]) if r is not None] == [1] * 20
    assert "claim's reply was lost" in caplog.text
    app.close()


def test_lost_jobs_beyond_the_free_slots_go_back_unspent() -> None:
    app = Conveyor("memory://")
    lost, runs = threading.Event(), []

    @app.task(retries=0)
    async def work(i: int) -> int:
        runs.append(i)
        return i

    claim = app.backend.claim

    def lose_a_large_claim(worker_id: str, queues: Sequence[str], limit: int, *args: Any, **kw: Any) -> Any:
        if not lost.is_set() and limit >= 4:  # lease 8 while 4 slots are free, lose the reply
            claim(worker_id, queues, 8, *args, **kw)
            lost.set()
            raise BackendUnavailable("the connection dropped before the reply")
        return claim(worker_id, queues, limit, *args, **kw)

    app.backend.claim = lose_a_large_claim  # type: ignore[method-assign]
    jobs = work.enqueue_many([(i,) for i in range(8)])
    with running(app, concurrency=4, lease_timeout=30):
        results = [job.result(timeout=10) for job in jobs]  # the lease would take 30 s
    assert results == list(range(8))
    assert sorted(runs) == list(range(8))
    assert [r.attempt for r in app.backend.get([j.id for j in jobs]) if r is not None] == [1] * 8
    app.close()
