"""The event publisher while the engine refuses its writes: few warnings, nothing piles up."""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence

import pytest

from conveyor import events as events_module
from conveyor.errors import BackendUnavailable
from conveyor.events import Entry, EventPublisher, JobEvent
from tests.conftest import eventually


class Refusing:
    """Stands in for an engine's publish(): refuses while `down` is set."""

    def __init__(self) -> None:
        self.down = True
        self.calls: list[int] = []  # entries offered in each call
        self.written: list[str] = []
        self._lock = threading.Lock()

    def publish(self, entries: Sequence[Entry]) -> None:
        with self._lock:
            self.calls.append(len(entries))
        if self.down:
            raise BackendUnavailable("Redis at test: command not allowed when used memory > 'maxmemory'")
        self.written.extend(e.job_id for e in entries if isinstance(e, JobEvent))


def _event(n: int) -> JobEvent:
    return JobEvent("enqueued", f"q:{n}", "q", "t", float(n))


def _emit_and_wait(publisher: EventPublisher, engine: Refusing, events: list[JobEvent]) -> None:
    """One gathering: emit, then wait until the publisher has offered it."""
    before = len(engine.calls)
    publisher.emit(events)
    eventually(lambda: len(engine.calls) > before, timeout=5, message="a write")


def _dropped_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "conveyor.events"]


def test_refused_writes_warn_once_then_sum_up_and_say_when_they_work_again(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = Refusing()
    publisher = EventPublisher(engine)  # type: ignore[arg-type]
    with caplog.at_level(logging.WARNING, logger="conveyor.events"):
        for n in range(5):  # five 20 ms flushes refused: one line, not five
            _emit_and_wait(publisher, engine, [_event(n), _event(n + 100)])
        # The last refusal counted (it runs after publish() raised): 4 x 2 held back.
        eventually(lambda: publisher._drops._unreported == 8, timeout=5, message="the drops counted")
        lines = _dropped_lines(caplog)
        assert len(lines) == 1 and lines[0].startswith(
            "dropped 2 event(s) (more drops are summed up every 10 s): Redis at test: command not"
        )
        monkeypatch.setattr(events_module, "_WARN_EVERY", 0.0)  # the next refusal is past the window
        _emit_and_wait(publisher, engine, [_event(5)])
        eventually(lambda: len(_dropped_lines(caplog)) == 2, timeout=5, message="the summed-up line")
        assert _dropped_lines(caplog)[1].startswith("dropped 9 more event(s) in ")
        engine.down = False
        _emit_and_wait(publisher, engine, [_event(6)])
        eventually(lambda: len(_dropped_lines(caplog)) == 3, timeout=5, message="the recovery line")
        assert _dropped_lines(caplog)[2] == "events are written again"
        _emit_and_wait(publisher, engine, [_event(7)])
    publisher.close()
    assert engine.written == ["q:6", "q:7"] and len(_dropped_lines(caplog)) == 3


def test_a_refused_slice_drops_the_rest_of_its_gathering_without_offering_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """1,200 entries are three writes of 500 when the engine takes them; when it refuses
    the first, the other two would each wait out its timeout while events pile up."""
    engine = Refusing()
    publisher = EventPublisher(engine)  # type: ignore[arg-type]
    with caplog.at_level(logging.WARNING, logger="conveyor.events"):
        _emit_and_wait(publisher, engine, [_event(n) for n in range(1_200)])
        publisher.close()  # joins the thread: its refusal is logged
    assert engine.calls == [500]
    assert _dropped_lines(caplog)[0].startswith("dropped 1200 event(s)")


def test_an_unexpected_publish_error_drops_the_events_and_the_publisher_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A publish that raises something other than BackendUnavailable (a bug): those
    events are dropped and said so, and later ones are written. It used to end the
    publisher's thread silently, and every later event piled up in its queue."""

    class Buggy(Refusing):
        def publish(self, entries: Sequence[Entry]) -> None:
            if self.down:
                with self._lock:
                    self.calls.append(len(entries))
                raise TypeError("not JSON serializable")
            super().publish(entries)

    engine = Buggy()
    publisher = EventPublisher(engine)  # type: ignore[arg-type]
    with caplog.at_level(logging.WARNING, logger="conveyor.events"):
        _emit_and_wait(publisher, engine, [_event(1)])
        engine.down = False
        _emit_and_wait(publisher, engine, [_event(2)])
        publisher.close()
    assert engine.written == ["q:2"]
    assert "dropped 1 event(s) (more drops are summed up every 10 s): not JSON serializable" in caplog.text
