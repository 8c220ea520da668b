"""Rate and concurrency limits, enforced by the engine inside its claim.

A limit is declared in code (`@app.task(rate_limit="10/s", concurrency_limit=2,
limit_key="customer_id")`, `app.limit("media", rate="100/s", concurrency=5)`), and
every worker passes the limits of its queues with each claim. The engine counts,
atomically with the claim itself, the jobs running per scope and the starts in each
scope's sliding window, and leases only jobs that fit; a job held back stays
`queued` and spends no attempt.

Scopes live within one queue: `queue` (every job of the queue), `task:<name>` (a
task in its own queue) and `key:<name>:<value>` (a task per value of its limit key).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from conveyor.errors import ConfigError
from conveyor.job import JobRecord

SCAN = 500  # ready jobs a limited claim looks at: held-back jobs ahead of these block them
HELD_BACK_POLL = 0.05  # seconds a worker waits before claiming again when limits held jobs back

_RATE = re.compile(r"^\s*(\d+)\s*/\s*(\d*\.?\d*)\s*(s|sec|m|min|h|hour|d|day)\s*$")
_UNIT = {
    "s": 1.0,
    "sec": 1.0,
    "m": 60.0,
    "min": 60.0,
    "h": 3600.0,
    "hour": 3600.0,
    "d": 86400.0,
    "day": 86400.0,
}


@dataclass(frozen=True, slots=True)
class Limit:
    """At most `rate` starts per `per` seconds, and at most `concurrency` running."""

    rate: int | None = None
    per: float = 1.0
    concurrency: int | None = None


def parse_rate(text: object, where: str) -> tuple[int, float]:
    """ "10/s", "100/m", "5/h", "1/d", "20/10s" as (count, seconds); ConfigError naming `where`."""
    match = _RATE.match(text) if isinstance(text, str) else None
    if match is None or int(match.group(1)) < 1 or match.group(2) in (".",):
        raise ConfigError(f"{where} must look like '10/s', '100/m', '5/h' or '20/10s', got {text!r}")
    count, scale = int(match.group(1)), float(match.group(2) or 1)
    if scale <= 0:
        raise ConfigError(f"{where}: the period must be > 0, got {text!r}")
    return count, scale * _UNIT[match.group(3)]


def make_limit(rate: object, concurrency: object, where: str) -> Limit | None:
    """A Limit from user input (None when neither is given)."""
    if rate is None and concurrency is None:
        return None
    count, per = parse_rate(rate, f"{where} rate") if rate is not None else (None, 1.0)
    if concurrency is not None and (
        isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1
    ):
        raise ConfigError(f"{where} concurrency must be an integer >= 1, got {concurrency!r}")
    return Limit(count, per, concurrency)


KeyOf = Callable[[Sequence[Any], Mapping[str, Any], Mapping[str, Any]], Any]


def key_function(limit_key: str | KeyOf) -> KeyOf:
    """A function of (args, kwargs, meta) giving the value a per-key limit counts by: a
    name looks in the keyword arguments, then in meta."""
    if callable(limit_key):
        return limit_key
    if not isinstance(limit_key, str) or not limit_key:
        raise ConfigError(f"limit_key must be an argument or meta name, or a function, got {limit_key!r}")

    def by_name(args: Sequence[Any], kwargs: Mapping[str, Any], meta: Mapping[str, Any]) -> Any:
        return kwargs.get(limit_key, meta.get(limit_key))

    return by_name


@dataclass(frozen=True, slots=True)
class TaskLimit:
    limit: Limit
    keyed: bool = False


@dataclass(frozen=True, slots=True)
class QueueLimits:
    """Everything limited in one queue, as a worker hands it to `claim`."""

    queue: Limit | None = None
    tasks: Mapping[str, TaskLimit] = field(default_factory=dict)

    @property
    def longest(self) -> float:
        """The longest rate window in this queue: start logs older than it count for
        no scope, so they may be trimmed (0.0 when no rate is set)."""
        limits = [self.queue, *(t.limit for t in self.tasks.values())]
        return max((lim.per for lim in limits if lim is not None and lim.rate is not None), default=0.0)

    def scopes(self, task: str, key: str | None) -> list[tuple[str, Limit]]:
        """The scopes a job of `task` (with limit key `key`) counts in."""
        out = [("queue", self.queue)] if self.queue is not None else []
        found = self.tasks.get(task)
        if found is not None:
            scope = f"key:{task}:{key or ''}" if found.keyed else f"task:{task}"
            out.append((scope, found.limit))
        return out

    def to_json(self) -> dict[str, Any]:
        """The form the Redis claim script reads."""
        q = self.queue
        return {
            "q": None if q is None else [q.rate or 0, q.per, q.concurrency or 0],
            "t": {
                name: [t.limit.rate or 0, t.limit.per, t.limit.concurrency or 0, t.keyed]
                for name, t in self.tasks.items()
            },
        }


Row = TypeVar("Row")  # an engine's form of a claimed job: a tuple, a list


class Claimed(list[JobRecord]):
    """Claimed jobs; `held_back` is True when a limit kept ready jobs from being leased,
    so the worker polls (HELD_BACK_POLL) instead of waiting for new work. `unreadable`
    holds (job id, lease token, error) for leased rows the engine could not read into a
    record: the worker stores them dead (see `read`)."""

    held_back: bool = False

    def __init__(self, records: Iterable[JobRecord] = ()) -> None:
        super().__init__(records)
        self.unreadable: list[tuple[str, str, str]] = []

    def read(
        self, rows: Iterable[Row], read: Callable[[Row], JobRecord], ident: Callable[[Row], tuple[str, str]]
    ) -> list[JobRecord]:
        """The records of leased `rows`, in order. A row `read` fails on (a field edited
        by hand, a value another version wrote) goes to `unreadable` under `ident(row)`,
        its job id and lease token. Raised, the error would fail every claim that leased
        the row, and hold that claim's other jobs until their lease ran out, once per
        attempt the row has."""
        records: list[JobRecord] = []
        for row in rows:
            try:
                records.append(read(row))
            except Exception as exc:  # whatever the row holds, the claim goes on
                job_id, token = ident(row)
                self.unreadable.append((job_id, token, f"{type(exc).__name__}: {exc}"[:500]))
        return records

    def merge(self, other: list[JobRecord]) -> None:
        """Add another claim's jobs, and what it could not read or held back."""
        self.extend(other)
        if isinstance(other, Claimed):
            self.unreadable += other.unreadable
            self.held_back = self.held_back or other.held_back


