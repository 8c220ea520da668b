"""An enqueue whose connection dropped after it was sent: stored, or not?

The server may have committed the jobs and then lost the reply (it was killed, or the
network dropped), or died before the commit. Until schema version 9 the caller got
BackendUnavailable either way ("the job may exist"): 3-5 of them in each soak run across
an immediate-mode restart. Now every INSERT of an enqueue carries a random id of its call
(`enqueue_call`), and after a drop the client

1. waits, up to the URL's timeout, for a connection (the server may be restarting);
2. waits until the lost call's server process is out of its statement or transaction
   (polled every 20 ms; gone after a restart): until then the outcome is undecided.
   Behind PgBouncer the process is not known (PgBouncer reports a pid of its own), so
   the statements there start with a comment naming the call, and the wait is for no
   session in `pg_stat_activity` to be running one;
3. looks for the call's id among the newest jobs: the ids found are the call's answer;
   none found, the call is sent again on the new connection. A look, or a resend, whose
   own connection drops (a server going down takes the connections it lent with it) is
   made again on another until the timeout has passed: soak runs lost 2 calls in 19
   runs that way before. A resend is waited out and looked for as the call was.

A call of several statements (unique keys, flows, a bulk enqueue of more than 10,000
jobs) runs in a transaction, and is settled the same way: all its jobs or none are
found. Its jobs that a unique key matched to a live job store nothing to find; their
answer is that job, looked up again (see answered). Behind PgBouncer its BEGIN and
COMMIT carry the mark too, so a look during the COMMIT waits for it. An enqueue inside
the caller's own transaction (enqueue_on) is the caller's to settle: it raises.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import psycopg

from conveyor.backends.base import Enqueued, NewJob
from conveyor.backends.postgres.pools import ERRORS, Pool, explained
from conveyor.errors import BackendUnavailable

Conn = psycopg.Connection[tuple[Any, ...]]
Row = tuple[Any, ...]  # a stored job of the lost call: id, queue, unique key (stored_by_call)
T = TypeVar("T")
log = logging.getLogger("conveyor.postgres")
_POLL_SECONDS = 0.02  # between looks at the lost call's server process; it ends in ms
# Before a look made again after its own connection dropped: the pool opens a new one,
# and a server going down takes a few of its lent connections with it.
_LOOK_AGAIN_SECONDS = 0.05
# The look walks the primary key back from the newest job: a resend follows its lost call
# within the timeout, so 100,000 newer jobs (more than one process enqueues in that time)
# bounds it. A look cost 28-38 ms at that depth here; a call not found in it is sent again.
_NEWEST = 100_000


def new_call() -> str:
    """A random id for one enqueue call: 64 bits, unique among the newest jobs."""
    return secrets.token_hex(8)


def marked(call: str, statement: str) -> str:
    """`statement` under a comment naming `call`, which pg_stat_activity shows."""
    return f"/* conveyor call {call} */ {statement}"


@dataclass
class Sending:
    """An enqueue call on its way: the connection and the server process it went to."""

    call: str
    conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any] | None = None
    pid: int = 0

    def on(self, conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any]) -> None:
        """Note the connection before the call is sent (its pid is gone once it drops)."""
        self.conn, self.pid = conn, conn.info.backend_pid

    def lost(self, exc: BaseException) -> bool:
        """Whether `exc` dropped the connection with the call sent: the server may have
        stored it. An error reply (the connection still open) stored nothing."""
        return isinstance(exc, psycopg.OperationalError) and self.conn is not None and self.conn.closed


class Undecided(Exception):
    """Why a lost call's outcome could not be learned."""


def all_stored(expected: int) -> Callable[[Conn, list[Row]], list[str]]:
    """The answer of a call that stores each of its `expected` jobs: their ids."""

    def answer(conn: Conn, rows: list[Row]) -> list[str]:
        if len(rows) != expected:  # one statement stores all or nothing: older ones fell out
            raise Undecided(f"{len(rows)} of its {expected} jobs were found")
        return [str(row[0]) for row in rows]

    return answer


