"""The prefix's list of queues on one server: a queue leaves it with its last job, comes
back with its next one, and every way of storing a job puts it back in the same step."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from conveyor import JobState
from conveyor.backends.base import NewJob, WorkerInfo
from conveyor.backends.redis import RedisBackend
from conveyor.clock import FakeClock
from tests.conftest import REDIS_URL, fresh_redis


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def backend(clock: FakeClock) -> Iterator[RedisBackend]:
    fresh_redis(REDIS_URL)
    engine = RedisBackend(REDIS_URL, prefix="list", clock=clock)
    yield engine
    engine.close()


def listed(backend: RedisBackend) -> list[str]:
    return backend._queues()


def test_a_queue_leaves_the_list_with_its_last_job(backend: RedisBackend) -> None:
    gone, kept = backend.enqueue([NewJob("t", "gone", "[]"), NewJob("t", "kept", "[]")])
    cancelled = backend.enqueue([NewJob("t", "cancelled", "[]") for _ in range(2)])
    assert listed(backend) == ["cancelled", "gone", "kept"]

    assert backend.delete([gone.id]) == 1
    assert listed(backend) == ["cancelled", "kept"]

    assert backend.cancel([j.id for j in cancelled]) == [True, True]
    assert backend.purge(queue="cancelled", states=[JobState.CANCELLED], limit=1) == 1
    assert listed(backend) == ["cancelled", "kept"]  # one job is left
    assert backend.purge(states=[JobState.CANCELLED]) == 1
    assert listed(backend) == ["kept"]
    assert backend.counts() == {"kept": {JobState.QUEUED: 1}}
    assert [r.id for r in backend.claim("w", ["kept"], 10, 30)] == [kept.id]


def _single(backend: RedisBackend, queue: str, clock: FakeClock) -> None:
    backend.enqueue([NewJob("t", queue, "[]")])


def _single_scheduled(backend: RedisBackend, queue: str, clock: FakeClock) -> None:
    backend.enqueue([NewJob("t", queue, "[]", run_at=clock.now() + 5)])


def _batch_with_a_unique_key(backend: RedisBackend, queue: str, clock: FakeClock) -> None:
    backend.enqueue([NewJob("t", queue, "[]", unique_key="k")])


def _batch_over_two_queues(backend: RedisBackend, queue: str, clock: FakeClock) -> None:
    backend.enqueue([NewJob("t", queue, "[]"), NewJob("t", "other", "[]")])


def _bulk(backend: RedisBackend, queue: str, clock: FakeClock) -> None:
    backend.enqueue_payloads(NewJob("t", queue, ""), ["[1]", "[2]"])


def _tick(backend: RedisBackend, queue: str, clock: FakeClock) -> None:
    assert backend.enqueue_tick("every-minute", clock.now(), NewJob("t", queue, "[]")) is not None


def _flow(backend: RedisBackend, queue: str, clock: FakeClock) -> None:
    backend.enqueue([NewJob("t", queue, "[]", waiting=True), NewJob("t", queue, "[]", parent=0)])


@pytest.mark.parametrize(
    "store",
    [_single, _single_scheduled, _batch_with_a_unique_key, _batch_over_two_queues, _bulk, _tick, _flow],
)
def test_every_way_of_storing_a_job_lists_its_queue_again(
    backend: RedisBackend, clock: FakeClock, store: Callable[[RedisBackend, str, FakeClock], Any]
) -> None:
    """A queue taken off the list gets back on it with its next job, so a lease that
    expires there is found by the recovery sweep."""
    first = backend.enqueue([NewJob("t", "tenant", "[]")])[0]
    backend.delete([first.id])
    assert "tenant" not in listed(backend)

    store(backend, "tenant", clock)
    assert "tenant" in listed(backend)
    clock.advance(10)  # a scheduled job is due, a tick's job too
    claimed = backend.claim("w", ["tenant"], 10, 30)
    assert claimed
    clock.advance(31)
    assert sorted(backend.recover_expired()) == sorted(r.id for r in claimed)


def test_a_paused_queue_with_no_job_stays_listed_until_resumed(backend: RedisBackend) -> None:
    backend.set_paused(["quiet"], True)
    job = backend.enqueue([NewJob("t", "quiet", "[]")])[0]
    backend.delete([job.id])
    assert listed(backend) == ["quiet"] and backend.paused() == ["quiet"]

    backend.set_paused(["quiet"], False)
    assert backend.purge(states=[JobState.COMPLETED]) == 0  # the retention pass forgets it
    assert listed(backend) == [] and backend.paused() == []


def test_the_retention_pass_forgets_emptied_queues_and_purges_only_where_due(
    backend: RedisBackend, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Queues listed with no job (as an older version left them) are forgotten, and the
    purge script runs only for the queues and states with a job to delete."""
    backend._r.sadd(backend._queues_key, *[f"old-{n}" for n in range(5)])
    done = backend.enqueue([NewJob("t", "done", "[]"), NewJob("t", "live", "[]")])
    backend.cancel([done[0].id])
    scripts: list[str] = []
    run = backend._script

    def counted(name: str, *args: Any) -> Any:
        scripts.append(name)
        return run(name, *args)

    monkeypatch.setattr(backend, "_script", counted)
    clock.advance(60)
    assert backend.purge(states=[JobState.CANCELLED, JobState.DEAD], older_than=clock.now() - 30) == 1
    assert scripts == ["purge"]
    assert listed(backend) == ["live"]