Candidate = tuple[str, str, str | None]  # (job id, task, limit key)


@dataclass(slots=True)
class Admission:
    """What a limited claim may lease, and the starts to log for the rate windows."""

    ids: list[str]
    starts: list[str]  # one scope per start to log (scopes with a rate only)
    held_back: bool


def windows(limits: QueueLimits, candidates: Iterable[Candidate]) -> dict[str, float]:
    """The rate-limited scopes these candidates count in, with each one's window."""
    out: dict[str, float] = {}
    for _, task, key in candidates:
        for scope, limit in limits.scopes(task, key):
            if limit.rate is not None:
                out[scope] = limit.per
    return out


def admit(
    limits: QueueLimits,
    candidates: Sequence[Candidate],
    active: Iterable[tuple[str, str | None]],
    recent: Mapping[str, int],
    want: int,
) -> Admission:
    """Pick, in order, the candidates that fit every limit of theirs, given the jobs
    running now (`active`: task, key) and the starts within each window (`recent`)."""
    running: Counter[str] = Counter()
    for task, key in active:
        running.update(scope for scope, _ in limits.scopes(task, key))
    started: Counter[str] = Counter(recent)
    chosen: list[str] = []
    starts: list[str] = []
    held = False
    for job_id, task, key in candidates:
        if len(chosen) >= want:
            break
        scopes = limits.scopes(task, key)
        if any(_full(limit, running[s], started[s]) for s, limit in scopes):
            held = True
            continue
        chosen.append(job_id)
        for scope, limit in scopes:
            running[scope] += 1
            if limit.rate is not None:
                started[scope] += 1
                starts.append(scope)
    return Admission(chosen, starts, held)


def _full(limit: Limit, running: int, started: int) -> bool:
    if limit.concurrency is not None and running >= limit.concurrency:
        return True
    return limit.rate is not None and started >= limit.rate
