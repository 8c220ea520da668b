"""The waiter thread claims as soon as it is woken; nothing it claims is stranded."""

from __future__ import annotations

import threading
from typing import Any

from conveyor import Conveyor, JobState
from conveyor.job import JobRecord
from tests.conftest import eventually, running


def test_a_woken_waiter_claims_for_the_idle_worker() -> None:
    app = Conveyor("memory://")

    @app.task
    async def work(i: int) -> int:
        return i

    with running(app, concurrency=4) as worker:
        eventually(lambda: worker._waiting is not None)  # idle, the waiter is out
        callers: list[str] = []
        claim = app.backend.claim

        def traced(*args: Any, **kwargs: Any) -> list[JobRecord]:
            callers.append(threading.current_thread().name)
            return claim(*args, **kwargs)

        app.backend.claim = traced  # type: ignore[method-assign]
        assert work.enqueue(7).result(timeout=10) == 7
        assert callers[0].startswith("conveyor-wait")
    app.close()


def test_jobs_the_waiter_claims_as_the_worker_stops_go_back_unspent() -> None:
    app = Conveyor("memory://")

    @app.task
    async def work() -> str:
        return "done"

    worker = app.worker(concurrency=2)
    farewell, saying_farewell = worker._farewell, threading.Event()

    async def noted_farewell() -> None:
        saying_farewell.set()
        await farewell()

    worker._farewell = noted_farewell  # type: ignore[method-assign]
    thread = threading.Thread(target=worker.run, kwargs={"handle_signals": False})
    thread.start()
    eventually(lambda: worker._waiting is not None)  # idle, the waiter is out
    claim = app.backend.claim

    def claim_as_it_stops(*args: Any, **kwargs: Any) -> list[JobRecord]:
        claimed = claim(*args, **kwargs)
        worker.stop()  # the stop lands while the claim is on its way back...
        assert saying_farewell.wait(10)  # ...and arrives after the pump has ended
        return claimed

    app.backend.claim = claim_as_it_stops  # type: ignore[method-assign]
    job = work.enqueue()
    thread.join(10)
    assert not thread.is_alive()
    assert job.refresh().state is JobState.QUEUED  # handed back, not left active
    app.backend.claim = claim  # type: ignore[method-assign]
    with running(app):
        assert job.result(timeout=10) == "done"
    assert job.refresh().attempt == 1  # the handed-back claim spent no attempt
    app.close()
