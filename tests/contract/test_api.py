"""The public contract (DESIGN.md), end to end with a real worker, on every engine."""

from __future__ import annotations

import asyncio
import math
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from conveyor import (
    BackendUnavailable,
    ConfigError,
    Conveyor,
    Fail,
    JobFailed,
    JobNotFound,
    JobState,
    PayloadTooLarge,
    Retry,
    SerializationError,
    current_job,
)
from conveyor.backends.base import NewJob
from tests.conftest import eventually, running


def test_async_and_sync_tasks_return_results(app: Conveyor) -> None:
    @app.task
    async def add(a: int, b: int) -> int:
        await asyncio.sleep(0)
        return a + b

    @app.task
    def shout(word: str) -> str:
        return word.upper()

    with running(app):
        assert add.enqueue(2, 3).result(timeout=10) == 5
        assert shout.enqueue(word="hi").result(timeout=10) == "HI"
    assert add.name == f"{__name__}.add" or add.name.endswith(".add")


def test_aenqueue_and_aresult(app: Conveyor) -> None:
    @app.task
    async def double(x: int) -> int:
        return x * 2

    async def produce() -> int:
        job = await double.aenqueue(21)
        value: int = await job.aresult(timeout=10)
        return value

    with running(app):
        assert asyncio.run(produce()) == 42


