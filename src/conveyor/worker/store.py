"""Storing a worker's finished attempts, one batch at a time (the pump starts each).

- While the engine is out the batch is sent again, backing off 0.1 s doubling to 5 s,
  and the worker claims nothing meanwhile (`Storer.refused`).
- A batch the engine refuses for what it holds is stored one outcome at a time, and an
  outcome refused alone goes without what the engine could not take (see _stripped).
- A batch sent again may have been stored by an earlier try whose reply was lost: its
  jobs answer "lease lost", and are read back (see Storer._stored_before).
- Then each stored outcome's job is forgotten, its event emitted, and the flow parents
  that may move on are settled.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import logging
import time
from collections.abc import Callable, Iterable

from conveyor.backends.base import AsyncWork, Backend, Fence, Outcome, OutcomeKind
from conveyor.errors import BackendUnavailable
from conveyor.events import Entry, JobEvents
from conveyor.flows import settle
from conveyor.job import JobRecord, JobState
from conveyor.outage import OutageLog
from conveyor.worker._aio import in_thread
from conveyor.worker.executor import Running

log = logging.getLogger("conveyor.worker")  # the worker's: operators filter its lines by it
MAX_BACKOFF = 5.0  # longest pause after an engine error before trying again
_ENDED = (OutcomeKind.COMPLETED, OutcomeKind.DEAD)  # outcomes that let a flow parent move on
_EVENT_OF = {OutcomeKind.COMPLETED: "completed", OutcomeKind.RETRY: "retried", OutcomeKind.DEAD: "dead"}
# Per outcome: the states it leaves its job in (a job due now may be queued at once), and
# the attempt count it leaves against the attempt run: snoozed and released jobs give
# their attempt back, which the lease recovery never does.
_STORED_AS = {
    OutcomeKind.COMPLETED: ((JobState.COMPLETED,), 0),
    OutcomeKind.RETRY: ((JobState.SCHEDULED, JobState.QUEUED), 0),
    OutcomeKind.DEAD: ((JobState.DEAD,), 0),
    OutcomeKind.SNOOZED: ((JobState.SCHEDULED, JobState.QUEUED), -1),
    OutcomeKind.RELEASED: ((JobState.QUEUED,), -1),
}
_FAILED = (OutcomeKind.RETRY, OutcomeKind.DEAD)
_REFUSED = "StoreRefused"  # an attempt's error when the engine would not store its outcome

Unstored = dict[tuple[str, str], Running]  # finished jobs by id and lease token (see Worker)
Fences = tuple[list[Fence], bool]  # the engine's answer per outcome; whether it was sent again


def _stripped(outcome: Outcome, refusal: Exception) -> Outcome | None:
    """The outcome without what the engine could refuse (result, traceback, logs, error);
    None when it holds nothing more to take out. A completion becomes a death, since
    its result is lost; a retry stays one, keeping the attempts the job has left."""
    if outcome.error is not None and outcome.error.startswith(_REFUSED):
        return None  # stripped already
    if outcome.kind in (OutcomeKind.RELEASED, OutcomeKind.SNOOZED):  # they hold only logs
        return dataclasses.replace(outcome, logs=[]) if outcome.logs else None
    return dataclasses.replace(
        outcome,
        kind=OutcomeKind.DEAD if outcome.kind is OutcomeKind.COMPLETED else outcome.kind,
        result=None, traceback=None, logs=[],
        error=f"{_REFUSED}: the engine could not store this attempt's outcome: {ascii(refusal)[:500]}",
    )  # fmt: skip


def _stored_as(outcome: Outcome, record: JobRecord, attempt: int) -> bool:
    """Is the job where this outcome, stored at this attempt, would have left it?"""
    states, counted = _STORED_AS[outcome.kind]
    if record.state not in states or record.attempt != attempt + counted:
        return False
    return outcome.kind not in _FAILED or record.error == outcome.error


@dataclasses.dataclass
class Storer:
    """One worker's store of outcomes: on the engine's async path where it has one, else
    in the store thread. `unstored` is the worker's own (the lease keeper renews what it
    holds); `hard_stop` says whether to give up on an engine that is out."""

    backend: Backend
    aio: AsyncWork | None
    thread: concurrent.futures.ThreadPoolExecutor
    worker_id: str
    unstored: Unstored
    outage: OutageLog
    emit: Callable[[Iterable[Entry]], None] | None
    hard_stop: Callable[[], bool]
    # A store is being sent again after an engine error. The worker claims nothing
    # meanwhile: the jobs would run while their results could not be stored either.
    # Redis at maxmemory took small claims and refused the stores: a worker of 10 slots
    # held 970 jobs.
    refused: bool = False

    async def store(self, outcomes: list[Outcome]) -> bool:
        """Store the batch, sent again while the engine is out, then the events and flow
        parents of what it stored. False: a hard stop gave up on it (the jobs run again
        once their lease expires)."""
        sent = await self._send(outcomes)
        if sent is None:
            return False
        fences, retried = sent
        if retried and Fence.LEASE_LOST in fences:
            fences = await self._stored_before(outcomes, fences)
        parents = self._account(outcomes, fences)
        if parents:
            await self._settle(parents)
        return True

    async def _send(self, outcomes: list[Outcome]) -> Fences | None:
        """The engine's fences for the outcomes, and whether the store had to be sent
        again; None if a hard stop came while the engine was out."""
        backoff, retried = 0.1, False
        while True:
            try:
                if self.aio is not None:
                    fences = await self.aio.finish(outcomes)
                else:
                    fences = await in_thread(self.thread, self.backend.finish, outcomes)
                self.refused = False  # the batch's end wakes the pump to claim again
                self.outage.worked("store")
                return fences, retried
            except BackendUnavailable as exc:
                retried = self.refused = True
                if self.hard_stop():
                    log.error(
                        "engine unreachable at hard stop; %d result(s) not stored, those jobs "
                        "run again once their lease expires: %s",
                        len(outcomes),
                        exc,
                    )
                    self.unstored.clear()
                    return None
                if self.outage.failed("store", exc):
                    log.error(
                        "could not store %d result(s), retrying (backing off up to %.0fs); no new "
                        "claims meanwhile: %s", len(outcomes), MAX_BACKOFF, exc,
                    )  # fmt: skip
                await asyncio.sleep(backoff)
                backoff = min(MAX_BACKOFF, backoff * 2)
            except Exception as exc:  # the engine refused what the batch holds, not the call
                return await self._refused_batch(outcomes, exc, retried)

    async def _refused_batch(self, outcomes: list[Outcome], exc: Exception, retried: bool) -> Fences | None:
        """A batch the engine refused for what it holds: stored one outcome at a time, and
        an outcome refused alone is stored without what the engine could not take (see
        _stripped); `outcomes` is updated to what was stored. Until 2026-12-07 the
        worker stopped here: a NUL in one job's error, which PostgreSQL cannot hold,
        stopped each worker that took that job."""
        if len(outcomes) > 1:
            log.error(
                "the engine refused a batch of %d result(s); storing them one by one: %r", len(outcomes), exc
            )
            fences: list[Fence] = []
            for at in range(len(outcomes)):
                alone = [outcomes[at]]
                sent = await self._send(alone)
                if sent is None:
                    return None
                outcomes[at] = alone[0]
                fences += sent[0]
                retried = retried or sent[1]
            return fences, retried
        outcome = outcomes[0]
        bare = _stripped(outcome, exc)
        if bare is None:
            log.error(
                "job %s: its outcome was refused without its contents too; it runs again after "
                "its lease: %r", outcome.job_id, exc,
            )  # fmt: skip
            return [Fence.LEASE_LOST], retried
        log.error(
            "job %s: the engine refused its outcome; storing it as %s, without its result, "
            "traceback and logs: %r", outcome.job_id, bare.kind.value, exc,
        )  # fmt: skip
        outcomes[0] = bare
        return await self._send(outcomes)

    def _account(self, outcomes: list[Outcome], fences: list[Fence]) -> list[str]:
        """Forget the stored outcomes, warn of the discarded ones, emit the events of those
        stored; returns the flow parents that may now move on."""
        parents: list[str] = []
        # Events grouped by everything but the job: one entry for most of a batch.
        ended: dict[tuple[str, str, str, int, str | None], list[str]] | None = (
            None if self.emit is None else {}
        )
        now = time.time()
        for outcome, fence in zip(outcomes, fences, strict=True):
            job = self.unstored.pop((outcome.job_id, outcome.token), None)
            if fence is Fence.LEASE_LOST:
                log.warning(
                    "job %s: result discarded, its lease was lost (cancelled, or expired and "
                    "taken over by another worker)",
                    outcome.job_id,
                )
            if job is not None and job.record.parent_id and fence is Fence.OK and outcome.kind in _ENDED:
                parents.append(job.record.parent_id)
            kind = _EVENT_OF.get(outcome.kind)
            if ended is not None and job is not None and fence is Fence.OK and kind is not None:
                r = job.record
                ended.setdefault((kind, r.queue, r.task, r.attempt, outcome.error), []).append(r.id)
        if self.emit is not None and ended:
            who = self.worker_id
            self.emit(
                JobEvents(kind, ids, queue, task, now, {"attempt": attempt, "worker": who, "error": error})
                for (kind, queue, task, attempt, error), ids in ended.items()
            )
        return parents

    async def _stored_before(self, outcomes: list[Outcome], fences: list[Fence]) -> list[Fence]:
        """Fences for a store that was sent again after an engine error: an earlier try
        may have committed and lost its reply, and then its jobs answer "lease lost" now.
        An outcome whose job is in the state it leads to, at the attempt count it leaves,
        was that try's: only the lease holder ends an attempt, a later claim would have
        counted another one, and the lease recovery, the only other writer of a failure at
        that attempt, stores its own error (LEASE_EXPIRED). So it counts as stored: its
        event and flow parent are not lost, and no "discarded" warning misleads. Redis
        answers a resent batch itself (see finish.lua). A job claimed again before this
        read stays as answered."""
        ran = {
            i: job.record.attempt
            for i, (o, f) in enumerate(zip(outcomes, fences, strict=True))
            if f is Fence.LEASE_LOST
            if (job := self.unstored.get((o.job_id, o.token))) is not None
        }
        if not ran:
            return fences
        try:
            records = await in_thread(self.thread, self.backend.get, [outcomes[i].job_id for i in ran])
        except BackendUnavailable:
            return fences  # as answered: the results are logged as discarded
        except Exception:  # a row it cannot read: as answered too, and the worker goes on
            log.exception("could not read back %d job(s) whose store was sent again", len(ran))
            return fences
        fixed = list(fences)
        for (i, attempt), record in zip(ran.items(), records, strict=True):
            if record is not None and _stored_as(outcomes[i], record, attempt):
                fixed[i] = Fence.OK
        return fixed

    async def _settle(self, parents: list[str]) -> None:
        """Move on the flow jobs waiting for jobs that just ended; maintenance retries later."""
        try:
            await in_thread(self.thread, settle, self.backend, parents)
        except BackendUnavailable as exc:
            log.error("could not settle %d flow job(s); maintenance will: %s", len(parents), exc)
        except Exception:  # a parent row it cannot read: raised, it stopped the worker
            log.exception("could not settle %d flow job(s); maintenance will try again", len(parents))