def answered(
    jobs: Sequence[NewJob], rows: list[Row], holder: Callable[[NewJob], str | None]
) -> list[Enqueued]:
    """What a lost transaction of `jobs` answered, from the `rows` it stored (in the order
    it stored them): a job whose unique key matched a live job stored none, and answers
    with that job, `holder(job)`, found again now."""
    out: list[Enqueued] = []
    at = 0
    for job in jobs:
        if at < len(rows) and (job.unique_key is None or tuple(rows[at][1:]) == (job.queue, job.unique_key)):
            out.append(Enqueued(str(rows[at][0]), True))
            at += 1
        elif job.unique_key is None:
            raise Undecided(f"{len(rows)} of its jobs were found, fewer than it stored")
        elif (held := holder(job)) is not None:
            out.append(Enqueued(held, False))
        else:
            raise Undecided(f"the job that unique key {job.unique_key!r} matched has ended since")
    if at != len(rows):
        raise Undecided(f"{len(rows)} jobs were found, more than it stored")
    return out


class LostCalls:
    """Settles lost calls of one backend: its queries, pool, timeout and name."""

    def __init__(
        self, pool: Pool, queries: dict[str, str], timeout: float, where: str, *, by_pid: bool
    ) -> None:
        self._pool, self._q, self._timeout, self._where = pool, queries, timeout, where
        self.by_pid = by_pid  # False behind PgBouncer: statements are marked() instead

    def settle(
        self,
        sending: Sending,
        lost: Exception,
        expected: int,
        answer: Callable[[Conn, list[Row]], T],
        resend: Callable[[Conn], T],
    ) -> T:
        """The lost call's `answer` from the jobs it stored (`expected` at most), or,
        none found, that of its resend. A look whose own connection drops (the server was
        still going down: a connection lent as it died) is made again, on a new one,
        until the timeout has passed; so is one whose resend dropped, which it then waits
        out and looks for as it did for the call."""
        deadline = time.monotonic() + self._timeout
        while True:
            conn: Conn | None = None
            try:
                with self._pool.connection() as conn:  # waits up to the timeout for the server
                    return self._look(conn, sending, expected, answer, resend)
            except Undecided as exc:
                raise self._undecided(lost, str(exc)) from lost
            except ERRORS as exc:
                dropped = isinstance(exc, psycopg.OperationalError) and conn is not None and conn.closed
                if not dropped or time.monotonic() >= deadline:
                    raise self._undecided(lost, explained(exc)) from exc
                time.sleep(_LOOK_AGAIN_SECONDS)

    def _look(
        self,
        conn: Conn,
        sending: Sending,
        expected: int,
        answer: Callable[[Conn, list[Row]], T],
        resend: Callable[[Conn], T],
    ) -> T:
        self._wait_out(conn, sending)
        look = {"call": sending.call, "newest": _NEWEST + expected}
        rows = conn.execute(self._q["stored_by_call"], look).fetchall()
        what = "had stored its jobs" if rows else "had stored nothing: sent again"
        log.info("PostgreSQL at %s: an enqueue's connection dropped after it was sent; %s", self._where, what)
        if rows:
            return answer(conn, rows)
        sending.on(conn)  # the resend carries the call's id: if it drops, the next look waits for it
        return resend(conn)

    def _wait_out(self, conn: Conn, sending: Sending) -> None:
        params: dict[str, int | str]
        if self.by_pid:
            query, params, who = "call_running", {"pid": sending.pid}, f"its server process ({sending.pid})"
        else:
            query, params, who = "call_running_marked", {"mark": marked(sending.call, "%")}, "the server"
        deadline = time.monotonic() + self._timeout
        while conn.execute(self._q[query], params).fetchone() is not None:
            if time.monotonic() >= deadline:
                raise Undecided(f"{who} was still running it after {self._timeout:g}s")
            time.sleep(_POLL_SECONDS)  # no event tells when another session's statement ends

    def _undecided(self, lost: Exception, reason: str) -> BackendUnavailable:
        return BackendUnavailable(
            f"PostgreSQL at {self._where}: the connection dropped after an enqueue was sent "
            f"({explained(lost)}), and whether it stored its jobs could not be learned: "
            f"{reason}; the jobs may exist"
        )