def test_aenqueue_stores_what_enqueue_stores_from_any_loop(app: Conveyor) -> None:
    """Each asyncio.run is a new loop, and threads run loops of their own: the engines'
    async paths serve them all, and store jobs exactly as the sync path does."""

    @app.task(queue="media", retries=2)
    def render(brief: str) -> str:
        return brief

    options = {"priority": 5, "meta": {"brief_id": "7"}, "timeout": 30.0, "delay": 3600}
    synced = render.options(**options).enqueue("a")

    async def produce(word: str) -> str:
        return (await render.options(**options).aenqueue(word)).id

    awaited = [app.get_job(asyncio.run(produce(w))) for w in ("b", "c")]
    from_threads: list[str] = []

    def in_a_thread() -> None:
        from_threads.append(asyncio.run(produce("d")))

    threads = [threading.Thread(target=in_a_thread) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert len(set(from_threads)) == 3
    for job in [*awaited, *map(app.get_job, from_threads)]:
        assert (job.task, job.queue, job.state, job.priority, job.max_attempts, job.meta) == (
            synced.task, synced.queue, JobState.SCHEDULED, 5, 3, {"brief_id": "7"}
        )  # fmt: skip
        stored, expected = job.record, app.get_job(synced.id).record
        assert stored.timeout == expected.timeout == 30.0
        assert stored.run_at - stored.enqueued_at == pytest.approx(3600, abs=1)


def test_aenqueue_many_at_once_each_stored_once(app: Conveyor) -> None:
    """More concurrent calls than an async path keeps connections for (16 on Redis, the
    pool's size on PostgreSQL): the rest take the threaded path; each job is stored once."""

    @app.task
    async def double(x: int) -> int:
        return x * 2

    async def produce() -> list[Any]:
        jobs = await asyncio.gather(*(double.aenqueue(i) for i in range(60)))
        return [await job.aresult(timeout=20) for job in jobs]

    double.enqueue(-1)  # the engine opened: the first call from a loop may not open it
    with running(app, concurrency=20):
        assert asyncio.run(produce()) == [2 * i for i in range(60)]
    assert len(app.jobs(limit=100)) == 61


def test_aenqueue_many_stores_a_batch_from_async_code(app: Conveyor) -> None:
    @app.task
    def add(a: int, b: int = 0) -> int:
        return a + b

    async def produce() -> list[Any]:
        jobs = await add.aenqueue_many((i, i) for i in range(3))
        jobs += await add.options(priority=3).aenqueue_many([{"a": 10}])
        return jobs

    jobs = asyncio.run(produce())
    assert [job.args for job in jobs] == [[0, 0], [1, 1], [2, 2], []]
    assert jobs[-1].kwargs == {"a": 10}
    assert app.get_job(jobs[-1].id).priority == 3
    with running(app):
        assert [job.result(timeout=10) for job in jobs] == [0, 2, 4, 10]


def test_aenqueue_with_a_unique_key_returns_the_holder(app: Conveyor) -> None:
    @app.task
    def render(brief: str) -> str:
        return brief

    async def produce() -> tuple[str, str]:
        first = await render.options(unique_key="brief-7").aenqueue("7")
        second = await render.options(unique_key="brief-7").aenqueue("8")
        return first.id, second.id

    first, second = asyncio.run(produce())
    assert first == second
    assert app.get_job(first).args == ["7"]


def test_enqueue_by_name_needs_no_task_code(app: Conveyor, url: str) -> None:
    @app.task(name="billing.charge")
    def charge(amount: int) -> str:
        return f"charged {amount}"

    job = app.enqueue("billing.charge", 42)
    assert job.task == "billing.charge"
    with running(app):
        assert job.result(timeout=10) == "charged 42"


def test_job_attributes_and_refresh(app: Conveyor) -> None:
    @app.task(queue="media", retries=5)
    def work(x: int) -> int:
        return x

    job = work.options(priority=10, meta={"brief_id": "7"}).enqueue(1)
    assert (job.queue, job.priority, job.state, job.attempt, job.meta) == (
        "media",
        10,
        JobState.QUEUED,
        0,
        {"brief_id": "7"},
    )
    assert job.max_attempts == 6 and job.error is None and job.args == [1] and job.kwargs == {}
    assert app.get_job(job.id).id == job.id
    with running(app, queues=["media"]):
        job.result(timeout=10)
    assert job.refresh().state is JobState.COMPLETED and job.attempt == 1


def test_priority_runs_higher_first_then_in_order(app: Conveyor) -> None:
    order: list[str] = []

    @app.task
    def record(name: str) -> None:
        order.append(name)

    record.enqueue("low-1")
    record.options(priority=10).enqueue("high")
    record.enqueue("low-2")
    record.options(priority=5).enqueue("mid")
    with running(app, concurrency=1):
        eventually(lambda: len(order) == 4)
    assert order == ["high", "mid", "low-1", "low-2"]


def test_delayed_job_runs_after_its_delay(app: Conveyor) -> None:
    @app.task
    def stamp() -> float:
        return time.time()

    before = time.time()
    job = stamp.options(delay=0.3).enqueue()
    assert job.state is JobState.SCHEDULED
    with running(app):
        assert job.result(timeout=10) >= before + 0.3


def test_run_at_takes_an_aware_datetime(app: Conveyor) -> None:
    @app.task
    def noop() -> None:
        return None

    job = noop.options(run_at=datetime.now(UTC) + timedelta(hours=1)).enqueue()
    assert job.state is JobState.SCHEDULED
    with pytest.raises(ConfigError, match="timezone-aware"):
        noop.options(run_at=datetime.now())


def test_failures_retry_with_backoff_then_succeed(app: Conveyor) -> None:
    @app.task(retries=3)
    def flaky() -> int:
        if current_job().attempt < 3:
            raise ConnectionError("upstream timed out")
        return current_job().attempt

    job = flaky.enqueue()
    with running(app):
        assert job.result(timeout=10) == 3
    job.refresh()
    assert [a.error for a in job.attempts] == ["ConnectionError: upstream timed out"] * 2
    assert all("upstream timed out" in (a.traceback or "") for a in job.attempts)
    assert "executor.py" not in (job.attempts[0].traceback or "")  # the task's frames only


def test_retries_spent_make_the_job_dead_with_every_attempt(app: Conveyor) -> None:
    @app.task(retries=2)
    def broken() -> None:
        raise ValueError("bad input")

    job = broken.enqueue()
    with running(app), pytest.raises(JobFailed, match="ValueError: bad input") as caught:
        job.result(timeout=10)
    assert caught.value.error == "ValueError: bad input"
    job.refresh()
    assert job.state is JobState.DEAD and job.attempt == 3 and len(job.attempts) == 3


def test_fail_goes_straight_to_dead(app: Conveyor) -> None:
    @app.task(retries=5)
    def refuse() -> None:
        raise Fail("customer closed their account")

    job = refuse.enqueue()
    with running(app), pytest.raises(JobFailed):
        job.result(timeout=10)
    assert job.state is JobState.DEAD and job.attempt == 1
    assert job.error == "Fail: customer closed their account"


def test_retry_with_a_delay(app: Conveyor) -> None:
    @app.task(retries=1)
    def later() -> str:
        if current_job().attempt == 1:
            raise Retry(delay=0.2)
        return "done"

    job = later.enqueue()
    with running(app):
        assert job.result(timeout=10) == "done"
    assert job.attempts[0].error.startswith("Retry")
    assert (job.started_at or 0) - job.attempts[0].finished_at >= 0.15


def test_async_timeout_fails_the_attempt(app: Conveyor) -> None:
    @app.task(timeout=0.2, retries=0)
    async def slow() -> None:
        await asyncio.sleep(30)

    job = slow.enqueue()
    with running(app), pytest.raises(JobFailed, match="timeout of 0.2s"):
        job.result(timeout=10)


def test_sync_timeout_fails_the_attempt_and_flags_the_context(app: Conveyor) -> None:
    stop = threading.Event()
    seen: list[bool] = []

    @app.task(timeout=0.2, retries=0)
    def slow() -> None:
        stop.wait(5)
        seen.append(current_job().cancelled)

    job = slow.options().enqueue()
    with running(app):
        with pytest.raises(JobFailed, match="TimeoutError"):
            job.result(timeout=10)
        stop.set()
        eventually(lambda: seen == [True])


def test_per_job_timeout_overrides_the_task(app: Conveyor) -> None:
    @app.task(timeout=30, retries=0)
    async def slow() -> None:
        await asyncio.sleep(30)

    job = slow.options(timeout=0.1).enqueue()
    with running(app), pytest.raises(JobFailed, match="timeout of 0.1s"):
        job.result(timeout=10)


def test_math_inf_sets_no_timeout_where_none_inherits(app: Conveyor) -> None:
    """A task (or a job) that must run as long as it takes says so with math.inf; the
    worker's job_timeout, here 0.1 s, then does not apply. The job keeps it stored."""

    @app.task(timeout=math.inf, retries=0)
    async def unbounded() -> str:
        await asyncio.sleep(0.3)
        return "done"

    @app.task(timeout=0.1, retries=0)
    async def bounded() -> str:
        await asyncio.sleep(0.3)
        return "done"

    jobs = [unbounded.enqueue(), bounded.options(timeout=math.inf).enqueue()]
    with running(app, job_timeout=0.1):
        assert [job.result(timeout=10) for job in jobs] == ["done", "done"]
    assert jobs[1].refresh().record.timeout == math.inf
    refused = r"option 'timeout' must be a number of seconds > 0 \(math.inf: no limit\), got nan"
    with pytest.raises(ConfigError, match=refused):
        bounded.options(timeout=math.nan)


def test_current_job_logs_progress_and_ids(app: Conveyor) -> None:
    @app.task
    async def transcribe(url: str) -> dict[str, Any]:
        job = current_job()
        job.log("downloading", url=url)
        job.progress(0.5)
        job.heartbeat()
        return {"id": job.id, "attempt": job.attempt, "queue": job.queue}

    handle = transcribe.enqueue("s3://bucket/a.mp3")
    with running(app):
        value = handle.result(timeout=10)
    assert value == {"id": handle.id, "attempt": 1, "queue": "default"}
    assert [(e.message, e.fields) for e in handle.logs()] == [("downloading", {"url": "s3://bucket/a.mp3"})]
    assert handle.refresh().progress == 0.5


def test_current_job_outside_a_task_is_a_clear_error() -> None:
    with pytest.raises(RuntimeError, match="outside a running Conveyor task"):
        current_job()


def test_progress_outside_zero_to_one_is_refused(app: Conveyor) -> None:
    @app.task(retries=0)
    def bad() -> None:
        current_job().progress(7)

    job = bad.enqueue()
    with running(app), pytest.raises(JobFailed, match="between 0.0 and 1.0"):
        job.result(timeout=10)


def test_enqueue_many_is_one_batch_in_order(app: Conveyor) -> None:
    @app.task
    def render(brief_id: str) -> str:
        return brief_id

    jobs = render.enqueue_many([("1",), ("2",), {"brief_id": "3"}, render.s("4")])
    assert [j.args or j.kwargs for j in jobs] == [["1"], ["2"], {"brief_id": "3"}, ["4"]]
    bound = render.options(queue="bulk", priority=3).enqueue_many([("5",)])
    assert (bound[0].queue, bound[0].priority) == ("bulk", 3)
    with running(app):
        assert [j.result(timeout=10) for j in jobs] == ["1", "2", "3", "4"]


def test_unique_key_returns_the_unfinished_job(app: Conveyor) -> None:
    @app.task
    def render(brief_id: str) -> str:
        return brief_id

    first = render.options(unique_key="brief-7").enqueue("7")
    second = render.options(unique_key="brief-7").enqueue("7")
    assert first.id == second.id
    with running(app):
        first.result(timeout=10)
    third = render.options(unique_key="brief-7").enqueue("7")
    assert third.id != first.id


def test_cancel_and_retry_from_the_handle(app: Conveyor) -> None:
    @app.task
    def noop() -> str:
        return "ran"

    job = noop.enqueue()
    assert job.cancel() and job.state is JobState.CANCELLED
    assert not job.cancel()
    with pytest.raises(JobFailed, match="cancelled"):
        job.result(timeout=1)
    assert job.retry()
    assert job.refresh().state is JobState.QUEUED
    with running(app):
        assert job.result(timeout=10) == "ran"


def test_delete_removes_jobs_in_any_state_and_says_which_existed(app: Conveyor) -> None:
    @app.task
    def noop() -> str:
        return "ran"

    done, later = noop.enqueue(), noop.options(delay=3600).enqueue()
    with running(app):
        assert done.result(timeout=10) == "ran"
    queued = noop.enqueue()
    missing = "nope:1" if ":" in done.id else "987654321"
    assert app.delete(done.id, missing, later.id) == [True, False, True]
    assert queued.delete() is True and queued.delete() is False
    assert app.jobs() == []
    assert app.delete("not an id") == [False]


def test_retry_and_purge_from_the_app(app: Conveyor) -> None:
    first, second, mailed = (
        app.enqueue("t.a", 1),
        app.enqueue("t.a", 2),
        app.ref("t.m").options(queue="mail").enqueue(),
    )
    assert app.cancel(first.id, second.id, mailed.id) == [True, True, True]
    assert app.retry(first.id, "987654321") == [True, False]
    assert first.refresh().state is JobState.QUEUED
    assert app.purge(older_than=timedelta(hours=1)) == 0  # cancelled just now
    assert app.purge(states=["dead", JobState.COMPLETED]) == 0
    assert app.purge(queue="mail", states=["cancelled"], older_than=0) == 1
    assert app.purge() == 1
    assert [j.id for j in app.jobs()] == [first.id]
    with pytest.raises(ConfigError, match="purge deletes finished jobs .* not 'queued' ones; delete"):
        app.purge(states=["queued"])
    with pytest.raises(ConfigError, match="unknown job state 'done'"):
        app.purge(states=["done"])
    with pytest.raises(ConfigError, match="older_than must be seconds >= 0 or a timedelta, got -1"):
        app.purge(older_than=-1)


def test_result_times_out_with_timeout_error(app: Conveyor) -> None:
    @app.task
    def noop() -> None:
        return None

    with pytest.raises(TimeoutError, match="did not finish within 0.05s"):
        noop.enqueue().result(timeout=0.05)


def test_result_rides_out_an_unreachable_engine_until_its_timeout(
    app: Conveyor, monkeypatch: pytest.MonkeyPatch
) -> None:
    @app.task
    def noop() -> int:
        return 7

    job = noop.enqueue()
    real = app.backend.wait_finished
    outages = iter([True, True, False])  # two failed waits, as in a restart or a failover

    def flaky(job_id: str, deadline: float | None) -> Any:
        if next(outages, False):
            raise BackendUnavailable("engine restarting")
        return real(job_id, deadline)

    monkeypatch.setattr(app.backend, "wait_finished", flaky)
    with running(app):
        assert job.result(timeout=10) == 7
    outages = iter([True] * 1000)
    with pytest.raises(BackendUnavailable, match="engine restarting"):
        job.result(timeout=0.2)  # still unreachable at the deadline: the outage, not a timeout


def test_jobs_and_stats(app: Conveyor) -> None:
    @app.task
    def noop() -> None:
        return None

    a = noop.enqueue()
    noop.options(queue="other").enqueue()
    a.cancel()
    assert [j.id for j in app.jobs(state="cancelled")] == [a.id]
    assert len(app.jobs(queue="other")) == 1
    stats = app.stats()
    assert stats["queues"]["default"]["cancelled"] == 1
    assert stats["queues"]["other"]["queued"] == 1
    assert stats["totals"]["queued"] == 1
    with pytest.raises(ConfigError, match="unknown job state 'finished'"):
        app.jobs(state="finished")
    with pytest.raises(JobNotFound):
        app.get_job("99999")


# -- bad input -------------------------------------------------------------
def test_unknown_task_goes_dead_and_the_worker_keeps_going(app: Conveyor) -> None:
    @app.task
    def fine() -> str:
        return "ok"

    ghost = app.enqueue("nobody.registered", 1)
    after = fine.enqueue()
    with running(app):
        assert after.result(timeout=10) == "ok"
        with pytest.raises(JobFailed, match="UnknownTask: no task named 'nobody.registered'"):
            ghost.result(timeout=10)
    assert ghost.attempt == 1


def test_nul_characters_anywhere_never_stop_the_worker(app: Conveyor) -> None:
    """NUL in an exception message, a log line, its fields and meta: PostgreSQL's text
    cannot hold one, so it keeps U+FFFD there (every other engine keeps the NUL).
    Arguments and results keep it everywhere. Until 2026-12-07 such an error made every
    PostgreSQL finish batch fail and stopped the worker."""

    @app.task(retries=0)
    def poison(text: str) -> None:
        current_job().log("line\x00one", field="v\x00")
        raise ValueError(f"bad{text}byte")

    @app.task
    def echo(text: str) -> str:
        return text

    bad = poison.options(meta={"k\x00": "m\x00"}).enqueue("\x00")
    after = [echo.enqueue(f"a\x00{i}") for i in range(3)]
    with running(app):
        assert [job.result(timeout=10) for job in after] == [f"a\x00{i}" for i in range(3)]
        with pytest.raises(JobFailed):
            bad.result(timeout=10)
    kept = {"\x00", "\ufffd"}  # the NUL itself, or PostgreSQL's stand-in
    assert bad.error is not None and bad.error.startswith("ValueError: bad") and bad.error[15] in kept
    [line] = bad.logs()
    assert line.message[4] in kept and line.fields["field"][1] in kept
    assert [(k[1], v[1]) for k, v in bad.refresh().meta.items()] in (
        [("\x00", "\x00")],
        [("\ufffd", "\ufffd")],
    )


def test_a_line_logged_just_before_a_sync_task_returns_is_kept(app: Conveyor) -> None:
    """The heartbeat's renewal carries the line while the task returns, and the store of
    its end must not overtake it: the engine would refuse the line, as the job's lease
    is gone. Until the second session of 2026-12-07 it did, on 3 to 6 of the 9 engines."""

    @app.task
    def step(i: int) -> int:
        job = current_job()
        job.log("done", step=i)
        job.progress(1.0)
        job.heartbeat()
        return i

    jobs = step.enqueue_many([(i,) for i in range(10)])
    with running(app, concurrency=10):
        assert [job.result(timeout=10) for job in jobs] == list(range(10))
    assert [[line.fields for line in job.logs()] for job in jobs] == [[{"step": i}] for i in range(10)]
    assert {job.refresh().progress for job in jobs} == {1.0}


def test_nan_and_infinity_in_log_fields_and_meta_are_stored(app: Conveyor) -> None:
    """A log line's fields and meta may hold NaN and infinities (a training loss, say).
    PostgreSQL's jsonb has no such numbers, so it keeps the words JSON writes for them;
    every other engine gives the numbers back. Until the second session of 2026-12-07
    a renewal carrying such a line stopped the worker on PostgreSQL, and such meta was
    refused with psycopg's own error."""

    @app.task
    def train() -> str:
        job = current_job()
        job.log("epoch", loss=math.nan, best=-math.inf)
        job.heartbeat()  # the line goes with a lease renewal
        return "trained"

    job = train.options(meta={"budget": math.inf}).enqueue()
    with running(app):
        assert job.result(timeout=10) == "trained"
        assert train.enqueue().result(timeout=10) == "trained"  # the worker is still at work
    [line] = job.logs()
    loss, best, budget = line.fields["loss"], line.fields["best"], job.refresh().meta["budget"]
    if isinstance(loss, str):  # PostgreSQL
        assert (loss, best, budget) == ("NaN", "-Infinity", "Infinity")
    else:
        assert math.isnan(loss) and best == -math.inf and budget == math.inf


def test_payload_that_does_not_decode_goes_dead(app: Conveyor) -> None:
    @app.task
    def fine() -> str:
        return "ok"

    [stored] = app.backend.enqueue(
        [NewJob(task=fine.name, queue="default", payload="{not json", max_attempts=3)]
    )
    with running(app):
        with pytest.raises(JobFailed, match="PayloadError: payload does not decode"):
            app.get_job(stored.id).result(timeout=10)
        assert fine.enqueue().result(timeout=10) == "ok"


def test_arguments_that_do_not_fit_go_dead(app: Conveyor) -> None:
    @app.task(retries=3)
    def needs_two(a: int, b: int) -> int:
        return a + b

    job = needs_two.enqueue(1)  # type: ignore[call-arg]
    with (
        running(app),
        pytest.raises(JobFailed, match=r"ArgumentError: arguments do not fit .*needs_two\(\)"),
    ):
        job.result(timeout=10)
    assert job.attempt == 1  # never retried: it cannot ever run


def test_unserializable_arguments_are_refused_and_nothing_is_stored(app: Conveyor) -> None:
    @app.task
    def takes(x: object) -> None:
        return None

    with pytest.raises(SerializationError, match="arguments of task .*takes.* not JSON serializable"):
        takes.enqueue(object())
    with pytest.raises(SerializationError):
        takes.enqueue_many([(1,), (object(),)])
    assert app.jobs() == []


def test_payload_over_the_limit_is_refused(url: str) -> None:
    app = Conveyor(url, prefix="t", max_payload_bytes=1000)

    @app.task
    def big(blob: str) -> None:
        return None

    with pytest.raises(PayloadTooLarge, match="encode to .* bytes; the limit is 1000"):
        big.enqueue("x" * 2000)
    assert app.jobs() == []
    app.close()


def test_unserializable_result_goes_dead(app: Conveyor) -> None:
    @app.task(retries=2)
    def returns_set() -> set[int]:
        return {1}

    job = returns_set.enqueue()
    with running(app), pytest.raises(JobFailed, match="SerializationError: result of"):
        job.result(timeout=10)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"priorty": 1}, "unknown option 'priorty'"),
        ({"priority": "high"}, "'priority' must be an integer"),
        ({"delay": -1}, "'delay' must be a number of seconds >= 0"),
        ({"timeout": 0}, "'timeout' must be a number of seconds > 0"),
        ({"retries": -1}, "'retries' must be an integer >= 0"),
        ({"queue": "bad queue!"}, "invalid queue name"),
        ({"meta": "x"}, "'meta' must be a dict"),
        ({"unique_key": ""}, "'unique_key' must be a non-empty string"),
        ({"unique_key": "a\x00b"}, r"'unique_key' must be a non-empty string \(<= 512 chars, no NUL\)"),
        ({"delay": 1, "run_at": 5.0}, "either delay or run_at"),
    ],
)
def test_bad_options_are_named(app: Conveyor, options: dict[str, Any], message: str) -> None:
    @app.task
    def noop() -> None:
        return None

    with pytest.raises(ConfigError, match=message):
        noop.options(**options)


