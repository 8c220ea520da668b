"""Workers vacuum the jobs table when its dead rows pile up faster than autovacuum clears them.

A claimed job's entry in the index of queued jobs (`jobs_ready`) stays behind, dead,
until VACUUM removes it, and a queue runs first in, first out, so every claim's index
scan walks over all of its queue's dead entries before the first live one. Measured
here on 2026-12-06: after 220,000 jobs had run through one queue, finding its next job
read 846 index pages (4.2 ms); a drain of 1,000,000 jobs averaged 6,705 jobs/s, and
10,000 more behind them 6,099 and 7,663, against 15,547 on an empty table.

Autovacuum alone cannot keep a busy queue's index small: it looks at each database
at most once a minute (`autovacuum_naptime`), by default only after a fifth of the
table has changed, and some servers (this project's CI among them) run without it. So
each worker checks the table's dead rows once a second, and at `vacuum=` (URL option,
default 50,000, about 25,000 dead index entries: 0.5 ms a claim) runs VACUUM on a
connection of its own. The same 1,000,000-job drain then averaged 15,882 jobs/s, with
17 VACUUMs in its 63 s, each 0.2 to 0.4 s long with a million finished rows in the
table.

SKIP_LOCKED makes a worker skip the VACUUM while another one (or autovacuum) holds the
table's vacuum lock, so workers need no leader. TRUNCATE false keeps VACUUM from taking
the exclusive lock that giving empty pages back to the file system needs, which would
stop claims while it waits.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

import psycopg

log = logging.getLogger("conveyor.postgres")
CHECK_EVERY = 1.0  # seconds between looks at the dead-row count
MOST_WAIT = 64.0  # seconds between VACUUMs that leave the dead rows as many as before


def next_wait(wait: float, still_dead: bool) -> float:
    """Seconds to the next look after a VACUUM. One that left the dead rows at the
    threshold could not remove them (a long transaction's snapshot still sees them), and
    another each second would read the whole table's indexes for nothing: wait twice as
    long each time, up to MOST_WAIT, until one succeeds."""
    return min(wait * 2, MOST_WAIT) if still_dead else CHECK_EVERY


class Vacuumer:
    """A worker's thread that vacuums `table` once `dead_rows()` reaches `threshold`."""

    def __init__(
        self,
        conninfo: str,
        options: dict[str, Any],
        table: str,
        threshold: int,
        dead_rows: Callable[[], int],
    ) -> None:
        self._conninfo, self._options, self._table = conninfo, options, table
        self.threshold = threshold
        self._dead_rows = dead_rows
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        # The thread's own connection, opened at its first VACUUM: a pool of 2 (say) keeps
        # both of its connections for claims and finishes while a VACUUM runs.
        self._conn: psycopg.Connection[Any] | None = None
        self.vacuums = 0  # VACUUMs this worker sent (SKIP_LOCKED may have skipped some)

    def start(self) -> None:
        """Start the thread (once; never with threshold 0)."""
        with self._lock:
            if self._thread is not None or self.threshold <= 0 or self._stop.is_set():
                return
            self._thread = threading.Thread(target=self._run, name="conveyor-vacuum", daemon=True)
            self._thread.start()

    def close(self) -> None:
        """Stop looking; the thread closes its connection as it ends (a VACUUM under way
        finishes first, and nothing waits for it)."""
        with self._lock:
            self._stop.set()
            if self._thread is None:  # a VACUUM asked for directly (tests) had its own
                self._disconnect()

    def _run(self) -> None:
        failing, wait = False, CHECK_EVERY
        try:
            while not self._stop.wait(wait):
                try:
                    if self._dead_rows() < self.threshold:
                        wait = CHECK_EVERY  # cleared, by autovacuum say, after a backing off
                    elif self.vacuum():
                        wait = next_wait(wait, self._dead_rows() >= self.threshold)
                    else:
                        return
                    failing = False
                except (psycopg.Error, OSError) as exc:  # the server restarting, say: try again later
                    if not failing:
                        log.warning("vacuum of the jobs table failed, trying again: %s", exc)
                    failing = True
                    self._disconnect()
        finally:
            self._disconnect()

    def vacuum(self) -> bool:
        """One VACUUM of the table; False if this role may not vacuum it (only its owner,
        or a superuser, may), which is logged once."""
        if self._conn is None or self._conn.closed:
            self._conn = psycopg.connect(self._conninfo, **self._options)
            if not self._may_vacuum(self._conn):
                log.info("not vacuuming %s: only its owner may; autovacuum has to keep it small", self._table)
                return False
        self._conn.execute(f"VACUUM (SKIP_LOCKED, INDEX_CLEANUP ON, TRUNCATE false) {self._table}")
        self.vacuums += 1
        return True

    def _may_vacuum(self, conn: psycopg.Connection[Any]) -> bool:
        sql = "SELECT pg_has_role(current_user, relowner, 'MEMBER') FROM pg_class WHERE oid = %s::regclass"
        row = conn.execute(sql, (self._table,)).fetchone()
        return bool(row and row[0])

    def _disconnect(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
