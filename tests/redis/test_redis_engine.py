"""Redis specifics: URLs, TLS, prefixes, script reloads and faults, on servers started here."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from conveyor import BackendUnavailable, ConfigError, Conveyor, JobState
from conveyor.backends.base import NewJob
from conveyor.backends.redis import RedisBackend
from conveyor.backends.redis import backend as redis_backend
from conveyor.backends.redis.backend import _SCRIPTS as SCRIPTS
from conveyor.backends.redis.connect import parse_redis_url
from conveyor.backends.redis.prelude import load as load_script
from conveyor.backends.redis.prelude import trimmed
from conveyor.bench import run_bench
from conveyor.clock import FakeClock
from tests.conftest import (
    REDIS_URL,
    eventually,
    fresh_redis,
    rides_out_an_outage_quietly,
    running,
    runs_a_job,
    spy_part_sizes,
    waits_for_its_engine,
)
from tests.redis import servers

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def local_url(tmp_path: Path) -> str:
    fresh_redis(REDIS_URL)
    return REDIS_URL


@pytest.fixture
def flushable_url(tmp_path: Path) -> Iterator[str]:
    """A server of the test's own, for tests that flush scripts: SCRIPT FLUSH reaches
    every database, and on the shared server it hit a lost-reply test beside it (its
    claim found no script, so nothing was leased) and can load scripts back mid-test."""
    servers.need_binaries()
    server = servers.server(tmp_path / "scripts")
    yield f"redis://127.0.0.1:{server.port}/0"
    server.stop()


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("redis+sentinel://127.0.0.1:26379", "names no service"),
        ("redis+cluster://127.0.0.1:x", "is not a number"),
        ("redis://127.0.0.1/0?timeout=-1", "timeout must be"),
        ("redis+sentinel://127.0.0.1:26379/svc/db", "database 'db' is not a number"),
        (
            "redis+sentinel://h/svc?ssl=true",
            "a sentinel URL takes no option 'ssl'; it takes allow_eviction, ",
        ),
        ("rediss+cluster://h:7000?ssl_ca_cert=x", "a cluster URL takes no option 'ssl_ca_cert'; it takes "),
        (
            "redis+sentinel://h/svc?ssl_ca_certs=/ca.crt",
            r"takes no option 'ssl_ca_certs' \(over TLS: rediss\+sentinel://\); it takes allow_eviction, "
            "sentinel_password, sentinel_username, timeout",
        ),
    ],
)
def test_bad_urls_name_what_is_wrong(url: str, problem: str) -> None:
    with pytest.raises(ConfigError, match=problem):
        parse_redis_url(url)


def test_url_forms() -> None:
    cluster = parse_redis_url("redis://:s3cret@10.0.0.1:7000,10.0.0.2:7001")
    assert (cluster.kind, cluster.nodes, cluster.password) == (
        "cluster",
        (("10.0.0.1", 7000), ("10.0.0.2", 7001)),
        "s3cret",
    )
    sentinel = parse_redis_url("redis+sentinel://h1,h2:26380/mymaster/2")
    assert (sentinel.kind, sentinel.nodes, sentinel.service, sentinel.db) == (
        "sentinel",
        (("h1", 26379), ("h2", 26380)),
        "mymaster",
        2,
    )
    server = parse_redis_url("rediss://default:pw@host:6380/0?allow_eviction=1&timeout=2&ssl_cert_reqs=none")
    assert (server.tls, server.allow_eviction, server.timeout) == (True, True, 2.0)
    assert "allow_eviction" not in server.url and "ssl_cert_reqs=none" in server.url
    assert parse_redis_url("unix:///run/redis.sock?db=2&timeout=1").url == "unix:///run/redis.sock?db=2"
    guarded = parse_redis_url("redis+sentinel://:pw@h/svc?sentinel_password=spw&sentinel_username=s")
    assert guarded.options == (("sentinel_password", "spw"), ("sentinel_username", "s"))
    assert "spw" not in repr(guarded) and "pw" not in repr(guarded)
    private_ca = parse_redis_url("rediss+cluster://h:7000?ssl_ca_certs=/etc/ca.crt&timeout=2")
    assert (private_ca.tls, private_ca.options, private_ca.timeout) == (
        True,
        (("ssl_ca_certs", "/etc/ca.crt"),),
        2,
    )


def test_sentinels_with_a_password_of_their_own(tmp_path: Path) -> None:
    """Bitnami's chart has the Sentinels ask for the password too: the URL's password
    is the data nodes', sentinel_password the Sentinels'. Without it the error says so."""
    servers.need_binaries()
    deployment = servers.sentinels(tmp_path / "guarded", password="s3cret")
    hosts = deployment.url.removeprefix("redis+sentinel://")
    app = Conveyor(f"redis+sentinel://:s3cret@{hosts}?sentinel_password=s3cret", prefix="guarded")
    unasked = Conveyor(f"redis+sentinel://:s3cret@{hosts}?timeout=1", prefix="guarded")
    try:
        runs_a_job(app)
        with pytest.raises(BackendUnavailable, match="sentinel_password") as refused:
            unasked.enqueue("double", 1)
        assert "s3cret" not in str(refused.value)
    finally:
        app.close()
        unasked.close()
        deployment.stop()


def test_sentinels_and_data_nodes_over_tls(tmp_path: Path) -> None:
    """rediss+sentinel: TLS to the Sentinels and to the primary they name, with a
    private CA; until the second session of 2026-12-07 there was no such URL. Without
    the CA the handshake fails, and the error says it is Redis that was unreachable."""
    servers.need_binaries()
    deployment = servers.sentinels(tmp_path / "tls-sentinels", tls=tmp_path / "certs")
    app = Conveyor(deployment.url, prefix="tls")
    untrusted = Conveyor(deployment.url.split("?")[0] + "?timeout=1", prefix="tls")
    try:
        assert app.backend.target.tls  # type: ignore[attr-defined]
        runs_a_job(app)
        with pytest.raises(BackendUnavailable, match="rediss\\+sentinel://"):
            untrusted.enqueue("double", 1)
    finally:
        app.close()
        untrusted.close()
        deployment.stop()


def test_a_cluster_no_node_of_which_answers_is_backend_unavailable() -> None:
    """redis-py's RedisClusterUnreachableError is no RedisError: until 2026-12-07 it
    reached the caller raw, and a worker starting before its Cluster died of it."""
    app = Conveyor(f"redis+cluster://127.0.0.1:{servers.free_port()}?timeout=0.5")
    with pytest.raises(BackendUnavailable, match="Redis Cluster cannot be connected"):
        app.enqueue("t", 1)  # opening a Cluster client reads its slots, so it connects
    app.close()


def test_a_password_never_shows_in_errors() -> None:
    backend = RedisBackend("redis://:hunter2@127.0.0.1:1/0?timeout=0.5")
    with pytest.raises(BackendUnavailable) as caught:
        backend.ping()
    backend.close()
    assert "hunter2" not in str(caught.value) and "***" in str(caught.value)


def test_tls_with_the_servers_ca(tmp_path: Path) -> None:
    servers.need_binaries()
    server, ca = servers.tls_server(tmp_path / "tls")
    try:
        app = Conveyor(f"rediss://127.0.0.1:{server.port}/0?ssl_ca_certs={ca}", prefix="tls")

        @app.task
        async def echo(text: str) -> str:
            return text

        with running(app):
            assert echo.enqueue("over TLS").result(timeout=10) == "over TLS"
        app.close()
        untrusted = Conveyor(f"rediss://127.0.0.1:{server.port}/0?timeout=20", prefix="tls")
        with pytest.raises(BackendUnavailable, match="certificate verify failed"):
            untrusted.backend.ping()
        started = time.monotonic()
        with pytest.raises(BackendUnavailable, match="certificate verify failed"):
            untrusted.enqueue("t.any", 1)
        assert time.monotonic() - started < 5, "resent until the timeout: waiting cures no certificate"
        untrusted.close()
    finally:
        server.stop()


def test_a_tls_cluster_with_a_private_ca(tmp_path: Path) -> None:
    """rediss+cluster with ssl_ca_certs: until 2026-12-07 the option was dropped unread
    and the handshake failed on the unknown CA."""
    servers.need_binaries()
    deployment = servers.cluster(tmp_path / "tls-cluster", tls=tmp_path / "certs")
    ca = tmp_path / "certs" / "ca.crt"
    nodes = deployment.url.removeprefix("redis+cluster://")
    app = Conveyor(f"rediss+cluster://{nodes}?ssl_ca_certs={ca}", prefix="tls")
    untrusted = Conveyor(f"rediss+cluster://{nodes}?timeout=2", prefix="tls")
    try:
        runs_a_job(app)
        with pytest.raises(BackendUnavailable, match="certificate verify failed"):
            untrusted.enqueue("echo", "x")
    finally:
        app.close()
        untrusted.close()
        deployment.stop()


@pytest.mark.parametrize(
    "job",
    [
        NewJob("t.a", "one", "[1]"),
        NewJob("t.a", "one", "[2]", priority=-7, max_attempts=4, retries=3, timeout=2.5, meta={"k": [1]}),
        NewJob("t.a", "one", "[3]", run_at=2_000_000_000.25),
    ],
    ids=["plain", "options", "delayed"],
)
def test_a_single_plain_job_is_stored_as_the_batch_scripts_store_it(local_url: str, job: NewJob) -> None:
    """One job goes through enqueue_one.lua, a batch through enqueue.lua, a bulk enqueue
    through enqueue_many.lua: the same hash, the same sorted sets, and a wake-up when it
    lands ready on an empty queue."""
    import redis

    backend = RedisBackend(local_url, prefix="one", clock=FakeClock())
    used: list[str] = []
    script = backend._script

    def spied(name: str, *args: Any) -> Any:
        used.append(name)
        return script(name, *args)

    backend._script = spied  # type: ignore[method-assign,assignment]
    admin = redis.Redis.from_url(local_url, decode_responses=True)
    wakes = admin.pubsub(ignore_subscribe_messages=True)
    wakes.subscribe(backend._channel("one", "wake"))
    assert wakes.get_message(timeout=1) is None  # the subscription is in place
    alone = backend.enqueue([job])[0].id
    woke = wakes.get_message(timeout=0.5 if job.run_at is None else 0.1)
    batched = backend.enqueue([job, job])[0].id
    bulk = backend.enqueue_payloads(job, [job.payload, job.payload])[0]
    assert used == ["enqueue_one", "enqueue", "enqueue_many"]
    assert (woke is not None) is (job.run_at is None)
    one, *others = (i.split(":")[1] for i in (alone, batched, bulk))
    for other in others:
        assert admin.hgetall(f"one:{{one}}:j:{one}") == admin.hgetall(f"one:{{one}}:j:{other}")
        home = "queued" if job.run_at is None else "scheduled"
        for zset in ("queued", "scheduled"):
            key, pad = f"one:{{one}}:{zset}", zset == "queued"
            first, second = (admin.zscore(key, s.zfill(16) if pad else s) for s in (one, other))
            assert first == second and (first is not None) is (zset == home)
        assert admin.zscore("one:{one}:all", other) == float(other)
    wakes.close()
    records = [r for r in backend.get([alone, batched, bulk]) if r is not None]
    assert len(records) == 3
    for record, other in zip(records[1:], (batched, bulk), strict=True):
        assert dataclasses.replace(records[0], id=other) == record
    admin.close()
    backend.close()


def test_prefixes_keep_apps_apart_on_one_server(local_url: str) -> None:
    dev, prod = RedisBackend(local_url, prefix="dev"), RedisBackend(local_url, prefix="prod")
    job = dev.enqueue([NewJob("t", "default", "[]")])[0]
    assert prod.claim("w", ["default"], 10, 30) == []
    assert prod.get([job.id]) == [None] and prod.counts() == {}
    assert [r.id for r in dev.claim("w", ["default"], 10, 30)] == [job.id]
    dev.close()
    prod.close()


def test_scripts_are_reloaded_after_script_flush(flushable_url: str) -> None:
    backend = RedisBackend(flushable_url, prefix="flush")
    backend.enqueue([NewJob("t", "default", "[]")])
    backend._r.script_flush()  # as after a restart without persistence of scripts
    assert len(backend.claim("w", ["default"], 1, 30)) == 1
    backend.close()


def test_recovery_sweeps_many_queues_a_write_at_a_time(
    flushable_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every queue's recover script goes out in one write (per _CALLS_AT_ONCE queues),
    and the queues that filled a batch (_BATCH jobs) go round again."""
    monkeypatch.setattr(redis_backend, "_CALLS_AT_ONCE", 4)
    monkeypatch.setattr(redis_backend, "_BATCH", 2)
    clock = FakeClock()
    backend = RedisBackend(flushable_url, prefix="sweep", clock=clock)
    queues = [f"tenant-{n}" for n in range(10)]
    backend.enqueue([NewJob("t", queue, "[]", max_attempts=2) for queue in queues for _ in range(3)])
    claimed = backend.claim("w", queues, 30, 10)
    assert len(claimed) == 30
    assert backend._lane is not None
    writes: list[int] = []
    run_each = backend._lane.run_each

    def counted(script: Any, calls: Any) -> Any:
        writes.append(len(calls))
        return run_each(script, calls)

    monkeypatch.setattr(backend._lane, "run_each", counted)
    backend._r.script_flush()  # the first write finds the script gone: it is loaded, sent again
    clock.advance(11)
    assert sorted(backend.recover_expired()) == sorted(r.id for r in claimed)
    assert writes == [4, 4, 2, 4, 4, 2]  # each queue recovered 2 of its 3, then the last one
    records = backend.get([r.id for r in claimed])
    assert {(r.state, r.attempt) for r in records if r is not None} == {(JobState.QUEUED, 1)}
    backend.close()


