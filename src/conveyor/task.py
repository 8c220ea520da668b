"""Tasks: functions registered with an app, and the ways to enqueue them."""

from __future__ import annotations

import asyncio
import inspect
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypeVar

from conveyor.errors import ConfigError
from conveyor.limits import KeyOf, Limit
from conveyor.settings import validate_queue

if TYPE_CHECKING:
    from conveyor.app import Conveyor
    from conveyor.job import Job

P = ParamSpec("P")
R = TypeVar("R")


@dataclass(frozen=True, slots=True)
class JobOptions:
    """Per-enqueue options; None means "use the task's (or the app's) default"."""

    queue: str | None = None
    priority: int | None = None
    delay: float | None = None
    run_at: float | None = None
    unique_key: str | None = None
    retries: int | None = None
    timeout: float | None = None
    meta: Mapping[str, Any] = field(default_factory=dict)
    unique_for: float | None = None  # the key stays taken this long after the job completed
    debounce: float | None = None  # run this long after the last enqueue with the key

    def merged(self, other: JobOptions) -> JobOptions:
        """These options with every option set in `other` taking precedence."""
        if other is EMPTY_OPTIONS:
            return self
        if self is EMPTY_OPTIONS:
            return other
        return JobOptions(
            queue=_pick(other.queue, self.queue),
            priority=_pick(other.priority, self.priority),
            delay=_pick(other.delay, self.delay),
            run_at=_pick(other.run_at, self.run_at),
            unique_key=_pick(other.unique_key, self.unique_key),
            retries=_pick(other.retries, self.retries),
            timeout=_pick(other.timeout, self.timeout),
            meta={**self.meta, **other.meta},
            unique_for=_pick(other.unique_for, self.unique_for),
            debounce=_pick(other.debounce, self.debounce),
        )


T = TypeVar("T")


def _pick(preferred: T | None, fallback: T | None) -> T | None:
    return fallback if preferred is None else preferred


EMPTY_OPTIONS = JobOptions()
EMPTY_MAPPING: Mapping[str, Any] = {}  # shared, never mutated: kwargs are only read
OPTION_NAMES = tuple(f.name for f in fields(JobOptions))


def parse_options(**options: Any) -> JobOptions:
    """Validate enqueue options; unknown names and bad values raise ConfigError naming them."""
    unknown = set(options) - set(OPTION_NAMES)
    if unknown:
        raise ConfigError(f"unknown option {sorted(unknown)[0]!r}; valid options: {', '.join(OPTION_NAMES)}")
    parsed: dict[str, Any] = {}
    for name, value in options.items():
        if value is not None:
            parsed[name] = _VALIDATORS[name](value)
    if "delay" in parsed and "run_at" in parsed:
        raise ConfigError("give either delay or run_at, not both")
    if "debounce" in parsed and ("delay" in parsed or "run_at" in parsed):
        raise ConfigError("debounce sets when the job runs: give it without delay or run_at")
    return JobOptions(**parsed)


def _priority(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"option 'priority' must be an integer, got {value!r}")
    return value


def _seconds(name: str, *, allow_zero: bool, allow_inf: bool = False) -> Callable[[Any], float]:
    def check(value: Any) -> float:
        if isinstance(value, timedelta):
            value = value.total_seconds()
        number = isinstance(value, int | float) and not isinstance(value, bool) and not math.isnan(value)
        ok = number and (allow_inf or not math.isinf(value))
        if not ok or value < 0 or (value == 0 and not allow_zero):
            bound = (">= 0" if allow_zero else "> 0") + (" (math.inf: no limit)" if allow_inf else "")
            raise ConfigError(f"option {name!r} must be a number of seconds {bound}, got {value!r}")
        return float(value)

    return check


def _run_at(value: Any) -> float:
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ConfigError("option 'run_at' needs a timezone-aware datetime (e.g. tz=UTC)")
        return value.timestamp()
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    raise ConfigError(f"option 'run_at' must be an aware datetime or epoch seconds, got {value!r}")


def _unique_key(value: Any) -> str:
    # No NUL: PostgreSQL's text cannot hold one, and a key changed to fit could match another.
    if not isinstance(value, str) or not value or len(value) > 512 or "\x00" in value:
        raise ConfigError(
            f"option 'unique_key' must be a non-empty string (<= 512 chars, no NUL), got {value!r}"
        )
    return value


def _retries(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"option 'retries' must be an integer >= 0, got {value!r}")
    return value


def _meta(value: Any) -> Mapping[str, Any]:
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        raise ConfigError(f"option 'meta' must be a dict with string keys, got {value!r}")
    return dict(value)


def _queue(value: Any) -> str:
    try:
        return validate_queue(value)
    except ConfigError as exc:
        raise ConfigError(f"option 'queue': {exc}") from None


_VALIDATORS: dict[str, Callable[[Any], Any]] = {
    "queue": _queue,
    "priority": _priority,
    "delay": _seconds("delay", allow_zero=True),
    "run_at": _run_at,
    "unique_key": _unique_key,
    "retries": _retries,
    "timeout": _seconds("timeout", allow_zero=False, allow_inf=True),  # inf: none (None inherits)
    "meta": _meta,
    "unique_for": _seconds("unique_for", allow_zero=False),
    "debounce": _seconds("debounce", allow_zero=False),
}


