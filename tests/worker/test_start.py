"""A worker that starts while its engine is unreachable waits for it, within limits."""

from __future__ import annotations

import logging
import threading
import time

import pytest

from conveyor import BackendUnavailable, Conveyor
from tests.conftest import eventually
from tests.redis.servers import free_port


def _unreachable() -> Conveyor:
    """An app whose Redis URL points at a port nothing listens on."""
    return Conveyor(f"redis://127.0.0.1:{free_port()}/0?timeout=1")


def test_a_worker_gives_up_after_start_timeout_naming_the_engine(caplog: pytest.LogCaptureFixture) -> None:
    app = _unreachable()
    began = time.monotonic()
    with pytest.raises(BackendUnavailable, match=r"Connection refused.*gave up after start_timeout=1s"):
        app.worker(start_timeout=1).run(handle_signals=False)
    assert 0.9 < time.monotonic() - began < 5
    assert "engine unavailable at start" in caplog.text and "trying again (" in caplog.text


def test_start_timeout_zero_fails_at_once() -> None:
    app = _unreachable()
    began = time.monotonic()
    with pytest.raises(BackendUnavailable, match="start_timeout=0s"):
        app.worker(start_timeout=0).run(handle_signals=False)
    assert time.monotonic() - began < 2


def test_a_worker_waiting_for_its_engine_stops_cleanly(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "conveyor.worker")
    worker = _unreachable().worker(start_timeout=None)
    codes: list[int] = []
    thread = threading.Thread(target=lambda: codes.append(worker.run(handle_signals=False)), daemon=True)
    thread.start()
    eventually(lambda: "trying again (" in caplog.text, message="a first failed attempt")
    assert "for ever" in caplog.text
    worker.stop()
    thread.join(timeout=5)
    assert codes == [0]