def test_bench_reports_the_servers_cpu_per_job(local_url: str) -> None:
    console = Console(record=True, width=200)
    results = run_bench(url=local_url, jobs=300, processes=1, concurrency=20, scenarios=["bulk", "drain"],
                        json_path=None, console=console)  # fmt: skip
    assert all(r.server_us is not None and r.server_us > 0 for r in results)
    assert "server µs/job" in console.export_text()


def test_warm_up_loads_the_hot_scripts_on_this_threads_connection(flushable_url: str) -> None:
    """A worker's first claim, finish and lease renewal find their scripts loaded (no
    NOSCRIPT round trip), on a connection its thread already has."""
    backend = RedisBackend(flushable_url, prefix="warm")
    backend._r.script_flush()  # as after a restart without persistence of scripts
    hot = ("claim", "finish", "extend")
    assert backend._r.script_exists(*(backend._s[name].sha for name in hot)) == [False] * 3
    backend.warm_up()
    assert backend._r.script_exists(*(backend._s[name].sha for name in hot)) == [True] * 3
    assert backend._lane is not None and len(backend._lane._open) == 1  # this thread's, open now
    backend.close()


def test_each_script_carries_only_the_helpers_it_uses() -> None:
    lib = """-- the head comment
local base = KEYS[1]
local function key(name) return base .. ':' .. name end
-- says what jkey does
local function jkey(seq) return base .. ':j:' .. seq end
local FIELDS = {'task'}
local function record(seq) return redis.call('HMGET', jkey(seq), unpack(FIELDS)) end
local function wake() redis.call('PUBLISH', key('wake'), '') end
"""
    body = "-- one record; then wake() it\nlocal out = record(ARGV[1])  -- wake()?\nreturn out.key\n"
    text = trimmed(lib, body)
    assert text.startswith("-- the head comment\n")
    # record needs jkey and FIELDS, jkey needs base; `.key` is a field, not the helper,
    # and a helper named in a comment is not carried.
    assert "local function record" in text and "-- says what jkey does" in text
    assert "local FIELDS" in text and "local base" in text
    assert "local function key" not in text and "local function wake" not in text
    assert text.index("local base") < text.index("local function jkey") < text.index("local function record")


