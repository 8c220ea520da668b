"""Workers vacuum the jobs and events tables when their dead rows pile up faster than
autovacuum clears them.

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
table (at full speed; paced as below, 13,367 jobs/s in a slower hour of the VM).

The events table needs the same: each publish trims the batches past the newest 1,000,
and that DELETE reads every dead row in front of them. With 19,000 dead rows it read
1,118 pages (20 ms) a publish here. Its threshold is EVENTS_DEAD, and its VACUUM is
quick, as it holds 1,000 live rows.

SKIP_LOCKED makes a worker skip the VACUUM while another one (or autovacuum) holds the
table's vacuum lock, so workers need no leader. TRUNCATE false keeps VACUUM from taking
the exclusive lock that giving empty pages back to the file system needs, which would
stop claims while it waits.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from typing import Any

import psycopg

log = logging.getLogger("conveyor.postgres")
CHECK_EVERY = 1.0  # seconds between looks at the dead-row count
EVENTS_DEAD = 1_000  # dead rows at which the events table is vacuumed (see above)
# Autovacuum's defaults since PostgreSQL 12. Latency at 100 jobs/s right after a
# 20,000-job drain, 3 alternating runs: p99 14.85 / 2.78 / 3.34 ms at full speed, 4.79 /
# 3.00 / 3.09 paced; a VACUUM of the jobs table took 0.06-0.08 s against 0.16-0.17 s.
_COST_DELAY_MS, _COST_LIMIT = 2, 200
MOST_WAIT = 64.0  # seconds between VACUUMs that leave the dead rows as many as before


def next_wait(wait: float, still_dead: bool) -> float:
    """Seconds to the next look after a VACUUM. One that left the dead rows at the
    threshold could not remove them (a long transaction's snapshot still sees them), and
    another each second would read the whole table's indexes for nothing: wait twice as
    long each time, up to MOST_WAIT, until one succeeds."""
    return min(wait * 2, MOST_WAIT) if still_dead else CHECK_EVERY


class Vacuumer:
    """A worker's thread that vacuums each table whose dead rows (`dead_rows()`, by
    table) reach its threshold."""

    def __init__(
        self,
        conninfo: str,
        options: dict[str, Any],
        thresholds: Mapping[str, int],
        dead_rows: Callable[[], Mapping[str, int]],
    ) -> None:
        self._conninfo, self._options = conninfo, options
        self.thresholds = {table: n for table, n in thresholds.items() if n > 0}
        self._dead_rows = dead_rows
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        # The thread's own connection, opened at its first VACUUM: a pool of 2 (say) keeps
        # both of its connections for claims and finishes while a VACUUM runs.
        self._conn: psycopg.Connection[Any] | None = None
        self.vacuums = 0  # VACUUMs this worker sent (SKIP_LOCKED may have skipped some)
        self._allowed: set[str] = set()  # tables this role was found to own

    def start(self) -> None:
        """Start the thread (once; never without a threshold)."""
        with self._lock:
            if self._thread is not None or not self.thresholds or self._stop.is_set():
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

    def due(self) -> list[str]:
        """The tables whose dead rows reached their threshold."""
        dead = self._dead_rows()
        return [table for table, n in self.thresholds.items() if dead.get(table, 0) >= n]

    def _run(self) -> None:
        failing, wait = False, CHECK_EVERY
        try:
            while not self._stop.wait(wait):
                try:
                    due = self.due()
                    if not due:
                        wait = CHECK_EVERY  # cleared, by autovacuum say, after a backing off
                    elif all(self.vacuum(table) for table in due):
                        wait = next_wait(wait, bool(self.due()))
                    else:
                        return
                    failing = False
                except (psycopg.Error, OSError) as exc:  # the server restarting, say: try again later
                    if not failing:
                        log.warning("vacuum failed, trying again: %s", exc)
                    failing = True
                    self._disconnect()
        finally:
            self._disconnect()

    def vacuum(self, table: str) -> bool:
        """One VACUUM of `table`; False if this role may not vacuum it (only its owner,
        or a superuser, may), which is logged once."""
        if self._conn is None or self._conn.closed:
            self._conn = psycopg.connect(self._conninfo, **self._options)
            # Paced like autovacuum's defaults, not at full speed as a VACUUM typed by hand
            # runs: a worker's commits wait for the WAL the VACUUM writes meanwhile.
            self._conn.execute(f"SET vacuum_cost_delay = {_COST_DELAY_MS}")
            self._conn.execute(f"SET vacuum_cost_limit = {_COST_LIMIT}")
        if table not in self._allowed:
            if not self._may_vacuum(self._conn, table):
                log.info("not vacuuming %s: only its owner may; autovacuum has to keep it small", table)
                return False
            self._allowed.add(table)
        self._conn.execute(f"VACUUM (SKIP_LOCKED, INDEX_CLEANUP ON, TRUNCATE false) {table}")
        self.vacuums += 1
        return True

    @staticmethod
    def _may_vacuum(conn: psycopg.Connection[Any], table: str) -> bool:
        sql = "SELECT pg_has_role(current_user, relowner, 'MEMBER') FROM pg_class WHERE oid = %s::regclass"
        row = conn.execute(sql, (table,)).fetchone()
        return bool(row and row[0])

    def _disconnect(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