def test_a_worker_lists_the_queues_it_consumes(backend: RedisBackend, clock: FakeClock) -> None:
    """A producer older than the scripts' listing lists a queue once per process, so its
    jobs may land in a queue the retention pass forgot: the worker's report lists it."""
    job = backend.enqueue([NewJob("t", "tenant", "[]")])[0]
    backend._r.srem(backend._queues_key, "tenant")  # as such a producer leaves it
    assert [r.id for r in backend.claim("w", ["tenant"], 1, 30)] == [job.id]
    backend.report_worker(WorkerInfo("w", "host", 1, ("tenant",), 10, clock.now()))
    assert listed(backend) == ["tenant"]
    clock.advance(31)
    assert backend.recover_expired() == [job.id]


_UNLISTED_WITH_JOBS = """
local found = {0, 0}
for _, queue in ipairs(ARGV) do
  if redis.call('SISMEMBER', KEYS[1], queue) == 0 then
    found[2] = found[2] + 1
    if redis.call('EXISTS', KEYS[2] .. ':{' .. queue .. '}:all') == 1 then found[1] = found[1] + 1 end
  end
end
return found
"""


def test_no_job_is_ever_in_an_unlisted_queue_while_producers_and_purges_race(backend: RedisBackend) -> None:
    """Two producers (single, delayed, bulk, unique) and a reaper (delete, or cancel and
    purge) on four queues for 2 s, while a script checks atomically, again and again,
    that every queue holding a job is listed. Queues leave the list often meanwhile."""
    queues = [f"q{n}" for n in range(4)]
    deadline = time.monotonic() + 2
    found = {"with jobs": 0, "unlisted": 0, "checks": 0}

    def produce(seed: int) -> None:
        engine, pick = RedisBackend(REDIS_URL, prefix="list"), random.Random(seed)
        while time.monotonic() < deadline:
            queue, kind = pick.choice(queues), pick.randrange(4)
            if kind == 0:
                engine.enqueue([NewJob("t", queue, "[]")])
            elif kind == 1:
                engine.enqueue([NewJob("t", queue, "[]", run_at=time.time() + 0.01)])
            elif kind == 2:
                engine.enqueue_payloads(NewJob("t", queue, ""), ["[1]", "[2]"])
            else:
                engine.enqueue([NewJob("t", queue, "[]", unique_key=str(pick.random()))])
        engine.close()

    def reap() -> None:
        engine, pick = RedisBackend(REDIS_URL, prefix="list"), random.Random(3)
        while time.monotonic() < deadline:
            queue = pick.choice(queues)
            ids = [f"{queue}:{seq}" for seq in backend._r.zrange(f"list:{{{queue}}}:all", 0, -1)]
            if pick.random() < 0.5:
                engine.delete(ids)
            else:
                engine.cancel(ids)
                engine.purge(states=[JobState.CANCELLED])
        engine.close()

    def check() -> None:
        script = backend._r.register_script(_UNLISTED_WITH_JOBS)
        while time.monotonic() < deadline:
            with_jobs, unlisted = script(keys=[backend._queues_key, "list"], args=queues)
            found["with jobs"] += with_jobs
            found["unlisted"] += unlisted
            found["checks"] += 1

    threads = [
        threading.Thread(target=work) for work in (lambda: produce(1), lambda: produce(2), reap, check)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert found["checks"] > 100 and found["unlisted"] > 0  # the race was run
    assert found["with jobs"] == 0
