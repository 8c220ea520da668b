"""Redis engine: every state change is one Lua script on one queue's keys.

A queue's keys share the hash tag `{queue}` (see scripts/_lib.lua for the layout),
so every script touches one Cluster slot. Job ids are `<queue>:<seq>`: the id
names the queue, so any operation on an id finds its keys without a lookup. `seq`
comes from one counter per prefix, so ids order jobs across queues.

Each queue is atomic on its own. A batch that spans queues is one MULTI/EXEC on a
single server, and one script per queue on Cluster (atomic per queue only).
Time comes from the client's clock (`Backend.clock`), as on every engine: keep
worker and producer clocks in sync (NTP) to well within the lease timeout.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import (
    NoPermissionError,
    NoScriptError,
    OutOfMemoryError,
    RedisClusterException,
    RedisError,
    ResponseError,
)
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.sentinel import MasterNotFoundError

from conveyor.backends.base import (
    LEASE_EXPIRED,
    WORKER_SEEN_SECONDS,
    Backend,
    Enqueued,
    Fence,
    JobQuery,
    NewJob,
    Outcome,
    OutcomeKind,
    Renewal,
    Resumption,
    WorkerInfo,
    flow_links,
    purgeable,
    read_stored,
    translate_errors,
)
from conveyor.backends.redis.anyloop import AnyLoopLane
from conveyor.backends.redis.connect import connect, parse_redis_url
from conveyor.backends.redis.lane import Lane
from conveyor.backends.redis.prelude import db_suffix
from conveyor.backends.redis.prelude import load as load_script
from conveyor.backends.redis.waker import Waker
from conveyor.clock import SYSTEM_CLOCK, Clock
from conveyor.errors import BackendUnavailable, ConfigError
from conveyor.events import KEEP, Entry, JobEvent, decode, encode
from conveyor.job import STATE_OF, TERMINAL_STATES, AttemptRecord, JobRecord, JobState, LogEntry
from conveyor.limits import SCAN, Claimed, QueueLimits

_SCRIPTS = ("enqueue", "enqueue_one", "enqueue_many", "enqueue_tick", "claim", "extend", "finish", "recover",
            "cancel", "retry", "purge", "delete", "forget", "watch", "resume", "claim_limited")  # fmt: skip
_HOT_SCRIPTS = ("claim", "finish", "extend")  # a worker's every-batch calls (see warm_up)
_BATCH = 1_000  # jobs per recover/purge script call: each call blocks Redis for ~1 ms
_CALLS_AT_ONCE = 500  # script calls written in one go (recovery's sweep over many queues)
_MAX_PRIORITY = 2**53  # scores are doubles: larger priorities would lose their order
_WAIT_SLICE = 1.0  # longest block on a pub/sub wake-up before looking again
_MIN_VERSION = (6, 2)
_EMPTY_META = "{}"

log = logging.getLogger("conveyor.redis")


def _explained(exc: Exception) -> str:
    """The driver's words, and for a full server or a narrow ACL user what to do about
    it: the bare message ("command not allowed when used memory > 'maxmemory'. script:
    <sha>, on @user_script:81") reads like a bug in a script."""
    if isinstance(exc, OutOfMemoryError):
        return (
            "out of memory: the server is at its maxmemory and refuses writes until memory "
            "is freed (raise maxmemory, or delete finished jobs with `conveyor purge`); "
            f"it said: {exc}"
        )
    if isinstance(exc, MasterNotFoundError):
        if any(word in str(exc) for word in ("Authentication", "NOAUTH", "WRONGPASS", "invalid password")):
            return (
                "the Sentinels ask for a password: add ?sentinel_password=... to the URL (the "
                f"URL's own password is the data nodes'); it said: {exc}"
            )
        return f"no Sentinel named the primary: check the URL's /service and the Sentinels; it said: {exc}"
    if isinstance(exc, NoPermissionError):
        return (
            "the ACL user lacks a permission: every key and channel Conveyor uses starts with "
            "its prefix and ':', so allow `~<prefix>:* &<prefix>:*` (`~conveyor:* &conveyor:*` "
            f"by default) with `+@all -@dangerous`; it said: {exc}"
        )
    return str(exc)


# redis-py's errors: RedisClusterException is not a RedisError, and until 2026-12-07 a
# Cluster none of whose nodes answered (down, or a TLS handshake refused) raised it raw.
ERRORS = (RedisError, RedisClusterException)
_guarded = translate_errors(ERRORS, lambda backend: f"Redis {backend.safe_url}", _explained)


def _num(value: float | int | None) -> str:
    return "" if value is None else repr(value)


def split_id(job_id: str) -> tuple[str, str] | None:
    """(queue, seq) from a job id `<queue>:<seq>`; None if it is not one of ours."""
    queue, sep, seq = job_id.rpartition(":")
    if not sep or not queue or not seq.isdigit():
        return None
    return queue, seq


class RedisBackend(Backend):
    """Jobs in Redis (one server, Sentinel or Cluster), shared by any number of machines."""

    # A claim of 100 in two parts: one part's reply is parsed, and its jobs start, while
    # Redis runs the other. No-op drain, c=100, alternating: +12-17% (figures at
    # worker._SPLIT_FROM). SQLite lost 9% so (its claims share one write lock), and
    # PostgreSQL's async claims did not gain.
    claim_lanes = 2
    reclaims_lost_claims = True  # by the lease token each claim sends (see _reclaim)

    def __init__(self, url: str, prefix: str = "conveyor", clock: Clock = SYSTEM_CLOCK):
        from conveyor.backends import redact_url

        self.url, self.prefix, self.clock = url, prefix, clock
        self.safe_url = redact_url(url)
        self.target = parse_redis_url(url)
        self._cluster = self.target.kind == "cluster"
        try:
            # Any: redis-py's stubs type replies as bytes | str though decode_responses is set.
            self._r: Any = connect(self.target)
        except ERRORS as exc:
            raise BackendUnavailable(f"Redis {self.safe_url}: {exc}") from exc
        db = 0 if self._cluster else int(self._r.connection_pool.connection_kwargs.get("db") or 0)
        self._channel_end = db_suffix(db)  # pub/sub spans databases (see DB in _lib.lua)
        self._s: dict[str, Any] = {name: self._r.register_script(load_script(name, db)) for name in _SCRIPTS}
        self._lane = Lane(self._r) if not self._cluster and Lane.serves(self._r) else None  # the hot path
        # Producers' aenqueue, on any loop; not on Cluster (routed by slot) nor over TLS.
        served = self._lane is not None and AnyLoopLane.serves(self._r)
        self._anyloop = AnyLoopLane(self._r) if served else None
        self._seq_key = f"{prefix}:seq"
        self._queues_key = f"{prefix}:queues"
        self._workers_key = f"{prefix}:workers"
        self._events_key = f"{prefix}:events"  # a stream, capped near events.KEEP entries
        self._known: set[str] = set()  # queues this process has listed (Cluster only: see _register)
        # Per worker: (token, queue) of claims whose reply never came (see _reclaim).
        self._unanswered: dict[str, list[tuple[str, str]]] = {}
        self._unanswered_lock = threading.Lock()
        self._waker = Waker(self._r, self.target.timeout)

    def _script(self, name: str, keys: list[str], args: list[Any], again: list[Any] | None = None) -> Any:
        """Run a script; `again`: its arguments for a resend after a dropped connection."""
        if self._lane is None:
            return self._s[name](keys, args)
        return self._lane.run(self._s[name], keys, args, again)

    def _script_each(self, name: str, calls: list[tuple[list[str], list[Any]]]) -> list[Any]:
        """A script that is safe to run twice, once per (keys, args): written at once on
        one server (see Lane.run_each), one call each on Cluster, where keys of different
        queues live on different nodes."""
        if self._lane is None:
            return [self._script(name, keys, args) for keys, args in calls]
        replies: list[Any] = []
        for start in range(0, len(calls), _CALLS_AT_ONCE):
            replies.extend(self._lane.run_each(self._s[name], calls[start : start + _CALLS_AT_ONCE]))
        return replies

    # -- keys --------------------------------------------------------------
    def _base(self, queue: str) -> str:
        return f"{self.prefix}:{{{queue}}}"

    def _channel(self, queue: str, name: str) -> str:
        """The pub/sub channel `name` ("wake", "done") of `queue` on this database."""
        return f"{self._base(queue)}:{name}{self._channel_end}"

    def _read_many(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        """Read-only commands in one round trip, their replies in order (see Lane.read_many)."""
        if self._lane is not None:
            return self._lane.read_many(commands)
        pipe = self._r.pipeline(transaction=False)  # Cluster: redis-py sends each to its node
        for command in commands:
            pipe.execute_command(*command)
        return list(pipe.execute())

    def _keys(self, queue: str) -> list[str]:
        """KEYS for a script that may take sequence numbers or keep the list of queues
        itself (single server; see register in _lib.lua)."""
        return [self._base(queue)] if self._cluster else [self._base(queue), self._seq_key, self._queues_key]

    def _first_seq(self, count: int) -> int:
        """0 (the script takes seqs itself) on one server; on Cluster the counter is in
        another slot, so take `count` seqs before the script."""
        return self._take_seqs(count) if self._cluster else 0

    def _take_seqs(self, count: int) -> int:
        """The first of `count` new seqs. Through the lane where there is one, so a batch
        across queues waits out a restart as its MULTI/EXEC does (a resend after a lost
        reply takes new seqs, leaving a gap, which is harmless)."""
        if self._lane is not None:
            return int(self._lane.command("INCRBY", self._seq_key, count)) - count + 1
        return int(self._r.incrby(self._seq_key, count)) - count + 1

    def _register(self, queues: Iterable[str]) -> None:
        """On Cluster, list queue names (for counts, listing and recovery) before jobs land
        in them, once per process: the scripts cannot reach the list there. On one server
        each script that stores jobs lists its queue itself (see register in _lib.lua)."""
        if not self._cluster:
            return
        new = set(queues) - self._known
        if new:
            self._r.sadd(self._queues_key, *new)
            self._known |= new

    def _queues(self) -> list[str]:
        names = sorted(self._r.smembers(self._queues_key))
        self._known.update(names)
        return names

    # -- producing ---------------------------------------------------------
    @_guarded
    def enqueue(self, jobs: Sequence[NewJob]) -> list[Enqueued]:
        if len(jobs) == 1 and _plain(jobs[0]):
            return [self._enqueue_one(jobs[0])]
        groups: dict[str, list[int]] = {}
        for index, job in enumerate(jobs):
            if abs(job.priority) > _MAX_PRIORITY:
                raise ConfigError(f"priority {job.priority} is out of range on Redis (at most ±2**53)")
            groups.setdefault(job.queue, []).append(index)
        self._register(groups)
        now = _num(self.clock.now())
        flows = any(job.parent is not None for job in jobs)
        # Seqs follow the batch's order across queues: several queues take them up front,
        # and so does a flow, whose jobs store each other's ids.
        first = self._first_seq(len(jobs)) if len(groups) == 1 and not flows else self._take_seqs(len(jobs))
        special = flows or any(job.unique_for is not None or job.debounce or job.limit_key for job in jobs)
        links = _extras(jobs, first, flows) if special else [""] * len(jobs)
        calls = []
        for queue, indexes in groups.items():
            args: list[str | int] = [queue, now, first]
            for i in indexes:
                args.append(i)
                args.extend(self._job_args(jobs[i], now))
                args.append(links[i])
            calls.append((queue, args))
        replies = self._run_atomic("enqueue", calls)
        out: list[Enqueued] = [Enqueued("", False)] * len(jobs)
        for (queue, _), reply in zip(calls, replies, strict=True):
            for i, (seq, created) in zip(groups[queue], reply, strict=True):
                out[i] = Enqueued(f"{queue}:{seq}", bool(created))
        return out

    def _enqueue_one(self, job: NewJob) -> Enqueued:
        """A single plain job (see _plain) through enqueue_one.lua: a quarter less server
        time than the batch script (see its header)."""
        args = self._one_args(job)
        seq = self._script("enqueue_one", self._keys(job.queue), args, _resent(args, 0))
        return Enqueued(f"{job.queue}:{seq}", True)

    def _one_args(self, job: NewJob) -> list[Any]:
        self._register([job.queue])
        now = _num(self.clock.now())
        meta = json.dumps(job.meta, separators=(",", ":")) if job.meta else _EMPTY_META
        run_at = now if job.run_at is None else repr(job.run_at)
        return [self._first_seq(1), now, job.task, job.payload, str(job.priority), str(job.max_attempts),
                str(job.retries), _num(job.timeout), run_at, meta, job.queue]  # fmt: skip

    @_guarded
    async def aenqueue(self, jobs: Sequence[NewJob]) -> list[Enqueued]:
        """A single plain job awaited on the running loop (see anyloop.py); anything else,
        or every connection lent, in a thread."""
        lane = self._anyloop
        link = lane.borrow() if lane is not None and len(jobs) == 1 and _plain(jobs[0]) else None
        if lane is None or link is None:
            return await super().aenqueue(jobs)
        job, clean = jobs[0], False
        try:
            args = self._one_args(job)
            seq = await lane.run(link, self._s["enqueue_one"], self._keys(job.queue), args, _resent(args, 0))
            clean = True
        finally:
            lane.give_back(link, clean=clean)
        return [Enqueued(f"{job.queue}:{seq}", True)]

    def _job_args(self, job: NewJob, now: str) -> tuple[str, ...]:
        return (
            job.task,
            job.payload,
            str(job.priority),
            str(job.max_attempts),
            str(job.retries),
            _num(job.timeout),
            now if job.run_at is None else repr(job.run_at),
            job.unique_key or "",
            json.dumps(job.meta, separators=(",", ":")) if job.meta else _EMPTY_META,
        )

    def _run_atomic(self, script: str, calls: list[tuple[str, list[str | int]]]) -> list[Any]:
        """One script call per queue; several queues in one MULTI/EXEC on a single server."""
        if len(calls) == 1 or self._cluster:
            return [self._script(script, self._keys(queue), args, _resent(args, 2)) for queue, args in calls]
        if self._lane is not None:  # resent until the timeout, as every lane call
            return self._lane.atomic(self._s[script], [(self._keys(queue), args) for queue, args in calls])
        try:
            return self._transaction(script, calls)
        except NoScriptError:
            # Flushed (a restart, SCRIPT FLUSH) after the pipeline loaded it: every call
            # failed, as all run the one script, so run them again. CI saw it once, in a
            # resend after a lost reply, while another test flushed the server's scripts.
            return self._transaction(script, calls)

    def _transaction(self, script: str, calls: list[tuple[str, list[str | int]]]) -> list[Any]:
        """The calls in one MULTI/EXEC; redis-py loads the script first if the server lacks it."""
        pipe = self._r.pipeline(transaction=True)
        for queue, args in calls:
            self._s[script](self._keys(queue), args, client=pipe)
        return list(pipe.execute())

    @_guarded
    def enqueue_payloads(self, template: NewJob, payloads: Sequence[str]) -> list[str]:
        if not payloads:
            return []
        queue = template.queue
        self._register([queue])
        now = _num(self.clock.now())
        meta = json.dumps(template.meta, separators=(",", ":")) if template.meta else _EMPTY_META
        run_at = now if template.run_at is None else repr(template.run_at)
        shared = [str(template.priority), str(template.max_attempts), str(template.retries)]
        args = [queue, now, self._first_seq(len(payloads)), template.task, *shared,
                _num(template.timeout), run_at, meta, *payloads]  # fmt: skip
        first = int(self._script("enqueue_many", self._keys(queue), args, _resent(args, 2)))
        return [f"{queue}:{first + i}" for i in range(len(payloads))]

    @_guarded
    def enqueue_tick(self, schedule: str, tick: float, job: NewJob) -> str | None:
        self._register([job.queue])
        now = _num(self.clock.now())
        head = [job.queue, now, self._first_seq(1), schedule, repr(tick)]
        args = [*head, *self._job_args(job, now), _call_id()]
        seq = self._script("enqueue_tick", self._keys(job.queue), args)
        return None if seq is None else f"{job.queue}:{seq}"

    # -- working -----------------------------------------------------------
    @_guarded
    def claim(
        self,
        worker_id: str,
        queues: Sequence[str],
        limit: int,
        lease_seconds: float,
        limits: Mapping[str, QueueLimits] | None = None,
    ) -> list[JobRecord]:
        claimed = self._reclaim(worker_id, limit)
        now = self.clock.now()
        token = secrets.token_hex(8)
        # The last argument: "1" on a resend, which first takes what this token holds; on
        # Cluster "2", so the client's own resend finds it was one (see resent in _lib.lua).
        first_call = "2" if self._cluster else "0"
        args: list[str | int] = [repr(now), 0, worker_id, token, repr(now + lease_seconds), first_call]
        for queue in queues:
            if len(claimed) >= limit:
                break
            args[1] = limit - len(claimed)
            limited = limits.get(queue) if limits else None
            extra = [] if limited is None else [SCAN, json.dumps(limited.to_json(), separators=(",", ":"))]
            first, again = [*args, *extra], [*args[:5], "1", *extra]
            try:
                if limited is None:
                    rows = self._script("claim", [self._base(queue)], first, again)
                else:
                    held, *rows = self._script("claim_limited", [self._base(queue)], first, again)
                    claimed.held_back = claimed.held_back or bool(held)
            except (RedisConnectionError, RedisTimeoutError):
                # Redis may have run this queue's claim and lost the reply (the queues after
                # it were not asked): this worker's next claim asks for what the token
                # holds. What is claimed so far goes now.
                with self._unanswered_lock:
                    self._unanswered.setdefault(worker_id, []).append((token, queue))
                if not claimed:
                    raise
                return claimed
            claimed.extend(claimed.read(rows, functools.partial(_record, queue), _ident(queue)))
        return claimed

    def _reclaim(self, worker_id: str, limit: int) -> Claimed:
        """Jobs of `worker_id`'s claims whose reply never came, asked for again by token
        (see reclaimed in _lib.lua); beyond `limit` they are handed back unspent."""
        with self._unanswered_lock:
            pending = self._unanswered.pop(worker_id, [])
        found = Claimed()
        for index, (token, queue) in enumerate(pending):
            try:
                rows = self._script("claim", [self._base(queue)], ["0", 0, worker_id, token, "0", "1"])
            except ERRORS:
                with self._unanswered_lock:
                    self._unanswered.setdefault(worker_id, []).extend(pending[index:])
                raise
            found.extend(found.read(rows, functools.partial(_record, queue), _ident(queue)))
        if found:
            log.warning("claimed again %d job(s) whose claim's reply was lost", len(found))
        if len(found) > limit:
            extra = found[limit:]
            back = [Outcome(r.id, r.lease_token or "", OutcomeKind.RELEASED, worker=worker_id) for r in extra]
            self.finish(back)
            del found[limit:]
        return found

    @_guarded
    def extend_leases(self, renewals: Sequence[Renewal], lease_seconds: float) -> list[Fence]:
        expires = repr(self.clock.now() + lease_seconds)

        def pack(renewal: Renewal, seq: str) -> list[str]:
            return [seq, renewal.token, _num(renewal.progress), str(len(renewal.logs)), *_logs(renewal.logs)]

        return self._fenced("extend", renewals, [expires], pack)

    @_guarded
    def finish(self, outcomes: Sequence[Outcome]) -> list[Fence]:
        now = repr(self.clock.now())

        def pack(o: Outcome, seq: str) -> list[str]:
            head = [seq, o.token, o.kind.value, o.result or "", o.error or "", o.traceback or ""]
            return [
                *head,
                _num(o.retry_at),
                o.worker or "",
                _num(o.progress),
                str(len(o.logs)),
                *_logs(o.logs),
            ]

        return self._fenced("finish", outcomes, [now], pack, called=_batch_id)

    def _fenced(
        self,
        script: str,
        items: Sequence[Any],
        head: list[str],
        pack: Callable[[Any, str], list[str]],
        called: Callable[[list[Any]], str] | None = None,
    ) -> list[Fence]:
        """Run a fenced script once per queue; one Fence per item, in the caller's order.
        `called`: the id of a queue's items, passed after `head` (see finish.lua)."""
        fences = [Fence.LEASE_LOST] * len(items)
        groups: dict[str, list[tuple[int, str]]] = {}  # queue -> (index, seq) of its items
        for index, item in enumerate(items):
            where = split_id(item.job_id)
            if where is not None:
                groups.setdefault(where[0], []).append((index, where[1]))
        for queue, places in groups.items():
            args = [*head, called([items[i] for i, _ in places])] if called else list(head)
            for index, seq in places:
                args.extend(pack(items[index], seq))
            for (index, _), ok in zip(places, self._script(script, [self._base(queue)], args), strict=True):
                fences[index] = Fence.OK if ok else Fence.LEASE_LOST
        return fences

    def server_cpu(self) -> float | None:
        """The server's (on Cluster, every node's) user and system CPU seconds; None where
        INFO is refused (some managed services rename or disable it)."""
        try:
            info = self._r.info("cpu")
        except ERRORS:
            return None
        nodes = [info] if "used_cpu_sys" in info else list(info.values())
        return sum(float(node["used_cpu_sys"]) + float(node["used_cpu_user"]) for node in nodes)

    @_guarded
    def recover_expired(self) -> list[str]:
        """The recover script of every queue holding an expired lease (see _expired_in),
        written at once per _CALLS_AT_ONCE queues; queues that filled a batch go round
        again. With a round trip per queue, 1,000 queues took 102-108 ms a sweep."""
        now = repr(self.clock.now())
        recovered: list[str] = []
        queues = self._expired_in(self._queues(), now)
        while queues:
            calls = [([self._base(queue)], [now, LEASE_EXPIRED, _BATCH]) for queue in queues]
            replies = self._script_each("recover", calls)
            for queue, seqs in zip(queues, replies, strict=True):
                recovered.extend(f"{queue}:{seq}" for seq in seqs)
            queues = [queue for queue, seqs in zip(queues, replies, strict=True) if len(seqs) == _BATCH]
        return recovered

    def _expired_in(self, queues: list[str], now: str) -> list[str]:
        """The queues whose earliest lease ended before `now` (the script checks again).
        A plain ZRANGEBYSCORE costs Redis a fraction of a script call: a sweep of 2,000
        queues, half of them with a live lease, took 3.5-3.8 ms of Redis CPU (6.7-7.8 ms
        wall) against 14.4-19.5 (22-28 ms) with the script for each queue, and every
        worker sweeps every few seconds."""

        def probe(queue: str) -> list[tuple[Any, ...]]:
            return [("ZRANGEBYSCORE", f"{self._base(queue)}:active", "-inf", f"({now}", "LIMIT", 0, 1)]

        return [queue for queue, (first,) in self._probed(queues, probe) if first]

    def _probed(
        self, queues: list[str], probe: Callable[[str], list[tuple[Any, ...]]]
    ) -> Iterator[tuple[str, list[Any]]]:
        """Each queue with the replies to its `probe` commands: plain reads, written at
        once per _CALLS_AT_ONCE queues (the sweep and the retention pass over every queue)."""
        for start in range(0, len(queues), _CALLS_AT_ONCE):
            part = queues[start : start + _CALLS_AT_ONCE]
            asked = [probe(queue) for queue in part]
            replies = iter(self._read_many([command for commands in asked for command in commands]))
            for queue, commands in zip(part, asked, strict=True):
                yield queue, [next(replies) for _ in commands]

    @_guarded
    def wait_for_work(self, queues: Sequence[str], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        self._waker.listen(self._channel(q, "wake") for q in queues)
        while True:
            generation = self._waker.generation
            ready, next_due = self._look(queues)
            if ready:
                return True
            left = deadline - time.monotonic()
            if next_due is not None:
                left = min(left, next_due - self.clock.now())
            if left <= 0:
                return False
            if self._waker.wait(generation, min(left, _WAIT_SLICE)):
                return True  # a message: the claim that follows is the look (one round trip less)

    def _look(self, queues: Sequence[str]) -> tuple[bool, float | None]:
        """Is a job ready on an unpaused queue; when does the next scheduled one fall due?"""
        commands: list[tuple[Any, ...]] = []
        for queue in queues:
            base = self._base(queue)
            commands += [("EXISTS", f"{base}:paused"), ("ZCARD", f"{base}:queued"),
                         ("ZRANGE", f"{base}:scheduled", 0, 0, "WITHSCORES")]  # fmt: skip
        replies = self._read_many(commands)
        now = self.clock.now()
        next_due: float | None = None
        for i in range(0, len(replies), 3):
            paused, queued, first = replies[i : i + 3]
            if paused:
                continue
            if queued:
                return True, None
            if first:  # [[member, score]] on RESP3 (redis-py 8's default), [member, score] on RESP2
                due = float(first[0][1] if isinstance(first[0], list) else first[1])
                if due <= now:
                    return True, None
                next_due = due if next_due is None else min(next_due, due)
        return False, next_due

    @_guarded
    def wait_finished(self, job_id: str, deadline: float | None) -> JobRecord | None:
        where = split_id(job_id)
        if where is None:
            return None
        queue, seq = where
        self._waker.listen([self._channel(queue, "done")])
        while True:
            generation = self._waker.generation
            row = self._script("watch", [self._base(queue)], [seq])
            if not row:
                return None
            record = read_stored(functools.partial(_record, queue), row, job_id)
            left = _WAIT_SLICE if deadline is None else deadline - time.monotonic()
            if record.state in TERMINAL_STATES or left <= 0:
                return record
            self._waker.wait(generation, min(left, _WAIT_SLICE))

    # -- reading -----------------------------------------------------------
    @_guarded
    def get(self, ids: Sequence[str]) -> list[JobRecord | None]:
        wanted = [(i, split_id(job_id)) for i, job_id in enumerate(ids)]
        found = [(i, where) for i, where in wanted if where is not None]
        out: list[JobRecord | None] = [None] * len(ids)
        if not found:
            return out
        rows = self._read_many(
            [("HMGET", f"{self._base(queue)}:j:{seq}", *_FIELDS) for _, (queue, seq) in found]
        )
        for (i, (queue, seq)), row in zip(found, rows, strict=True):
            if row[2] is not None:  # state: the job exists
                out[i] = read_stored(functools.partial(_record, queue), [seq, *row], ids[i])
        return out

    @_guarded
    def list_jobs(self, query: JobQuery) -> list[JobRecord]:
        queues = [query.queue] if query.queue is not None else self._queues()
        window = None if query.task is not None else query.offset + query.limit
        candidates: list[tuple[int, str]] = []
        for queue in queues:
            candidates.extend((int(seq), queue) for seq in self._seqs(queue, query.state, window))
        candidates.sort(reverse=True)
        matches: list[JobRecord] = []
        skip = query.offset
        for start in range(0, len(candidates), 200):
            chunk = candidates[start : start + 200]
            for record in self.get([f"{queue}:{seq}" for seq, queue in chunk]):
                if record is None or (query.task is not None and record.task != query.task):
                    continue
                if query.state is not None and record.state is not query.state:
                    continue
                if skip:
                    skip -= 1
                    continue
                matches.append(record)
                if len(matches) == query.limit:
                    return matches
        return matches

    def _seqs(self, queue: str, state: JobState | None, window: int | None) -> list[str]:
        """A queue's job seqs: newest `window` of all its jobs, or every job in `state`."""
        base = self._base(queue)
        if state is None:
            members: list[str] = self._r.zrevrange(f"{base}:all", 0, -1 if window is None else window - 1)
            return members
        return [m.lstrip("0") or "0" for m in self._r.zrange(f"{base}:{state.value}", 0, -1)]

    @_guarded
    def counts(self) -> dict[str, dict[JobState, int]]:
        queues = self._queues()
        replies = iter(
            self._read_many([("ZCARD", f"{self._base(q)}:{s.value}") for q in queues for s in JobState])
        )
        out: dict[str, dict[JobState, int]] = {}
        for queue in queues:
            per_state = {state: int(next(replies)) for state in JobState}
            nonzero = {state: n for state, n in per_state.items() if n}
            if nonzero:
                out[queue] = nonzero
        return out

    @_guarded
    def logs(self, job_id: str) -> list[LogEntry]:
        where = split_id(job_id)
        if where is None:
            return []
        lines = self._r.lrange(f"{self._base(where[0])}:logs:{where[1]}", 0, -1)
        return [LogEntry(at, message, fields) for at, message, fields in map(json.loads, lines)]

    # -- events ------------------------------------------------------------
    @_guarded
    def publish(self, events: Sequence[Entry]) -> None:
        if self._lane is None:
            self._r.xadd(self._events_key, {"e": encode(events)}, maxlen=KEEP, approximate=True)
        else:
            self._lane.command("XADD", self._events_key, "MAXLEN", "~", KEEP, "*", "e", encode(events))

    @_guarded
    def event_cursor(self) -> str:
        newest = self._r.xrevrange(self._events_key, "+", "-", count=1)
        return str(newest[0][0]) if newest else "0-0"

    @_guarded
    def read_events(self, cursor: str, timeout: float) -> tuple[list[JobEvent], str]:
        block = max(1, int(timeout * 1000))  # BLOCK 0 would wait forever
        replies = self._r.xread({self._events_key: cursor}, count=50, block=block) or []
        events: list[JobEvent] = []
        for _, entries in replies:
            for entry_id, fields in entries:
                events.extend(decode(fields["e"]))
                cursor = entry_id
        return events, cursor

    # -- operating ---------------------------------------------------------
    def _per_queue(self, script: str, ids: Sequence[str], extra: Sequence[str] | None = None) -> list[Any]:
        """Run `script` once per queue over the seqs of `ids` (each followed by its item of
        `extra`, when given), after its head (now, the call's id: see keep in _lib.lua);
        replies in the ids' order, 0 for an id that is not ours."""
        head = [repr(self.clock.now()), _call_id()]
        out: list[Any] = [0] * len(ids)
        groups: dict[str, tuple[list[int], list[str]]] = {}
        for index, job_id in enumerate(ids):
            where = split_id(job_id)
            if where is not None:
                indexes, args = groups.setdefault(where[0], ([], []))
                indexes.append(index)
                args.append(where[1])
                if extra is not None:
                    args.append(extra[index])
        for queue, (indexes, args) in groups.items():
            replies = self._script(script, [self._base(queue)], [*head, *args])
            for index, reply in zip(indexes, replies, strict=True):
                out[index] = reply
        return out

    @_guarded
    def cancel(self, ids: Sequence[str]) -> list[bool]:
        return [bool(r) for r in self._per_queue("cancel", ids)]

    @_guarded
    def resume_waiting(self, resumptions: Sequence[Resumption]) -> list[bool]:
        # One script call per queue: resume.lua takes (seq, error) pairs.
        errors = [r.error or "" for r in resumptions]
        pairs = self._per_queue("resume", [r.job_id for r in resumptions], errors)
        return [bool(reply) for reply in pairs]

    @_guarded
    def retry(self, ids: Sequence[str]) -> list[bool]:
        return [bool(r) for r in self._per_queue("retry", ids)]

    @_guarded
    def delete(self, ids: Sequence[str]) -> int:
        groups: dict[str, list[str]] = {}
        for job_id in ids:
            where = split_id(job_id)
            if where is not None:
                groups.setdefault(where[0], []).append(where[1])
        call = _call_id()
        return sum(int(self._script("delete", self._keys(q), [call, q, *seqs])) for q, seqs in groups.items())

    @_guarded
    def set_paused(self, queues: Sequence[str], paused: bool) -> None:
        if not queues:
            return
        pipe = self._r.pipeline(transaction=False)
        for queue in queues:
            if paused:
                pipe.set(f"{self._base(queue)}:paused", "1")
            else:
                pipe.delete(f"{self._base(queue)}:paused")
        if paused:  # listed after its flag is set, so a paused queue with no job stays listed
            pipe.sadd(self._queues_key, *queues)
        pipe.execute()
        if not paused:  # after the flags are gone; Cluster pipelines refuse PUBLISH
            for queue in queues:
                self._r.publish(self._channel(queue, "wake"), "1")

    @_guarded
    def paused(self) -> list[str]:
        queues = self._queues()  # set_paused registers its queues, so none is missed
        flags = self._read_many([("EXISTS", f"{self._base(queue)}:paused") for queue in queues])
        return [queue for queue, flagged in zip(queues, flags, strict=True) if flagged]

    @_guarded
    def purge(
        self,
        *,
        queue: str | None = None,
        states: Sequence[JobState] = (),
        older_than: float | None = None,
        limit: int | None = None,
    ) -> int:
        older = "+inf" if older_than is None else repr(older_than)
        if queue is not None:
            return self._purge({state: [queue] for state in purgeable(states)}, older, limit)
        due, empty = self._due_for_purge(self._queues(), purgeable(states), older)
        deleted = self._purge(due, older, limit)
        if empty:
            self._script_each("forget", [(self._keys(name), [name]) for name in empty])
        return deleted

    def _purge(self, due: dict[JobState, list[str]], older: str, limit: int | None) -> int:
        """Run the purge script over each state's queues, at most `limit` jobs a state."""
        deleted = 0
        for state, queues in due.items():
            left = limit
            for name in queues:
                while left is None or left > 0:
                    batch = _BATCH if left is None else min(_BATCH, left)
                    n = int(self._script("purge", self._keys(name), [state.value, older, batch, name]))
                    deleted += n
                    left = None if left is None else left - n
                    if n < batch:
                        break
        return deleted

    def _due_for_purge(
        self, queues: list[str], states: Sequence[JobState], older: str
    ) -> tuple[dict[JobState, list[str]], list[str]]:
        """The queues holding a job of each state finished before `older`, and (one server)
        the queues with no job left that are not paused, for forget.lua. Plain reads, in
        one write per _CALLS_AT_ONCE queues: with the script run for each queue and state,
        a round trip each, a retention pass over 2,000 queues took 523 ms (224 ms of Redis
        CPU), against 27-42 ms (8.4-9.7) so."""
        bound = older if older == "+inf" else f"({older}"

        def probe(queue: str) -> list[tuple[Any, ...]]:
            base = self._base(queue)
            oldest = [
                ("ZRANGEBYSCORE", f"{base}:{state.value}", "-inf", bound, "LIMIT", 0, 1) for state in states
            ]
            return oldest if self._cluster else [*oldest, ("EXISTS", f"{base}:all", f"{base}:paused")]

        due: dict[JobState, list[str]] = {state: [] for state in states}
        empty: list[str] = []
        for queue, replies in self._probed(queues, probe):
            for state, first in zip(states, replies, strict=False):  # EXISTS, if asked, comes last
                if first:
                    due[state].append(queue)
            if not self._cluster and not replies[-1]:
                empty.append(queue)
        return due, empty

    @_guarded
    def report_worker(self, info: WorkerInfo | None, *, remove: str | None = None) -> None:
        if info is not None:
            info.last_seen = self.clock.now()
            fields = [info.host, info.pid, list(info.queues), info.concurrency, info.started_at,
                      info.last_seen, info.active, info.processed]  # fmt: skip
            pipe = self._r.pipeline(transaction=False)
            pipe.hset(self._workers_key, info.id, json.dumps(fields))
            if info.queues:
                # A worker lists what it consumes (see register in _lib.lua), so the sweep
                # finds its expired leases even where a producer older than the scripts'
                # listing stored jobs in a queue the retention pass had forgotten.
                pipe.sadd(self._queues_key, *info.queues)
            pipe.execute()
        if remove is not None:
            self._r.hdel(self._workers_key, remove)

    @_guarded
    def workers(self) -> list[WorkerInfo]:
        seen = self.clock.now() - WORKER_SEEN_SECONDS
        found, gone = [], []
        for worker_id, text in self._r.hgetall(self._workers_key).items():
            host, pid, queues, concurrency, started, last, active, processed = json.loads(text)
            if last >= seen:
                found.append(WorkerInfo(worker_id, host, pid, tuple(queues), concurrency, started,
                                        last, active, processed))  # fmt: skip
            elif last < seen - 100 * WORKER_SEEN_SECONDS:
                gone.append(worker_id)  # long gone: forget it
        if gone:
            self._r.hdel(self._workers_key, *gone)
        return sorted(found, key=lambda w: -w.last_seen)

    @_guarded
    def ping(self) -> None:
        self._r.ping()

    @_guarded
    def warm_up(self) -> None:
        """This thread's lane connection opened and the hot path's scripts loaded: else a
        worker's first claim dials, gets NOSCRIPT and loads (first claims took 6.7-8.5 ms
        here, later ones 1.5-2.5). Cluster's client dials each node on first use."""
        if self._lane is not None:
            for name in _HOT_SCRIPTS:
                self._s[name].sha = self._lane.command("SCRIPT", "LOAD", self._s[name].script)

    @_guarded
    def preflight(self) -> None:
        try:
            server, memory = _first(self._r.info("server")), _first(self._r.info("memory"))
        except ResponseError as exc:  # some managed services disable INFO
            log.warning("Redis %s: could not read INFO to check version and eviction: %s", self.safe_url, exc)
            return
        version = tuple(int(p) for p in str(server.get("redis_version", "0.0")).split(".")[:2])
        if version < _MIN_VERSION:
            raise ConfigError(f"Redis {self.safe_url} is version {server.get('redis_version')}; "
                              "Conveyor needs Redis 6.2 or newer (or Valkey)")  # fmt: skip
        policy = str(memory.get("maxmemory_policy", "noeviction"))
        if policy != "noeviction" and not self.target.allow_eviction:
            raise ConfigError(
                f"Redis {self.safe_url} has maxmemory-policy {policy}: when memory runs out it "
                "deletes keys, and those can be jobs. Set `maxmemory-policy noeviction` (Redis then "
                "refuses new jobs instead), or add ?allow_eviction=1 to the URL to accept the risk"
            )

    def close(self) -> None:
        self._waker.close()
        if self._lane is not None:
            self._lane.close()
        if self._anyloop is not None:
            self._anyloop.close()
        self._r.close()


# The job hash's fields in JobRecord's order (after the id), as the scripts' FIELDS.
_FIELDS = (
    "task", "queue", "state", "payload", "priority", "attempt", "max_attempts", "retries", "timeout",
    "run_at", "enqueued_at", "started_at", "finished_at", "unique_key", "meta", "lease_owner",
    "lease_token", "lease_expires", "result", "error", "attempts", "progress", "parent_id",
    "children", "flow", "limit_key",
)  # fmt: skip


def _first(info: Any) -> dict[str, Any]:
    """INFO's fields; on Cluster redis-py answers per node, and the first node speaks for all."""
    if info and all(isinstance(v, dict) for v in info.values()) and "redis_version" not in info:
        return dict(next(iter(info.values())))
    return dict(info)


def _record(queue: str, row: Sequence[Any]) -> JobRecord:
    """A JobRecord from a script's row: seq, then the _FIELDS values in order. An absent
    field is None (or '' where the scripts clear it): numbers read `float(x) if x`."""
    (seq, task, _queue, state, payload, priority, attempt, max_attempts, retries, timeout, run_at,
     enqueued_at, started_at, finished_at, unique_key, meta, lease_owner, lease_token, lease_expires,
     result, error, attempts, progress, parent_id, children, flow, limit_key) = row  # fmt: skip
    return JobRecord(
        f"{queue}:{seq}", task, queue, STATE_OF[state], payload, int(priority), int(attempt or 0),
        int(max_attempts), int(retries), float(timeout) if timeout else None, float(run_at),
        float(enqueued_at), float(started_at) if started_at else None,
        float(finished_at) if finished_at else None, unique_key,
        json.loads(meta) if meta and meta != _EMPTY_META else {}, lease_owner or None,
        lease_token or None, float(lease_expires) if lease_expires else None, result, error,
        [AttemptRecord(*a) for a in json.loads(attempts)] if attempts and attempts != "[]" else [],
        float(progress) if progress else None, parent_id or None,
        json.loads(children) if children else [], flow or None, limit_key or None,
    )  # fmt: skip


def _ident(queue: str) -> Callable[[Sequence[Any]], tuple[str, str]]:
    """The job id and lease token of a claim script's row (see _record)."""
    return lambda row: (f"{queue}:{row[0]}", str(row[17]))


def _batch_id(outcomes: list[Outcome]) -> str:
    """A finish call's id: the same outcomes (job, lease token, kind) give the same id,
    so a resend of the batch, even the worker's own after an error, finds the first
    call's answer (see finish.lua). Lease tokens are random, so other batches do not."""
    text = "\n".join(f"{o.job_id} {o.token} {o.kind.value}" for o in outcomes)
    return hashlib.blake2b(text.encode(), digest_size=12).hexdigest()


def _call_id() -> str:
    """A call's id (cancel, retry, delete, resume, a schedule's tick): its resend after
    a lost reply answers what the call did, not what is left to do (see keep in _lib.lua)."""
    return secrets.token_hex(8)


def _resent(args: list[Any], at: int) -> list[Any]:
    """An enqueue script's arguments for a resend after a dropped connection, where
    `args[at]` is its first seq: 0 (the script takes them) becomes "r", so the script
    first looks whether the lost call stored the jobs (see stored_by_lost_call in
    _lib.lua). Seqs the client took need no mark: a stored seq is never stored again."""
    return args if args[at] else [*args[:at], "r", *args[at + 1 :]]


def _plain(job: NewJob) -> bool:
    """A job enqueue_one.lua can store: no unique key, no flow, no per-key limit, and a
    priority a score holds exactly."""
    return (
        job.unique_key is None
        and job.unique_for is None
        and not job.debounce
        and job.parent is None
        and not job.waiting
        and job.flow is None
        and job.limit_key is None
        and abs(job.priority) <= _MAX_PRIORITY
    )


def _extras(jobs: Sequence[NewJob], first: int, flows: bool) -> list[str]:
    """Each job's rarely used fields for the enqueue script (see insert in _lib.lua):
    flow links, with the ids known up front (the job at index i gets seq first + i),
    and the unique key's window and debounce."""
    ids = [f"{job.queue}:{first + i}" for i, job in enumerate(jobs)]
    found = flow_links(jobs, ids) if flows else None
    out = []
    for job, (parent, children) in zip(jobs, found or [(None, [])] * len(jobs), strict=True):
        links: dict[str, Any] = {}
        if job.unique_for is not None:
            links["uf"] = job.unique_for
        if job.debounce:
            links["d"] = True
        if job.limit_key is not None:
            links["k"] = job.limit_key
        if parent is not None:
            links["p"] = parent
        if children:
            links["c"] = json.dumps(children)
        if job.flow is not None:
            links["f"] = job.flow
        if job.waiting:
            links["w"] = True
        out.append(json.dumps(links, separators=(",", ":")) if links else "")
    return out


def _logs(entries: Sequence[LogEntry]) -> list[str]:
    return [json.dumps([e.at, e.message, e.fields], separators=(",", ":"), default=str) for e in entries]