@pytest.mark.parametrize("name", SCRIPTS)
def test_every_trimmed_script_compiles_on_the_server(local_url: str, name: str) -> None:
    import redis

    client = redis.Redis.from_url(local_url)
    try:
        client.script_load(load_script(name))  # splicing left valid Lua (helpers run in the contract suite)
    finally:
        client.close()


def test_a_batch_across_queues_is_stored_once_when_the_server_lost_its_script(flushable_url: str) -> None:
    """One MULTI/EXEC for several queues (Lane.atomic): the server lacks the script (a
    restart, or SCRIPT FLUSH from elsewhere: CI saw it once, from a test beside it), so
    every call fails alike inside EXEC, and sent again with the script loaded ahead the
    batch is stored once. Until 2026-12-07 this went through redis-py's pipeline."""
    backend = RedisBackend(flushable_url, prefix="flush")
    backend.enqueue([NewJob("t.any", "a", "[[],{}]")])  # every other script the batch needs is loaded
    backend._r.script_flush()
    jobs = [NewJob("t.any", queue, "[[],{}]") for queue in ("a", "b", "a")]
    assert all(e.created for e in backend.enqueue(jobs))
    assert backend.counts() == {"a": {JobState.QUEUED: 3}, "b": {JobState.QUEUED: 1}}
    backend.close()


