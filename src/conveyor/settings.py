"""Every setting in one frozen dataclass: keyword argument, CLI flag or CONVEYOR_* variable."""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

from conveyor.errors import ConfigError

DEFAULT_URL = "sqlite:///conveyor.db"
_QUEUE_NAME = re.compile(r"^[A-Za-z0-9_.:\-]{1,100}$")
_PREFIX = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,40}$")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
LOOPS = ("auto", "asyncio", "uvloop")


@dataclass(frozen=True, slots=True)
class Settings:
    """Resolved configuration; build it with `Settings.load(...)`."""

    url: str = DEFAULT_URL
    prefix: str = "conveyor"
    concurrency: int = 10
    queues: tuple[str, ...] = ("default",)
    processes: int = 1
    # arq's default; a job that runs longer than this is failed (and retried if it may).
    job_timeout: float | None = 300.0
    retries: int = 3
    # Base of the exponential backoff: attempt n waits about base * 2**(n-1) seconds.
    retry_backoff: float = 2.0
    retry_backoff_max: float = 3600.0
    lease_timeout: float = 30.0
    heartbeat_interval: float | None = None
    shutdown_grace: float = 30.0
    # A starting worker whose engine is unreachable (a container that starts before its
    # Redis or PostgreSQL does) retries this long before it exits; None waits for ever.
    start_timeout: float | None = 60.0
    max_payload_bytes: int = 1_048_576
    log_level: str = "INFO"
    # Finished jobs are pruned after this many seconds (None keeps them): completed and
    # cancelled after 7 days, dead after 30, so failures stay around to be looked at.
    keep_completed: float | None = 7 * 86400.0
    keep_dead: float | None = 30 * 86400.0
    # And at most this many per queue (None: no count limit), the newest kept.
    keep_completed_count: int | None = None
    keep_dead_count: int | None = None
    # Whether workers run the periodic scheduler (when the app has schedules): one
    # deployment can run only cron, another only processing.
    scheduler: bool = True
    processors: bool = True  # False: claim nothing (a cron-only or maintenance-only deployment)
    events: bool = True  # publish job events (app.events(), live dashboards); False saves a write per batch
    # The worker's event loop: uvloop's where installed ("auto"), else asyncio's.
    loop: str = "auto"

    @property
    def heartbeat_every(self) -> float:
        """Seconds between lease renewals: a third of the lease unless set."""
        return self.heartbeat_interval or self.lease_timeout / 3

    @classmethod
    def load(
        cls, overrides: Mapping[str, Any] | None = None, env: Mapping[str, str] | None = None
    ) -> Settings:
        """Defaults, then CONVEYOR_* variables, then `overrides`; all validated. An
        override of None sets a setting that may be None (no timeout, keep for ever) and
        leaves any other at its default, as `url=None` does."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for f in fields(cls):
            name = f"CONVEYOR_{f.name.upper()}"
            if name in env and env[name] != "":
                values[f.name] = _parse(f.name, env[name], source=name)
        for key, value in (overrides or {}).items():
            if key not in _PARSERS:
                known = ", ".join(sorted(_PARSERS))
                raise ConfigError(f"unknown setting {key!r}; known settings: {known}")
            if value is not None or key in _NULLABLE:
                values[key] = _parse(key, value, source=key)
        return cls(**values)

    def with_(self, **changes: Any) -> Settings:
        """A copy with `changes` applied and validated."""
        parsed = {k: _parse(k, v, source=k) for k, v in changes.items() if v is not None or k in _NULLABLE}
        return replace(self, **parsed)


def validate_queue(name: object) -> str:
    """A queue name: 1-100 of letters, digits, `_ . : -`."""
    if not isinstance(name, str) or not _QUEUE_NAME.match(name):
        raise ConfigError(f"invalid queue name {name!r}: use 1-100 letters, digits, '_', '.', ':' or '-'")
    return name


def _parse(name: str, value: Any, *, source: str) -> Any:
    try:
        return _PARSERS[name](value)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    except (TypeError, ValueError):
        raise ConfigError(f"{source}: invalid value {value!r}") from None


def _positive_int(value: Any) -> int:
    number = int(value)
    if number < 1 or isinstance(value, bool):
        raise ConfigError(f"must be a positive integer, got {value!r}")
    return number


def _non_negative_int(value: Any) -> int:
    number = int(value)
    if number < 0 or isinstance(value, bool):
        raise ConfigError(f"must be an integer >= 0, got {value!r}")
    return number


def _positive_float(value: Any) -> float:
    number = float(value)
    if not number > 0:
        raise ConfigError(f"must be a number > 0, got {value!r}")
    return number


def _optional_seconds(value: Any) -> float | None:
    if value is None or value in ("", "none", "None", 0, "0"):
        return None
    return _positive_float(value)


def _wait_seconds(value: Any) -> float | None:
    """Seconds >= 0, where 0 means not at all and `none` for ever."""
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "none")):
        return None
    number = float(value)
    if not number >= 0 or isinstance(value, bool):
        raise ConfigError(f"must be a number >= 0 or none, got {value!r}")
    return number


def _queues(value: Any) -> tuple[str, ...]:
    items = value.split(",") if isinstance(value, str) else list(value)
    names = tuple(validate_queue(str(q).strip()) for q in items if str(q).strip())
    if not names:
        raise ConfigError("needs at least one queue name")
    return names


def _prefix(value: Any) -> str:
    if not isinstance(value, str) or not _PREFIX.match(value):
        raise ConfigError(
            f"invalid prefix {value!r}: start with a letter or '_', then up to 40 letters, digits or '_'"
        )
    return value


def _url(value: Any) -> str:
    if not isinstance(value, str) or "://" not in value:
        raise ConfigError(f"invalid URL {value!r}: expected e.g. sqlite:///conveyor.db")
    return value


def _log_level(value: Any) -> str:
    level = str(value).upper()
    if level not in LOG_LEVELS:
        raise ConfigError(f"must be one of {', '.join(LOG_LEVELS)}, got {value!r}")
    return level


def _loop(value: Any) -> str:
    choice = str(value).strip().lower()
    if choice not in LOOPS:
        raise ConfigError(f"must be one of {', '.join(LOOPS)}, got {value!r}")
    return choice


def _optional_count(value: Any) -> int | None:
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "none")):
        return None
    return _non_negative_int(value)


def _bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"must be true or false, got {value!r}")


_PARSERS: dict[str, Callable[[Any], Any]] = {
    "url": _url,
    "prefix": _prefix,
    "concurrency": _positive_int,
    "queues": _queues,
    "processes": _positive_int,
    "job_timeout": _optional_seconds,
    "retries": _non_negative_int,
    "retry_backoff": _positive_float,
    "retry_backoff_max": _positive_float,
    "lease_timeout": _positive_float,
    "heartbeat_interval": _optional_seconds,
    "shutdown_grace": _positive_float,
    "start_timeout": _wait_seconds,
    "max_payload_bytes": _positive_int,
    "log_level": _log_level,
    "scheduler": _bool,
    "processors": _bool,
    "events": _bool,
    "loop": _loop,
    "keep_completed": _optional_seconds,
    "keep_dead": _optional_seconds,
    "keep_completed_count": _optional_count,
    "keep_dead_count": _optional_count,
}
# Settings whose value may be None; an override of None sets them. Until 2026-12-07 it
# was skipped like any None, so Conveyor(keep_completed=None), meant to keep finished
# jobs, pruned them after the default 7 days, and job_timeout=None left 300 s.
_NULLABLE = frozenset(f.name for f in fields(Settings) if "None" in str(f.type))
