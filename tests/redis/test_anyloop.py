"""The producers' async path on Redis (anyloop.py): a loop's own socket calls on
redis-py's connections, healed and fenced as the sync lane is."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any, cast

import pytest

import redis
from conveyor import BackendUnavailable, Conveyor
from conveyor.backends.redis.backend import RedisBackend
from tests.redis import servers


def _app(server: servers.Server, timeout: float = 2.0) -> Conveyor:
    app = Conveyor(f"redis://127.0.0.1:{server.port}/0?timeout={timeout:g}", prefix="aio")
    app.enqueue("t.opened", 0)  # the engine opened (the first call from a loop would open it in a thread)
    return app


def _lane(app: Conveyor) -> object:
    backend = app.backend
    assert isinstance(backend, RedisBackend) and backend._anyloop is not None
    return backend._anyloop


def test_one_connection_serves_every_loop_and_heals(own_server: servers.Server) -> None:
    """Calls from new loops reuse the idle connection; one the server dropped is opened
    again and the call sent once more; a flushed script is loaded again."""
    app = _app(own_server)
    lane = _lane(app)
    ids = [asyncio.run(app.aenqueue("t.a", i)).id for i in range(3)]
    assert (lane._open, len(lane._idle)) == (1, 1)  # type: ignore[attr-defined]
    own_server.client().client_kill_filter(_type="normal", skipme=True)  # as a restart or idle timeout would
    ids.append(asyncio.run(app.aenqueue("t.a", 3)).id)
    own_server.client().script_flush()
    ids.append(asyncio.run(app.aenqueue("t.a", 4)).id)
    assert [app.get_job(i).args for i in ids] == [[i] for i in range(5)]
    assert len(app.jobs(limit=10)) == 6  # each stored once, beside the opening job
    app.close()
    assert lane._open == 0  # type: ignore[attr-defined]


def test_while_redis_is_down_aenqueue_fails_within_its_timeout(own_server: servers.Server) -> None:
    app = _app(own_server, timeout=1)
    first = asyncio.run(app.aenqueue("t.a", 1))
    own_server.stop()
    started = time.monotonic()
    with pytest.raises(BackendUnavailable, match=f"127.0.0.1:{own_server.port}"):
        asyncio.run(app.aenqueue("t.a", 2))
    assert time.monotonic() - started < 5
    own_server.start()
    second = asyncio.run(app.aenqueue("t.a", 3))
    assert [app.get_job(j.id).args for j in (first, second)] == [[1], [3]]
    assert len(app.jobs(limit=10)) == 3  # the failed call stored nothing
    app.close()


def test_a_timed_out_call_is_not_sent_again(own_server: servers.Server) -> None:
    """No reply within the timeout: the script may yet run, so the call is never resent,
    and the next call is on a fresh connection. A paused server drops the command of a
    client that left, so a resend would be the only way "paused" got stored."""
    app = _app(own_server, timeout=1)
    admin = own_server.client()
    admin.client_pause(2000, all=False)  # writes wait
    started = time.monotonic()
    with pytest.raises(BackendUnavailable, match="no reply within 1 s"):
        asyncio.run(app.aenqueue("t.a", "paused"))
    assert time.monotonic() - started < 1.9
    admin.client_unpause()
    after = asyncio.run(app.aenqueue("t.a", "after"))
    assert app.get_job(after.id).args == ["after"]
    payloads = sorted(str(job.args[0]) for job in app.jobs(limit=10) if job.task == "t.a")
    assert payloads == ["after"]
    app.close()


def test_a_cancelled_call_leaves_no_reply_for_the_next(own_server: servers.Server) -> None:
    """A caller cancelled mid-call (a request timeout) leaves a reply unread: that
    connection is closed, so the next call never reads the earlier call's reply."""
    app = _app(own_server)
    lane = _lane(app)
    admin = own_server.client()

    async def cancelled() -> None:
        admin.client_pause(300, all=False)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(app.aenqueue("t.a", "cancelled"), 0.05)

    asyncio.run(cancelled())
    assert lane._open == 0  # type: ignore[attr-defined]
    job = asyncio.run(app.aenqueue("t.a", "next"))
    assert app.get_job(job.id).args == ["next"]
    app.close()


def test_a_server_loading_its_data_is_waited_out_and_never_gives_an_id_that_is_not_one(
    tmp_path: Path,
) -> None:
    """A restarted server answers LOADING to a script while it reads its data. redis-py
    counts that a connection error; the async path once passed it on as the script's
    reply, and aenqueue returned "Redis is loading the dataset in memory" as a job's
    seq (a chaos run of producers through a Redis restart lost 3,500 ids that way).
    Until 2026-12-07 it was BackendUnavailable at once; now the call is sent again until
    the URL's timeout (see lane.resend_pauses), which outlasts this restart."""
    servers.need_binaries()
    server = servers.server(tmp_path / "big", "--enable-debug-command", "yes")
    try:
        _restart_under_aenqueues(server)
    finally:
        server.stop()  # also when it failed: a server left running warns in a later test


def _restart_under_aenqueues(server: servers.Server) -> None:
    app = _app(server, timeout=30)
    asyncio.run(app.aenqueue("t.a", "before"))  # the async path's connection is open
    # SAVE of 2M keys took over server.client()'s 2 s in CI on a loaded machine.
    admin = cast(Any, redis.Redis(port=server.port, socket_timeout=60))
    admin.execute_command("DEBUG", "POPULATE", 2_000_000, "filler")  # about a second to load
    admin.save()
    admin.close()
    server.stop()
    starting = threading.Thread(target=server.start)  # returns once the server answers PING
    starting.start()
    returned: list[str] = []

    async def produce() -> None:
        while starting.is_alive():
            returned.append((await app.aenqueue("t.a", "during")).id)

    asyncio.run(produce())
    starting.join(timeout=30)
    assert returned
    assert all(app.get_job(job_id).args == ["during"] for job_id in returned)
    app.close()


def test_tls_clients_keep_the_threaded_path() -> None:
    """The loop's socket calls refuse an SSLSocket; one server's client connects lazily,
    so no server is needed to see which path it took."""
    backend = RedisBackend("rediss://127.0.0.1:1/0", prefix="tls")
    assert backend._anyloop is None
    backend.close()