def test_a_batch_across_queues_waits_out_a_restart(own_server: servers.Server) -> None:
    """The MULTI/EXEC is resent as any lane call (see lane.resend_pauses): safe, as the
    client took the batch's seqs, and a stored seq is never stored again."""
    backend = RedisBackend(f"redis://127.0.0.1:{own_server.port}/0?timeout=20", prefix="down")
    backend.enqueue([NewJob("t.any", "a", "[]")])
    own_server.stop()
    restart = threading.Timer(0.5, own_server.start)
    restart.start()
    try:
        stored = backend.enqueue([NewJob("t.any", q, f"[{i}]") for i, q in enumerate("aba")])
    finally:
        restart.join(30)
    records = backend.get([e.id for e in stored])
    assert [r.payload if r else None for r in records] == ["[0]", "[1]", "[2]"]
    assert backend.counts() == {"a": {JobState.QUEUED: 3}, "b": {JobState.QUEUED: 1}}  # each once
    backend.close()


def test_a_threads_hot_path_connection_closes_when_the_thread_ends(local_url: str) -> None:
    """Not left to the garbage collector, which could take the socket before redis-py's
    connection and warn of an unclosed socket (an error in this suite: it failed an
    unrelated test in a full run on 2026-12-07)."""
    import threading

    backend = RedisBackend(local_url, prefix="lane")
    lane = backend._lane
    assert lane is not None
    used: list[Any] = []

    def enqueue() -> None:
        backend.enqueue([NewJob("t", "default", "[]")])
        used.append(lane._connection())

    thread = threading.Thread(target=enqueue)
    thread.start()
    thread.join(timeout=10)
    assert used and used[0]._sock is None  # closed as the thread ended
    backend.close()