def test_a_task_name_registered_twice_is_refused(app: Conveyor) -> None:
    app.task(name="dup")(lambda: 1)
    with pytest.raises(ConfigError, match="already registered"):
        app.task(name="dup")(lambda: 2)


def test_concurrency_is_never_exceeded(app: Conveyor) -> None:
    lock = threading.Lock()
    now_running, peak = [0], [0]

    @app.task
    async def busy() -> None:
        with lock:
            now_running[0] += 1
            peak[0] = max(peak[0], now_running[0])
        await asyncio.sleep(0.01)
        with lock:
            now_running[0] -= 1

    jobs = busy.enqueue_many([()] * 60)
    with running(app, concurrency=4):
        for job in jobs:
            job.result(timeout=20)
    assert peak[0] == 4


def test_enqueue_many_fast_path_keeps_order_arguments_and_options(app: Conveyor) -> None:
    @app.task(queue="bulk", retries=1)
    def work(a: int, b: int = 0) -> int:
        return a + b

    calls = ((i,) if i % 2 else {"a": i, "b": 1} for i in range(40))  # a generator, mixed items
    jobs = work.options(priority=4, meta={"batch": "x"}).enqueue_many(calls)
    assert [(j.args, j.kwargs) for j in jobs] == [
        ([i], {}) if i % 2 else ([], {"a": i, "b": 1}) for i in range(40)
    ]
    stored = app.get_job(jobs[7].id)
    assert (stored.queue, stored.priority, stored.max_attempts, stored.meta) == ("bulk", 4, 2, {"batch": "x"})
    assert len({j.id for j in jobs}) == 40
    with running(app, queues=["bulk"]):
        assert [j.result(timeout=10) for j in jobs] == [i if i % 2 else i + 1 for i in range(40)]


