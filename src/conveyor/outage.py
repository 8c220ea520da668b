"""An engine outage in a worker's log: the first failure of each kind of call as it
happens, then a line a minute while the outage lasts, and a line when the engine
answers again.

Each of a worker's loops (claim, wait, store, lease renewal, maintenance, schedules)
logged every call that failed: a 40 s Redis outage wrote 105 lines, and a long one
buried whatever else the log said. A quiet worker stays quiet, and the operator
still reads when the outage began, what it touched, and how long it lasted.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable

SUMMARY_EVERY = 60.0  # seconds between "still unavailable" lines while an outage lasts
# A kind of call that has not failed for this long no longer keeps an outage open: it
# was not called since (a lease renewal with no job left running), or is called rarely
# (pruning, once a minute). Claims, stores and maintenance retry within 5 s and lease
# renewals within 10 s (a third of the default lease), so one of those still failing
# has failed since.
STALE_AFTER = 15.0


class OutageLog:
    """Failed engine calls of one worker, told once per kind and outage. An outage
    lasts until each kind of call that failed has worked again (or gone stale): Redis
    at maxmemory serves claims and refuses stores, and an outage that any working call
    ended would begin again, and be told again, at each refused store. Thread-safe."""

    def __init__(
        self,
        log: logging.Logger,
        every: float = SUMMARY_EVERY,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._log = log
        self._every = every
        self._clock = clock
        self._lock = threading.Lock()
        self._failing: dict[str, float] = {}  # kind -> when it last failed; empty: no outage
        self._began = 0.0
        self._told: set[str] = set()  # kinds whose first failure this outage was logged
        self._untold: Counter[str] = Counter()  # failures since the last line, by kind
        self._total = 0
        self._line_at = 0.0
        self._latest = ""

    @property
    def ongoing(self) -> bool:
        return bool(self._failing)

    @property
    def failures(self) -> int:
        """Calls failed in this outage so far (0 outside one)."""
        return self._total

    def failed(self, kind: str, exc: BaseException) -> bool:
        """Count a call of `kind` that failed because the engine is unavailable. True:
        the caller logs it, as the outage's first failure of its kind; later ones are
        counted, and summed up every SUMMARY_EVERY seconds."""
        with self._lock:
            now = self._clock()
            if not self._failing:
                self._began = self._line_at = now
            self._failing[kind] = now
            self._total += 1
            self._latest = " ".join(str(exc).split())  # libpq's reasons span lines
            if kind not in self._told:
                self._told.add(kind)
                return True
            self._untold[kind] += 1
            if now - self._line_at < self._every:
                return False
            self._line_at = now
            counts = ", ".join(f"{kind} {n}" for kind, n in self._untold.most_common())
            self._untold.clear()
            lasted, latest = now - self._began, self._latest
        self._log.warning(
            "the engine is still unavailable after %.0fs; failed since the last line: %s; the latest: %s",
            lasted, counts, latest,
        )  # fmt: skip
        return False

    def worked(self, kind: str) -> None:
        """A call of `kind` went through: once no kind is failing, the outage is over,
        and said so."""
        if not self._failing:  # every claim calls this: no lock unless it matters
            return
        with self._lock:
            now = self._clock()
            self._failing.pop(kind, None)
            for other, at in list(self._failing.items()):
                if now - at >= STALE_AFTER:
                    del self._failing[other]
            if self._failing:
                return
            lasted, total = now - self._began, self._total
            self._total, self._latest = 0, ""
            self._told.clear()
            self._untold.clear()
        self._log.warning("the engine answers again after %.1fs; %d call(s) failed meanwhile", lasted, total)
