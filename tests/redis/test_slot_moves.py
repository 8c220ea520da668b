"""A queue's Cluster slot moved to another master. A slot moves one key at a time, so
for a while a queue's keys are split across two nodes: scripts run on the node that
has the slot's importing end and see only the keys that arrived. Claims there leave
jobs whose hash has not arrived where they were, instead of leasing a partial hash
that would block the move and lose the job."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conveyor import Conveyor
from conveyor.job import JobState
from tests.conftest import running
from tests.redis import servers


def _command(client: Any, *args: Any) -> Any:
    return client.execute_command(*args)


class Move:
    """Moving the slot of `{queue}` from its master to another, by hand, as
    `redis-cli --cluster reshard` does: importing and migrating marks, keys sent with
    MIGRATE, then every node told the new owner."""

    def __init__(self, deployment: servers.Cluster, queue: str) -> None:
        self.nodes = {node.port: node.client() for node in deployment.nodes}
        some = next(iter(self.nodes.values()))
        self.slot = _command(some, "CLUSTER KEYSLOT", f"{{{queue}}}")
        owner = next(s[2][1] for s in _command(some, "CLUSTER SLOTS") if s[0] <= self.slot <= s[1])
        self.ids = {port: _command(client, "CLUSTER MYID") for port, client in self.nodes.items()}
        self.source, self.target = owner, next(port for port in self.nodes if port != owner)

    def begin(self) -> None:
        src, dst = self.nodes[self.source], self.nodes[self.target]
        _command(dst, "CLUSTER SETSLOT", self.slot, "IMPORTING", self.ids[self.source])
        _command(src, "CLUSTER SETSLOT", self.slot, "MIGRATING", self.ids[self.target])

    def keys_left(self) -> list[str]:
        keys = _command(self.nodes[self.source], "CLUSTER GETKEYSINSLOT", self.slot, 10_000)
        return [k.decode() if isinstance(k, bytes) else str(k) for k in keys]

    def send(self, keys: list[str]) -> None:
        if keys:
            _command(self.nodes[self.source], "MIGRATE", "127.0.0.1", self.target, "", 0, 5000, "KEYS", *keys)

    def end(self) -> None:
        self.send(self.keys_left())
        for client in self.nodes.values():
            _command(client, "CLUSTER SETSLOT", self.slot, "NODE", self.ids[self.target])


@pytest.fixture
def deployment(tmp_path: Path) -> Iterator[servers.Cluster]:
    servers.need_binaries()
    started = servers.cluster(tmp_path / "cluster")
    try:
        yield started
    finally:
        started.stop()


def test_a_claim_while_the_queue_set_moved_before_its_jobs_leases_none_of_them(
    deployment: servers.Cluster,
) -> None:
    """The worst order: the ready set arrives first, the jobs' hashes last. A claim then
    finds no hash for the jobs it pops: they go back in their place, nothing is written
    for them, the move completes (it used to fail on a partial hash: BUSYKEY), and every
    job runs once afterwards."""
    app = Conveyor(deployment.url, prefix="moving")
    ran: list[int] = []

    @app.task(name="tests.record")
    def record(i: int) -> None:
        ran.append(i)

    jobs = app.ref("tests.record").options(queue="q").enqueue_many([(i,) for i in range(20)])
    move = Move(deployment, "q")
    move.begin()
    move.send([k for k in move.keys_left() if ":j:" not in k])  # the sets first
    claimed: Any = app.backend.claim("w", ["q"], 10, 30)
    assert list(claimed) == [] and claimed.unreadable == []
    move.end()  # no partial hash in the way
    assert app.backend.counts()["q"] == {JobState.QUEUED: 20}
    with running(app, queues=["q"]):
        for job in jobs:
            job.result(timeout=10)
    assert sorted(ran) == list(range(20))
    app.close()


def test_jobs_run_on_after_their_queue_moved(deployment: servers.Cluster) -> None:
    """A move made while the queue has work waiting: the same app (its client still
    maps the slot to the old master) enqueues and claims on the new one."""
    app = Conveyor(deployment.url, prefix="moving")

    @app.task(name="tests.double")
    def double(n: int) -> int:
        return 2 * n

    waiting = [double.options(queue="q").enqueue(i) for i in range(5)]
    move = Move(deployment, "q")
    move.begin()
    move.end()
    with running(app, queues=["q"]):
        assert [job.result(timeout=10) for job in waiting] == [0, 2, 4, 6, 8]
        assert double.options(queue="q").enqueue(21).result(timeout=10) == 42
    assert move.keys_left() == []
    app.close()