def test_hot_path_connections_are_per_thread_and_heal(local_url: str) -> None:
    """The lane (enqueue/claim/finish past redis-py's command layer): a connection per
    thread, resent once after the server dropped it, kept after a script's own error,
    all closed with the backend."""
    import threading

    import redis

    backend = RedisBackend(local_url, prefix="lane")
    lane = backend._lane
    assert lane is not None
    backend.enqueue([NewJob("t", "default", "[]")])
    mine = lane._connection()
    other: list[object] = []
    thread = threading.Thread(target=lambda: other.append(lane._connection()))
    thread.start()
    thread.join(timeout=10)
    assert other and other[0] is not mine
    with pytest.raises(redis.ResponseError):
        lane.command("INCR", "lane:{default}:j:1")  # WRONGTYPE: a whole reply
    assert lane._connection() is mine and mine.is_connected
    admin = redis.Redis.from_url(local_url, decode_responses=True)
    admin.client_kill_filter(_id=lane.command("CLIENT", "ID"))  # as a restart or idle timeout would
    assert len(backend.claim("w", ["default"], 1, 30)) == 1  # resent on a new socket
    backend.close()
    assert not mine.is_connected
    admin.close()


def test_the_lane_pings_a_connection_only_after_it_sat_unused(own_server: servers.Server) -> None:
    """Each reply read moves redis-py's health-check clock on, as its own read does: a
    busy connection is not pinged, one unused past health_check_interval (15 s) is, and
    the PING finds a socket the server closed, so the call goes on a new one."""
    import redis

    backend = RedisBackend(f"redis://127.0.0.1:{own_server.port}/0", prefix="ping")
    admin = redis.Redis(port=own_server.port, decode_responses=True)
    try:
        backend.enqueue([NewJob("t", "default", "[]")])
        conn = backend._lane._connection() if backend._lane is not None else None
        assert conn is not None and conn.next_health_check > time.monotonic() + 10

        def pings() -> int:
            return int(admin.info("commandstats").get("cmdstat_ping", {}).get("calls", 0))

        before = pings()
        for _ in range(20):
            conn.next_health_check = time.monotonic() + 1.0  # due in a second: each call moves it on
            backend.enqueue([NewJob("t", "default", "[]")])
            assert conn.next_health_check > time.monotonic() + 10
        client_id = backend._lane.command("CLIENT", "ID")  # type: ignore[union-attr]
        assert pings() == before
        admin.client_kill_filter(_id=client_id)  # the server closes it, as an idle timeout would
        conn.next_health_check = 0.0  # as if 15 s passed unused
        backend.enqueue([NewJob("t", "default", "[]")])
        # The PING on the closed socket never arrived; redis-py's retry sent one on a new socket.
        assert pings() == before + 1
        assert admin.zcard("ping:{default}:queued") == 22
    finally:
        backend.close()
        admin.close()