@dataclass(frozen=True, slots=True)
class Signature:
    """A task call frozen for later: `task.s(1, 2)`; the building block of flows."""

    task: str
    args: Sequence[Any] = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    options: JobOptions = EMPTY_OPTIONS
    app: Conveyor | None = field(default=None, compare=False, repr=False)  # for flows' enqueue()


class Task(Generic[P, R]):
    """A function registered with an app; call it directly or enqueue it."""

    def __init__(
        self,
        app: Conveyor,
        name: str,
        fn: Callable[P, Any] | None,
        defaults: JobOptions,
    ) -> None:
        self.app = app
        self.name = name
        self.fn = fn
        self.defaults = defaults
        self.is_async = fn is not None and inspect.iscoroutinefunction(fn)
        self.signature = inspect.signature(fn) if fn is not None else None
        self._positional = _positional_range(self.signature)
        self.limit: Limit | None = None  # rate / concurrency limit, set by app.task
        self.key_of: KeyOf | None = None  # the per-key limit's key, from (args, kwargs, meta)

    def check_arguments(self, args: Sequence[Any], kwargs: Mapping[str, Any]) -> None:
        """TypeError if the arguments do not fit the function (checked before it runs)."""
        low, high = self._positional
        if not kwargs and low <= len(args) <= high:
            return  # the common case, ~20x cheaper than Signature.bind
        if self.signature is not None:
            self.signature.bind(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<Task {self.name} queue={self.queue}>"

    @property
    def queue(self) -> str:
        return self.defaults.queue or "default"

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> Any:
        """Run the function here and now, as a plain call."""
        if self.fn is None:
            raise TypeError(f"task {self.name!r} has no code in this process; enqueue it instead")
        return self.fn(*args, **kwargs)

    def options(self, **options: Any) -> BoundTask[P, R]:
        """This task with enqueue options set: queue, priority, delay, run_at,
        unique_key, retries, timeout, meta, unique_for, debounce."""
        return BoundTask(self, parse_options(**options))

    def enqueue(self, *args: P.args, **kwargs: P.kwargs) -> Job[R]:
        """Store one job for a worker to run; returns its handle."""
        return self.app.submit([Signature(self.name, args, kwargs)], self.defaults)[0]

    async def aenqueue(self, *args: P.args, **kwargs: P.kwargs) -> Job[R]:
        """`enqueue` for async code: awaited on the running loop where the engine has an
        async driver (PostgreSQL, Redis), else made in a thread; never blocks the loop."""
        return (await self.app.asubmit([Signature(self.name, args, kwargs)], self.defaults))[0]

    def enqueue_many(self, calls: Iterable[Any]) -> list[Job[R]]:
        """Enqueue many calls in one round trip: each item is an args tuple, a kwargs
        dict, or a signature of this task."""
        return self.app.submit_many(self.name, self.defaults, EMPTY_OPTIONS, calls)

    async def aenqueue_many(self, calls: Iterable[Any]) -> list[Job[R]]:
        """`enqueue_many` for async code, in a thread: encoding and storing 1,000 jobs
        takes about 10 ms, too long to hold the loop, and one hop serves the batch."""
        items = list(calls)  # a generator is read here, not in the thread
        return await asyncio.to_thread(self.enqueue_many, items)

    def s(self, *args: Any, **kwargs: Any) -> Signature:
        """A signature of this call, for flows and bulk enqueue."""
        return Signature(self.name, args, kwargs, app=self.app)


def _positional_range(signature: inspect.Signature | None) -> tuple[int, float]:
    """(fewest, most) positional arguments the function takes when given no keywords;
    (1, 0) (never matches) when keywords could be required."""
    if signature is None:
        return (1, 0)
    low, high = 0, 0.0
    for p in signature.parameters.values():
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
            high += 1
            low += p.default is p.empty
        elif p.kind is p.VAR_POSITIONAL:
            high = float("inf")
        elif p.kind is p.KEYWORD_ONLY and p.default is p.empty:
            return (1, 0)
    return (low, high)


class BoundTask(Generic[P, R]):
    """A task with options applied, from `task.options(...)`."""

    def __init__(self, task: Task[P, R], options: JobOptions) -> None:
        self.task = task
        self.opts = options

    def options(self, **options: Any) -> BoundTask[P, R]:
        return BoundTask(self.task, self.opts.merged(parse_options(**options)))

    def enqueue(self, *args: P.args, **kwargs: P.kwargs) -> Job[R]:
        sig = Signature(self.task.name, args, kwargs, self.opts)
        return self.task.app.submit([sig], self.task.defaults)[0]

    async def aenqueue(self, *args: P.args, **kwargs: P.kwargs) -> Job[R]:
        sig = Signature(self.task.name, args, kwargs, self.opts)
        return (await self.task.app.asubmit([sig], self.task.defaults))[0]

    def enqueue_many(self, calls: Iterable[Any]) -> list[Job[R]]:
        return self.task.app.submit_many(self.task.name, self.task.defaults, self.opts, calls)

    async def aenqueue_many(self, calls: Iterable[Any]) -> list[Job[R]]:
        items = list(calls)
        return await asyncio.to_thread(self.enqueue_many, items)

    def s(self, *args: Any, **kwargs: Any) -> Signature:
        return Signature(self.task.name, args, kwargs, self.opts, self.task.app)