def test_enqueue_many_with_a_shared_unique_key_stores_one_job(app: Conveyor) -> None:
    @app.task
    def work(x: int) -> int:
        return x

    jobs = work.options(unique_key="only-one").enqueue_many([(1,), (2,), (3,)])
    assert len({j.id for j in jobs}) == 1
    assert len(app.jobs()) == 1


def test_enqueue_many_refuses_items_of_the_wrong_type(app: Conveyor) -> None:
    @app.task
    def work(x: int) -> int:
        return x

    with pytest.raises(TypeError, match="items must be args tuples, kwargs dicts or signatures, got int"):
        work.enqueue_many([(1,), 2])
    assert app.jobs() == []


def test_a_task_that_raises_cancelled_error_fails_instead_of_hanging(app: Conveyor) -> None:
    @app.task(retries=1)
    async def self_cancelling() -> None:
        raise asyncio.CancelledError

    job = self_cancelling.enqueue()
    with running(app), pytest.raises(JobFailed, match="CancelledError"):
        job.result(timeout=10)
    assert job.attempt == 2 and len(job.attempts) == 2


def test_pause_holds_new_work_while_running_jobs_finish(app: Conveyor) -> None:
    gate = threading.Event()

    @app.task(queue="media")
    def step(i: int) -> int:
        if i == 0:
            gate.wait(10)
        return i

    first = step.enqueue(0)
    with running(app, queues=["media"], concurrency=2):
        eventually(lambda: first.refresh().state is JobState.ACTIVE)
        app.pause("media")
        held = step.enqueue(1)
        gate.set()
        assert first.result(timeout=10) == 0  # the running job finished
        assert app.stats()["paused"] == ["media"]
        with pytest.raises(TimeoutError):
            held.result(timeout=0.5)  # ...and nothing new started
        app.resume("media")
        assert held.result(timeout=10) == 1
    with pytest.raises(ConfigError, match="invalid queue name"):
        app.pause("no such queue")