def test_read_many_answers_in_order_and_keeps_the_socket_in_step(local_url: str) -> None:
    """Reads in one write (get, list_jobs, counts): an error reply in the middle is raised
    only after every reply is read, so the next call's replies are its own; sent again
    after the server dropped the socket."""
    import redis

    backend = RedisBackend(local_url, prefix="many")
    lane = backend._lane
    assert lane is not None
    ids = [e.id for e in backend.enqueue([NewJob("t", "default", f"[{i}]") for i in range(3)])]
    assert lane.read_many([("ZCARD", "many:{default}:queued"), ("EXISTS", "many:{default}:paused")]) == [3, 0]
    with pytest.raises(redis.ResponseError):
        lane.read_many([("HGET", "many:{default}:j:1", "task"), ("ZCARD", "many:{default}:j:1"), ("PING",)])
    assert lane.read_many([("HGET", "many:{default}:j:2", "payload")]) == ["[1]"]
    admin = redis.Redis.from_url(local_url, decode_responses=True)
    admin.client_kill_filter(_id=lane.command("CLIENT", "ID"))
    records = backend.get([*ids, "default:404"])
    assert [r.payload if r else None for r in records] == ["[0]", "[1]", "[2]", None]
    admin.close()
    backend.close()


def test_enqueue_while_redis_is_down_fails_within_its_timeout(own_server: servers.Server) -> None:
    app = Conveyor(f"redis://127.0.0.1:{own_server.port}/0?timeout=1", prefix="down")
    job = app.enqueue("t.any", 1)
    own_server.stop()
    started = time.monotonic()
    with pytest.raises(BackendUnavailable, match=f"127.0.0.1:{own_server.port}"):
        app.enqueue("t.any", 2)
    assert time.monotonic() - started < 5
    own_server.start()
    assert app.get_job(job.id).state is JobState.QUEUED  # AOF kept the first job
    assert len(app.jobs()) == 1  # and the failed enqueue stored nothing
    app.close()


def test_an_enqueue_during_a_restart_waits_it_out(own_server: servers.Server) -> None:
    """A producer's call is sent again until the URL's timeout (see lane.resend_pauses):
    a server down for a moment costs it the moment, not a BackendUnavailable."""
    app = Conveyor(f"redis://127.0.0.1:{own_server.port}/0?timeout=20", prefix="down")
    before = app.enqueue("t.any", 1)
    own_server.stop()
    restart = threading.Timer(0.5, own_server.start)  # down half a second, then loading its AOF
    restart.start()
    try:
        during = app.enqueue("t.any", 2)
    finally:
        restart.join(30)
    assert [app.get_job(j.id).args for j in (before, during)] == [[1], [2]]
    assert len(app.jobs()) == 2  # stored once
    app.close()


def test_a_wrong_password_is_refused_at_once_not_waited_on(tmp_path: Path) -> None:
    """Waiting cures a restart, not a configuration: no resends until the timeout."""
    servers.need_binaries()
    guarded = servers.server(tmp_path / "guarded", password="right")
    app = Conveyor(f"redis://:wrong@127.0.0.1:{guarded.port}/0?timeout=20", prefix="guarded")
    started = time.monotonic()
    with pytest.raises(BackendUnavailable, match="(?i)password") as refused:
        app.enqueue("t.any", 1)
    assert time.monotonic() - started < 5, "resent until the timeout"
    assert "wrong" not in str(refused.value)
    app.close()
    guarded.stop()


@pytest.mark.parametrize(("sleep", "concurrency"), [(0.01, 10), (0.03, 40)], ids=["short", "long"])
def test_workers_ride_out_a_redis_restart_and_lose_nothing(
    own_server: servers.Server,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    sleep: float,
    concurrency: int,
) -> None:
    """Long jobs (30 ms) claim in parts (see Workers in the README), short ones whole."""
    app = Conveyor(f"redis://127.0.0.1:{own_server.port}/0?timeout=1", prefix="restart")
    planned = spy_part_sizes(monkeypatch)

    @app.task(retries=0)
    async def work(i: int) -> int:
        await asyncio.sleep(sleep)
        return i

    stored = []
    with caplog.at_level(logging.WARNING), running(app, concurrency=concurrency, lease_timeout=5):
        stored += work.enqueue_many([(i,) for i in range(100)])
        eventually(lambda: any(j.refresh().state is JobState.COMPLETED for j in stored))
        own_server.stop()  # SIGKILL: only what the AOF holds survives
        eventually(lambda: "Redis" in caplog.text and "Connection" in caplog.text, timeout=10)
        own_server.start()
        stored += work.enqueue_many([(i,) for i in range(100, 150)])
        results = [job.result(timeout=30) for job in stored]
    assert results == list(range(150))
    assert bool(planned) is (sleep > 0.02)
    app.close()


