"""OutageLog: a worker's engine failures, told once per kind and outage."""

from __future__ import annotations

import logging

import pytest

from conveyor.errors import BackendUnavailable
from conveyor.outage import STALE_AFTER, SUMMARY_EVERY, OutageLog

log = logging.getLogger("tests.outage")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def outage(clock: Clock) -> OutageLog:
    return OutageLog(log, clock=clock)


def down(n: int = 1) -> BackendUnavailable:
    return BackendUnavailable(f"Redis: Connection refused\n  (attempt {n})")


def lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == log.name]


def test_the_first_failure_of_each_kind_is_told_and_repeats_are_counted(
    outage: OutageLog, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    assert outage.failed("claim", down())
    assert outage.failed("store", down())
    clock.now += 5
    assert not outage.failed("claim", down(2))
    assert not outage.failed("store", down(2))
    assert outage.ongoing and lines(caplog) == []


def test_a_long_outage_is_summed_up_once_a_minute(
    outage: OutageLog, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    outage.failed("claim", down())
    for n in range(12):  # a failure every 5 s: one summary line a minute
        clock.now += 5
        outage.failed("claim" if n % 3 else "wait", down(n))
    clock.now += SUMMARY_EVERY - 1
    outage.failed("claim", down(99))
    said = lines(caplog)
    assert len(said) == 1
    assert said[0].startswith(
        "the engine is still unavailable after 60s; failed since the last line: claim 8, "
    )
    assert said[0].endswith("the latest: Redis: Connection refused (attempt 11)")  # on one line
    assert "wait 3" in said[0]


def test_the_outage_ends_once_every_failing_kind_works_again(
    outage: OutageLog, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    """Redis at maxmemory serves claims and refuses stores: claims going through do not
    end the outage the stores are in."""
    outage.failed("store", down())
    outage.failed("claim", down())
    clock.now += 3
    outage.worked("claim")
    assert outage.ongoing and lines(caplog) == []
    assert not outage.failed("claim", down())  # told already: the outage goes on
    clock.now += 40.25
    outage.worked("claim")
    outage.worked("store")
    assert not outage.ongoing
    assert lines(caplog) == ["the engine answers again after 43.2s; 3 call(s) failed meanwhile"]
    assert outage.failed("claim", down())  # a new outage is told afresh


def test_a_kind_that_is_not_called_again_goes_stale(
    outage: OutageLog, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    """A lease renewal fails, then no job is left running to renew (or pruning fails,
    which runs once a minute): it must not keep the outage open that long."""
    outage.failed("lease renewal", down())
    outage.failed("claim", down())
    clock.now += 10
    outage.worked("claim")
    assert outage.ongoing
    clock.now += STALE_AFTER
    outage.worked("claim")
    assert not outage.ongoing
    assert lines(caplog) == [
        f"the engine answers again after {10 + STALE_AFTER:.1f}s; 2 call(s) failed meanwhile"
    ]


def test_calls_that_work_outside_an_outage_say_nothing(
    outage: OutageLog, caplog: pytest.LogCaptureFixture
) -> None:
    for _ in range(3):
        outage.worked("claim")
    assert not outage.ongoing and lines(caplog) == []
