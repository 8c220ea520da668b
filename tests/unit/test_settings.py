"""Settings: defaults, CONVEYOR_* variables, keyword overrides and their errors."""

from __future__ import annotations

import random

import pytest

from conveyor import ConfigError, Conveyor
from conveyor.retry import backoff_delay
from conveyor.settings import Settings


def test_defaults() -> None:
    s = Settings.load(env={})
    assert (s.url, s.prefix, s.concurrency, s.queues) == (
        "sqlite:///conveyor.db",
        "conveyor",
        10,
        ("default",),
    )
    assert s.lease_timeout == 30 and s.heartbeat_every == 10


def test_environment_then_keywords() -> None:
    env = {
        "CONVEYOR_URL": "memory://",
        "CONVEYOR_CONCURRENCY": "50",
        "CONVEYOR_QUEUES": "high, default",
        "CONVEYOR_JOB_TIMEOUT": "none",
        "CONVEYOR_LEASE_TIMEOUT": "12",
        "CONVEYOR_LOG_LEVEL": "debug",
    }
    s = Settings.load({"concurrency": 7}, env=env)
    assert (s.url, s.concurrency, s.queues, s.job_timeout) == (
        "memory://",
        7,
        ("high", "default"),
        None,
    )
    assert s.heartbeat_every == 4 and s.log_level == "DEBUG"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"CONVEYOR_CONCURRENCY": "abc"}, "CONVEYOR_CONCURRENCY: invalid value 'abc'"),
        ({"CONVEYOR_CONCURRENCY": "0"}, "CONVEYOR_CONCURRENCY: must be a positive integer"),
        ({"CONVEYOR_QUEUES": "a,b c"}, "invalid queue name 'b c'"),
        ({"CONVEYOR_PREFIX": "1bad"}, "CONVEYOR_PREFIX: invalid prefix '1bad'"),
        ({"CONVEYOR_URL": "nope"}, "CONVEYOR_URL: invalid URL 'nope'"),
        ({"CONVEYOR_LOG_LEVEL": "LOUD"}, "must be one of DEBUG"),
        ({"CONVEYOR_RETRY_BACKOFF": "-1"}, "must be a number > 0"),
        ({"CONVEYOR_KEEP_COMPLETED_COUNT": "-5"}, "CONVEYOR_KEEP_COMPLETED_COUNT: must be an integer >= 0"),
        ({"CONVEYOR_START_TIMEOUT": "-1"}, "CONVEYOR_START_TIMEOUT: must be a number >= 0 or none"),
    ],
)
def test_bad_environment_is_named(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Settings.load(env=env)


def test_unknown_keyword_is_named() -> None:
    with pytest.raises(ConfigError, match="unknown setting 'concurency'"):
        Conveyor("memory://", concurency=5)


def test_unsupported_engine_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match="unsupported engine URL 'mysql://root:\\*\\*\\*@db/x'"):
        _ = Conveyor("mysql://root:secret@db/x").backend


def test_sqlite_memory_url_points_to_memory_engine() -> None:
    with pytest.raises(ConfigError, match="memory://"):
        _ = Conveyor("sqlite:///:memory:").backend


def test_backoff_grows_exponentially_with_jitter() -> None:
    rng = random.Random(7)
    delays = [backoff_delay(n, base=2.0, cap=3600, rng=rng) for n in range(1, 6)]
    for n, delay in enumerate(delays, start=1):
        full = 2.0 * 2 ** (n - 1)
        assert full / 2 <= delay <= full
    assert backoff_delay(40, base=2.0, cap=60, rng=rng) <= 60


def test_retention_counts_come_from_the_environment() -> None:
    s = Settings.load(env={"CONVEYOR_KEEP_COMPLETED_COUNT": "1000", "CONVEYOR_KEEP_DEAD_COUNT": "none"})
    assert (s.keep_completed_count, s.keep_dead_count) == (1000, None)


def test_feature_switches_come_from_the_environment() -> None:
    s = Settings.load(env={"CONVEYOR_EVENTS": "0", "CONVEYOR_SCHEDULER": "off", "CONVEYOR_PROCESSORS": "yes"})
    assert (s.events, s.scheduler, s.processors) == (False, False, True)


def test_none_sets_what_may_be_none_and_defaults_the_rest() -> None:
    """keep_completed=None keeps finished jobs for ever; until 2026-12-07 it was skipped
    and they were pruned after the default 7 days. url=None still means the default."""
    app = Conveyor(None, keep_completed=None, job_timeout=None, start_timeout=None, concurrency=None)
    s = app.settings
    assert (s.keep_completed, s.job_timeout, s.start_timeout) == (None, None, None)
    assert (s.url, s.concurrency, s.keep_dead) == ("sqlite:///conveyor.db", 10, 30 * 86400.0)
    assert s.with_(keep_dead=None, retries=None).keep_dead is None
    assert s.with_(keep_dead=None, retries=None).retries == 3


def test_start_timeout_takes_seconds_zero_or_none() -> None:
    assert Settings.load(env={}).start_timeout == 60
    assert Settings.load(env={"CONVEYOR_START_TIMEOUT": "0"}).start_timeout == 0
    assert Settings.load(env={"CONVEYOR_START_TIMEOUT": "none"}).start_timeout is None
    assert Settings.load({"start_timeout": 2.5}, env={}).start_timeout == 2.5