@pytest.mark.parametrize("how", ["cancel", "delete"])
def test_cancelling_or_deleting_a_running_async_job_cancels_its_task(app: Conveyor, how: str) -> None:
    seen: list[str] = []

    @app.task(retries=3)
    async def long_running() -> None:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            seen.append("cancelled")
            raise

    job = long_running.enqueue()
    with running(app, lease_timeout=0.6) as worker:  # renewals every 0.2 s notice the cancel
        eventually(lambda: job.refresh().state is JobState.ACTIVE)
        assert job.cancel() if how == "cancel" else job.delete()  # delete cancels it first
        eventually(lambda: seen == ["cancelled"], timeout=10)
        eventually(lambda: not worker._running, timeout=5)
    if how == "delete":
        with pytest.raises(JobNotFound):
            job.refresh()
    else:
        assert job.refresh().state is JobState.CANCELLED and job.attempt == 1


def test_snooze_runs_later_without_spending_an_attempt(app: Conveyor) -> None:
    from conveyor import Snooze

    runs: list[int] = []

    @app.task(retries=0)
    def waits_for_upstream() -> str:
        runs.append(current_job().attempt)
        if len(runs) < 3:
            raise Snooze(0.05) if len(runs) == 1 else Retry(delay=0.05, count=False)
        return "ready"

    job = waits_for_upstream.enqueue()
    with running(app):
        assert job.result(timeout=10) == "ready"  # retries=0, yet it ran three times
    assert runs == [1, 1, 1] and job.attempt == 1 and job.attempts == []


def test_debounce_runs_once_with_the_last_arguments(app: Conveyor) -> None:
    seen: list[int] = []

    @app.task
    def save(version: int) -> int:
        seen.append(version)
        return version

    debounced = save.options(unique_key="doc-1", debounce=0.3)
    jobs = [debounced.enqueue(v) for v in (1, 2, 3)]
    assert len({job.id for job in jobs}) == 1
    with running(app):
        assert jobs[0].result(timeout=10) == 3
    assert seen == [3]
    again = save.options(unique_key="doc-1", unique_for=60).enqueue(4)
    assert again.id == jobs[0].id and again.state is JobState.COMPLETED  # completed within the window
