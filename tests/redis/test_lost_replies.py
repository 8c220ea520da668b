"""A claim whose reply is lost after Redis ran it: its jobs come back to the worker
that claimed them, with the attempt they were claimed for, instead of sitting leased
until the lease runs out (and then counting as a failed attempt). An enqueue whose
reply is lost is resent, and the resend stores nothing twice; a finish resent answers
what the lost call stored, not "lease lost".

The faults are real: a TCP proxy in front of the local Redis (tests/proxy.py) drops the
reply to one EVALSHA after Redis has answered it, and can refuse new connections for a
while, as a server killed right after a write does.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conveyor.backends import open_backend
from conveyor.backends.base import Backend, Fence, JobQuery, NewJob, Outcome, OutcomeKind
from conveyor.errors import BackendUnavailable
from conveyor.job import JobState
from conveyor.limits import Limit, QueueLimits
from tests.conftest import engine_url
from tests.proxy import ReplyDropper


@pytest.fixture
def backend(tmp_path: Path) -> Iterator[Backend]:
    url = engine_url("redis", tmp_path)  # empties the test database; skips without Redis
    host, port_db = url.removeprefix("redis://").split(":")
    port, db = port_db.split("/")
    proxy = ReplyDropper((host, int(port)), marker=b"EVALSHA")
    opened = open_backend(f"redis://127.0.0.1:{proxy.port}/{db}?timeout=2", prefix="lost")
    opened.proxy = proxy  # type: ignore[attr-defined]
    # Both claim scripts loaded first: a dropped NOSCRIPT reply would test nothing.
    opened.claim("warm", ["warm"], 1, 30)
    opened.claim("warm", ["warm"], 1, 30, {"warm": QueueLimits(queue=Limit(concurrency=1))})
    yield opened
    opened.close()
    proxy.close()


def _enqueue(backend: Backend, count: int) -> list[str]:
    return [e.id for e in backend.enqueue([NewJob("t.any", "default", "[[],{}]") for _ in range(count)])]


def test_the_resend_after_a_lost_reply_gets_the_same_jobs(backend: Backend) -> None:
    ids = _enqueue(backend, 3)
    backend.proxy.drop_next.set()  # type: ignore[attr-defined]
    claimed = backend.claim("w1", ["default"], 10, 30)
    assert sorted(r.id for r in claimed) == sorted(ids)
    assert {(r.state, r.attempt) for r in claimed} == {(JobState.ACTIVE, 1)}
    assert backend.claim("w1", ["default"], 10, 30) == []  # nothing claimed twice


def test_a_claim_lost_while_redis_is_unreachable_comes_back_to_its_worker(backend: Backend) -> None:
    ids = _enqueue(backend, 3)
    proxy = backend.proxy  # type: ignore[attr-defined]
    proxy.drop_next.set()
    proxy.refusing.set()  # the resend cannot get through either
    with pytest.raises(BackendUnavailable):
        backend.claim("w1", ["default"], 10, 30)
    proxy.refusing.clear()
    assert backend.claim("w2", ["default"], 10, 30) == []  # leased to w1, not w2's
    claimed = backend.claim("w1", ["default"], 10, 30)
    assert sorted(r.id for r in claimed) == sorted(ids)
    assert {(r.state, r.attempt, r.lease_owner) for r in claimed} == {(JobState.ACTIVE, 1, "w1")}


def test_lost_jobs_beyond_the_free_slots_go_back_unspent(backend: Backend) -> None:
    ids = _enqueue(backend, 3)
    proxy = backend.proxy  # type: ignore[attr-defined]
    proxy.drop_next.set()
    proxy.refusing.set()
    with pytest.raises(BackendUnavailable):
        backend.claim("w1", ["default"], 10, 30)
    proxy.refusing.clear()
    first = backend.claim("w1", ["default"], 2, 30)
    assert [r.id for r in first] == ids[:2]
    back = backend.get([ids[2]])[0]
    assert back is not None and (back.state, back.attempt) == (JobState.QUEUED, 0)
    (last,) = backend.claim("w1", ["default"], 10, 30)
    assert (last.id, last.attempt) == (ids[2], 1)


def test_a_limited_claim_resent_after_a_lost_reply_takes_no_more_than_fits(backend: Backend) -> None:
    ids = _enqueue(backend, 3)
    limits = {"default": QueueLimits(queue=Limit(concurrency=2))}
    backend.proxy.drop_next.set()  # type: ignore[attr-defined]
    claimed = backend.claim("w1", ["default"], 10, 30, limits)
    assert [r.id for r in claimed] == ids[:2]  # the same two, not two more held back
    assert {r.attempt for r in claimed} == {1}
    assert backend.claim("w1", ["default"], 10, 30, limits) == []


def test_a_cluster_claim_resent_by_its_client_gets_the_same_jobs(redis_deployments: Any) -> None:
    """redis-py's Cluster client sends a command again after a connection error, with the
    same arguments. A claim Redis ran whose reply was lost is resent that way: the resend
    returns the jobs the first call leased instead of leasing more (they would sit until
    their lease ran out, then count as a failed attempt)."""
    cluster = redis_deployments("redis-cluster")
    cluster.flush()
    backend = open_backend(cluster.url, prefix="lost")
    ids = _enqueue(backend, 3)
    script = backend._s["claim"]  # type: ignore[attr-defined]

    def reply_lost_once(keys: list[str], args: list[Any]) -> Any:
        script(keys, args)  # Redis runs it; the reply never arrives
        return script(keys, args)  # the client's resend

    backend._s["claim"] = reply_lost_once  # type: ignore[attr-defined]
    claimed = backend.claim("w1", ["default"], 2, 30)
    assert [(r.id, r.attempt) for r in claimed] == [(ids[0], 1), (ids[1], 1)]
    left = backend.get([ids[2]])[0]
    assert left is not None and (left.state, left.attempt) == (JobState.QUEUED, 0)
    assert [r.id for r in backend.claim("w1", ["default"], 10, 30)] == [ids[2]]
    backend.close()


def _stored(backend: Backend, queue: str = "default") -> list[tuple[str, str]]:
    """(id, payload) of every job in `queue`, oldest first."""
    records = backend.list_jobs(JobQuery(queue=queue, limit=1000))
    return sorted(((r.id, r.payload) for r in records), key=lambda pair: int(pair[0].rpartition(":")[2]))


def _job(payload: str, queue: str = "default", unique_key: str | None = None) -> NewJob:
    return NewJob("t.any", queue, payload, unique_key=unique_key)


def test_a_single_enqueue_resent_after_a_lost_reply_is_stored_once(backend: Backend) -> None:
    (before,) = backend.enqueue([_job("[[1],{}]")])  # the same payload, an instant earlier
    backend.proxy.drop_next.set()  # type: ignore[attr-defined]
    (resent,) = backend.enqueue([_job("[[1],{}]")])
    assert resent.created and resent.id != before.id
    assert _stored(backend) == [(before.id, "[[1],{}]"), (resent.id, "[[1],{}]")]


def test_a_batch_resent_after_a_lost_reply_returns_what_the_lost_call_stored(backend: Backend) -> None:
    (held,) = backend.enqueue([_job("[[0],{}]", unique_key="held")])
    batch = [_job("[[1],{}]"), _job("[[1],{}]"), _job("[[2],{}]", unique_key="k"),
             _job("[[2],{}]", unique_key="k"), _job("[[3],{}]", unique_key="held")]  # fmt: skip
    backend.proxy.drop_next.set()  # type: ignore[attr-defined]
    out = backend.enqueue(batch)
    assert [e.created for e in out] == [True, True, True, False, False]
    assert out[3].id == out[2].id and out[4].id == held.id  # the keys' holders
    stored = _stored(backend)
    assert [payload for _, payload in stored] == ["[[0],{}]", "[[1],{}]", "[[1],{}]", "[[2],{}]"]
    assert [job_id for job_id, _ in stored] == [held.id, out[0].id, out[1].id, out[2].id]


def test_a_batch_of_held_keys_resent_after_a_lost_reply_stores_nothing(backend: Backend) -> None:
    (held,) = backend.enqueue([_job("[[0],{}]", unique_key="held")])
    backend.proxy.drop_next.set()  # type: ignore[attr-defined]
    out = backend.enqueue([_job("[[1],{}]", unique_key="held"), _job("[[2],{}]", unique_key="held")])
    assert [(e.id, e.created) for e in out] == [(held.id, False), (held.id, False)]
    assert _stored(backend) == [(held.id, "[[0],{}]")]


def test_a_bulk_enqueue_resent_after_a_lost_reply_is_stored_once(backend: Backend) -> None:
    payloads = ["[[1],{}]", "[[2],{}]", "[[1],{}]"]
    backend.proxy.drop_next.set()  # type: ignore[attr-defined]
    ids = backend.enqueue_payloads(_job(""), payloads)
    assert _stored(backend) == list(zip(ids, payloads, strict=True))


def test_several_queues_resent_after_a_lost_reply_are_stored_once(backend: Backend) -> None:
    """Two queues go as one MULTI/EXEC, which redis-py resends itself; the seqs were
    taken before it, so the resend finds them stored (and a job with a unique key is
    not taken for one that holds it)."""
    backend.proxy.drop_next.set()  # type: ignore[attr-defined]
    out = backend.enqueue([_job("[[1],{}]", "a"), _job("[[2],{}]", "b"), _job("[[3],{}]", "a", "k")])
    assert all(e.created for e in out)
    assert _stored(backend, "a") == [(out[0].id, "[[1],{}]"), (out[2].id, "[[3],{}]")]
    assert _stored(backend, "b") == [(out[1].id, "[[2],{}]")]


def test_a_cluster_enqueue_resent_by_its_client_is_stored_once(redis_deployments: Any) -> None:
    """On Cluster the client takes the seqs first, and redis-py resends a call after a
    connection error by itself: a seq stored already is not stored again, and a finish
    resent answers as the first call did."""
    cluster = redis_deployments("redis-cluster")
    cluster.flush()
    backend = open_backend(cluster.url, prefix="lost")
    for name in ("enqueue", "enqueue_one", "enqueue_many", "finish"):
        script = backend._s[name]  # type: ignore[attr-defined]

        def reply_lost_once(keys: list[str], args: list[Any], script: Any = script) -> Any:
            script(keys, args)  # Redis runs it; the reply never arrives
            return script(keys, args)  # the client's resend

        backend._s[name] = reply_lost_once  # type: ignore[attr-defined]
    one = backend.enqueue([_job("[[1],{}]")])
    batch = backend.enqueue([_job("[[2],{}]"), _job("[[3],{}]", unique_key="k")])
    bulk = backend.enqueue_payloads(_job(""), ["[[4],{}]", "[[5],{}]"])
    assert [e.created for e in [*one, *batch]] == [True, True, True]
    expected = [(e.id, p) for e, p in zip([*one, *batch], ["[[1],{}]", "[[2],{}]", "[[3],{}]"], strict=True)]
    assert _stored(backend) == [*expected, *zip(bulk, ["[[4],{}]", "[[5],{}]"], strict=True)]
    assert _finish_all(backend, backend.claim("w1", ["default"], 2, 30)) == [Fence.OK, Fence.OK]
    backend.close()


def _finish_all(backend: Backend, jobs: list[Any]) -> list[Fence]:
    return backend.finish([Outcome(r.id, r.lease_token, OutcomeKind.COMPLETED, result="1") for r in jobs])


def test_a_finish_resent_after_a_lost_reply_answers_stored_not_lease_lost(backend: Backend) -> None:
    """Run again, the batch's jobs would no longer be active under its token, and the
    worker would log their results as discarded, emit no events and skip flow parents."""
    _enqueue(backend, 3)
    claimed = backend.claim("w1", ["default"], 10, 30)
    backend.proxy.drop_next.set()  # type: ignore[attr-defined]
    assert _finish_all(backend, claimed) == [Fence.OK] * 3
    done = backend.get([r.id for r in claimed])
    assert {(r.state, r.result) for r in done if r is not None} == {(JobState.COMPLETED, "1")}


def test_a_finish_retried_by_the_worker_after_an_error_answers_stored(backend: Backend) -> None:
    """The lane's resend cannot get through either, so the worker retries the same
    outcomes later (see Storer.store): the answer is still the first call's."""
    _enqueue(backend, 2)
    claimed = backend.claim("w1", ["default"], 10, 30)
    proxy = backend.proxy  # type: ignore[attr-defined]
    proxy.drop_next.set()
    proxy.refusing.set()
    with pytest.raises(BackendUnavailable):
        _finish_all(backend, claimed)
    proxy.refusing.clear()
    assert _finish_all(backend, claimed) == [Fence.OK, Fence.OK]
    other = backend.claim("w2", ["default"], 10, 30)
    assert other == []  # nothing came back to run again
    stale = [Outcome(r.id, "not-the-token", OutcomeKind.COMPLETED) for r in claimed]
    assert backend.finish(stale) == [Fence.LEASE_LOST, Fence.LEASE_LOST]  # other batches are fenced as ever


