"""A job's events reach the stream in the order its life took."""

from __future__ import annotations

import threading
from collections.abc import Sequence

import pytest

from conveyor import Conveyor
from conveyor.backends.base import Fence, Outcome, OutcomeKind
from tests.conftest import running


def test_a_retried_job_claimed_again_before_its_store_returns_says_retried_first(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The retry is committed, the worker claims and runs the job again, and only then
    does the store's reply come back (CI saw the first half once, on Valkey): the second
    "active" event still follows "retried", and the second attempt's "completed" is not
    lost (the two attempts' unstored outcomes had shared one slot, keyed by job id)."""
    app = Conveyor("memory://", retry_backoff=0.001, retry_backoff_max=0.001)
    second_attempt = threading.Event()
    attempts: list[int] = []

    @app.task(retries=1)
    def flaky() -> str:
        attempts.append(1)
        if len(attempts) == 1:
            raise ValueError("first")
        second_attempt.set()
        return "ok"

    store = app.backend.finish

    def slow_reply(outcomes: Sequence[Outcome]) -> list[Fence]:
        fences = store(outcomes)  # committed: the job can be claimed again
        if any(o.kind is OutcomeKind.RETRY for o in outcomes):
            assert second_attempt.wait(10), "the retried job was not started before the reply"
        return fences

    monkeypatch.setattr(app.backend, "finish", slow_reply)
    stream = app.events(idle=10)
    job = flaky.enqueue()
    with running(app):
        assert job.result(timeout=10) == "ok"
    kinds = []
    for event in stream:
        kinds += [event.kind] if event.job_id == job.id else []
        if event.kind == "completed":
            break
    assert kinds == ["enqueued", "active", "retried", "active", "completed"]
    app.close()