def test_an_outage_is_told_once_when_it_begins_and_once_when_it_ends(
    own_server: servers.Server, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The wake-up connection's reconnects (two a second) are told once too."""
    app = Conveyor(f"redis://127.0.0.1:{own_server.port}/0?timeout=1", prefix="quiet")
    said = rides_out_an_outage_quietly(app, caplog, monkeypatch, own_server.stop, own_server.start)
    eventually(lambda: "Redis wake-up connection back after" in caplog.text)
    assert sum(m.startswith("Redis wake-up connection lost") for m in said) == 1, said
    app.close()


def test_an_evicting_server_is_refused_at_worker_start(tmp_path: Path) -> None:
    servers.need_binaries()
    server = servers.server(tmp_path / "lru", "--maxmemory", "100mb", "--maxmemory-policy", "allkeys-lru")
    url = f"redis://127.0.0.1:{server.port}/0"
    try:
        refused = _worker_cli(url)
        assert refused.returncode == 1
        assert "maxmemory-policy allkeys-lru" in refused.stderr and "noeviction" in refused.stderr
        assert "Traceback" not in refused.stderr
        allowed = _worker_cli(url + "?allow_eviction=1")
        assert allowed.returncode == 0, allowed.stderr
    finally:
        server.stop()


def test_an_acl_user_limited_to_the_prefix_runs_everything_and_others_are_told_why(tmp_path: Path) -> None:
    """Every key and channel starts with the prefix: a user allowed `~app:* &app:*`
    without dangerous commands (INFO among them) enqueues and works. Under another
    prefix the error says what to allow, not only Redis's "no permissions"."""
    servers.need_binaries()
    server = servers.server(tmp_path / "acl")
    server.client().acl_setuser(
        "app", enabled=True, passwords=["+secret"], keys=["app:*"], channels=["app:*"],
        commands=["+@all", "-@dangerous"],
    )  # fmt: skip
    url = f"redis://app:secret@127.0.0.1:{server.port}/0"
    allowed, other = Conveyor(url, prefix="app"), Conveyor(url, prefix="billing")
    try:
        runs_a_job(allowed)
        with pytest.raises(BackendUnavailable, match=r"allow `~<prefix>:\* &<prefix>:\*`.*no permissions"):
            other.enqueue("double", 1)
    finally:
        allowed.close()
        other.close()
        server.stop()


def test_a_worker_started_before_its_redis_waits_and_then_works(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A container that starts before its Redis: the worker keeps trying and runs jobs
    once the server is up, no restart needed."""
    servers.need_binaries()
    port = servers.free_port()
    late = servers.Server(tmp_path / "late", port, ["--port", str(port), "--save", "", "--appendonly", "no"])
    app = Conveyor(f"redis://127.0.0.1:{port}/0?timeout=1")
    try:
        waits_for_its_engine(app, caplog, late.start)
    finally:
        app.close()
        late.stop()


def test_a_full_server_refuses_enqueues_plainly_and_workers_ride_it_out(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """At maxmemory with noeviction, an enqueue fails saying so and stores nothing; a
    running worker holds no more jobs than it runs while its results are refused (see
    also tests/faults), and finishes everything once memory is raised."""
    servers.need_binaries()
    server = servers.server(tmp_path / "full", "--maxmemory-policy", "noeviction")
    client = server.client()
    app = Conveyor(f"redis://127.0.0.1:{server.port}/0")

    @app.task
    async def nap(i: int) -> int:
        await asyncio.sleep(0.02)
        return i

    jobs = nap.enqueue_many([(i,) for i in range(600)])
    try:
        with running(app, concurrency=10) as worker:
            eventually(lambda: worker.processed >= 20, message="the worker under way")
            # Below what it holds: Redis checks only before a script's first write, so a
            # limit just above could let a whole batch in before it is crossed.
            client.config_set("maxmemory", client.info("memory")["used_memory"] // 2)
            keys = client.dbsize()
            with pytest.raises(BackendUnavailable) as refused:
                nap.enqueue_many([(i,) for i in range(2_000)])
            assert client.dbsize() == keys  # the script refused before its first write
            assert "out of memory: the server is at its maxmemory and refuses writes" in str(refused.value)
            assert "conveyor purge" in str(refused.value)
            eventually(lambda: "no new claims meanwhile" in caplog.text, message="a refused store")
            watch_until = time.monotonic() + 0.5  # a span in which the old worker took hundreds
            while time.monotonic() < watch_until:
                assert app.backend.counts()["default"].get(JobState.ACTIVE, 0) <= 30
            client.config_set("maxmemory", 0)
            assert [job.result(timeout=30) for job in jobs] == list(range(600))
        assert sum(app.backend.counts()["default"].values()) == 600  # the refused batch left nothing
    finally:
        app.close()
        server.stop()


def test_a_failover_behind_one_address_reconnects_to_the_new_primary(tmp_path: Path) -> None:
    """ElastiCache's primary endpoint is a DNS name that moves to the new primary, while
    connections already open stay on the old one, now a replica that answers READONLY.
    Every connection that hears READONLY reconnects (the hot path's, the pool's) and
    the call is sent once more: producers and a running worker carry on, no process
    restart. Until 2026-12-06 they kept the old sockets and failed until restarted."""
    servers.need_binaries()
    first = servers.server(tmp_path / "first", "--repl-diskless-sync-delay", "0")
    second = servers.server(
        tmp_path / "second", "--replicaof", "127.0.0.1", str(first.port), "--repl-diskless-sync-delay", "0"
    )
    servers.wait_until(lambda: _linked(second), "replication to the second server")
    address = servers.Forwarder(first.port)
    app = Conveyor(f"redis://127.0.0.1:{address.port}/0?timeout=2")

    @app.task
    async def double(i: int) -> int:
        return 2 * i

    try:
        with running(app, concurrency=4):
            assert double.enqueue(1).result(timeout=10) == 2  # the worker's sockets are open
            second.client().replicaof("NO", "ONE")
            first.client().replicaof("127.0.0.1", str(second.port))
            address.point_at(second.port)
            servers.wait_until(lambda: _linked(first), "the old primary following the new one")
            jobs = double.enqueue_many([(i,) for i in range(50)])  # on a socket to the replica
            jobs.append(double.enqueue(50))
            app.pause("other")  # through redis-py's pool
            assert [job.result(timeout=20) for job in jobs] == [2 * i for i in range(51)]
        assert second.client().exists("conveyor:{other}:paused") == 1
    finally:
        app.close()
        address.close()
        second.stop()
        first.stop()


def _linked(server: servers.Server) -> bool:
    return server.client().info("replication").get("master_link_status") == "up"


def _worker_cli(url: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CONVEYOR_URL": url, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "conveyor", "worker", "tests.crash.crashapp:app", "--burst"]
    return subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)


def test_a_sentinel_failover_under_a_running_worker_loses_no_replicated_job(tmp_path: Path) -> None:
    servers.need_binaries()
    deployment = servers.sentinels(tmp_path / "failover")
    try:
        app = Conveyor(deployment.url + "?timeout=2", prefix="failover")

        @app.task(retries=0)
        async def work(i: int) -> int:
            return i

        with running(app, concurrency=5, lease_timeout=5):
            before = work.enqueue_many([(i,) for i in range(50)])
            assert [job.result(timeout=20) for job in before] == list(range(50))
            queued = work.options(delay=1).enqueue_many([(i,) for i in range(50, 100)])
            # Replication is asynchronous: wait until the replica holds these jobs, as WAIT
            # does in production when an enqueue must survive a failover.
            assert deployment.primary.client().execute_command("WAIT", 1, 5000) == 1  # type: ignore[no-untyped-call]
            deployment.primary.stop()  # SIGKILL; the Sentinels promote the replica
            results = [job.result(timeout=40) for job in queued]
            after = work.enqueue(100).result(timeout=20)
        assert results == list(range(50, 100)) and after == 100
        app.close()
    finally:
        deployment.stop()


def test_apps_on_two_databases_with_one_prefix_do_not_wake_each_other(
    redis_deployments: Callable[[str], Any],
) -> None:
    """Pub/sub spans a server's databases: the channels carry the database's number, so an
    enqueue on database 2 does not wake database 0's waiters, and one on 0 does. A server
    of this test's own (Redis 6.2), as parallel test processes use the machine's databases."""
    server = redis_deployments("redis-6.2")
    server.flush()
    first, second = (RedisBackend(server.url.replace("/0", f"/{db}"), prefix="same") for db in (0, 2))
    job = NewJob("t", "default", "[]")
    try:
        for producer, woken in ((second, False), (first, True)):
            timer = threading.Timer(0.05, lambda producer=producer: producer.enqueue([job]))
            timer.start()
            started = time.monotonic()
            assert first.wait_for_work(["default"], 1.0) is woken
            assert (time.monotonic() - started < 0.5) is woken
            timer.join()
    finally:
        first.close()
        second.close()