def test_operator_calls_resent_after_a_lost_reply_answer_what_they_did(backend: Backend) -> None:
    """Run again, a cancel, retry or delete would find its work done and answer that it
    did nothing: each call keeps its reply under an id of its own for the resend."""
    proxy = backend.proxy  # type: ignore[attr-defined]
    ids = _enqueue(backend, 3)
    proxy.drop_next.set()
    assert backend.cancel(ids[:2]) == [True, True]
    proxy.drop_next.set()
    assert backend.retry(ids[:2]) == [True, True]
    assert {r.state for r in backend.get(ids) if r is not None} == {JobState.QUEUED}
    proxy.drop_next.set()
    assert backend.delete(ids) == 3
    assert backend.get(ids) == [None, None, None]
    assert backend.cancel(ids) == [False] * 3  # a new call: nothing left to cancel
    assert backend.delete(ids) == 0


def test_a_schedule_tick_resent_after_a_lost_reply_answers_its_job(backend: Backend) -> None:
    """Run again, the tick's compare-and-set finds the tick taken and answers None, as if
    another scheduler had enqueued it: the scheduler would log nothing for its job."""
    job = NewJob("t.tick", "default", "[[],{}]")
    backend.proxy.drop_next.set()  # type: ignore[attr-defined]
    stored = backend.enqueue_tick("nightly", 1_000.0, job)
    assert stored is not None
    assert [r.id for r in backend.list_jobs(JobQuery(queue="default"))] == [stored]
    assert backend.enqueue_tick("nightly", 1_000.0, job) is None  # another call: the tick is taken
