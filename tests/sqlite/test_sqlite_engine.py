"""What is particular to the SQLite engine: URLs, migrations, WAL, prefixes."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from conveyor import ConfigError, Conveyor
from conveyor.backends.sqlite.backend import SQLiteBackend, parse_sqlite_url


def test_urls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert parse_sqlite_url("sqlite:///jobs.db") == "jobs.db"
    assert parse_sqlite_url(f"sqlite:///{tmp_path}/a.db") == f"{tmp_path}/a.db"
    with pytest.raises(ConfigError, match="folder '/no/such' does not exist"):
        parse_sqlite_url("sqlite:////no/such/a.db")
    with pytest.raises(ConfigError, match="names no file"):
        parse_sqlite_url("sqlite://")


def test_migrations_apply_once_and_record_the_version(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'm.db'}"
    from conveyor.backends._sql import load_migrations

    latest = len(load_migrations("conveyor.backends.sqlite"))
    first = SQLiteBackend(url, prefix="p")
    assert first.schema_version() == latest >= 2
    first.close()
    second = SQLiteBackend(url, prefix="p")  # re-opening applies nothing twice
    assert second.schema_version() == latest
    second.close()
    conn = sqlite3.connect(tmp_path / "m.db")
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("SELECT count(*) FROM p_migrations").fetchone()[0] == latest
    conn.close()


def test_prefixes_keep_apps_apart_in_one_file(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    dev, prod = Conveyor(url, prefix="dev"), Conveyor(url, prefix="prod")
    dev.enqueue("t.x")
    assert len(dev.jobs()) == 1 and prod.jobs() == []
    dev.close()
    prod.close()


def test_ids_are_never_reused_after_a_purge(tmp_path: Path) -> None:
    app = Conveyor(f"sqlite:///{tmp_path / 'ids.db'}")
    first = app.enqueue("t.x")
    first.cancel()
    assert app.backend.purge() == 1
    assert int(app.enqueue("t.x").id) > int(first.id)
    app.close()


def test_a_locked_database_is_a_clear_backend_error(tmp_path: Path) -> None:
    from conveyor import BackendUnavailable
    from conveyor.backends.sqlite import backend as module

    path = tmp_path / "locked.db"
    app = Conveyor(f"sqlite:///{path}")
    app.enqueue("t.x")
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    original = module._BUSY_TIMEOUT_MS
    try:
        module._BUSY_TIMEOUT_MS = 50
        fresh = Conveyor(f"sqlite:///{path}")
        with pytest.raises(BackendUnavailable, match=f"SQLite database {path}: database is locked"):
            fresh.get_job("1")
    finally:
        module._BUSY_TIMEOUT_MS = original
        blocker.execute("ROLLBACK")
        blocker.close()
        app.close()


def test_bulk_batches_keep_order_ids_and_mixed_options(tmp_path: Path) -> None:
    app = Conveyor(f"sqlite:///{tmp_path / 'bulk.db'}")
    ref = app.ref("t.x")
    calls = (
        [ref.s(i) for i in range(30)] + [ref.options(queue="other").s(99)] + [ref.s(i) for i in range(30, 45)]
    )
    jobs = ref.enqueue_many(calls)
    ids = [int(j.id) for j in jobs]
    assert ids == list(range(ids[0], ids[0] + 46))
    stored = {j.id: j for j in app.jobs(limit=100)}
    assert [stored[j.id].args for j in jobs] == [[i] for i in range(30)] + [[99]] + [
        [i] for i in range(30, 45)
    ]
    assert stored[jobs[30].id].queue == "other"
    app.close()


def test_bulk_with_a_serializer_that_is_not_json(tmp_path: Path) -> None:
    class Reversed:
        def dumps(self, value: object) -> str:
            import json

            return json.dumps(value)[::-1]

        def loads(self, text: str) -> object:
            import json

            return json.loads(text[::-1])

    app = Conveyor(f"sqlite:///{tmp_path / 'custom.db'}", serializer=Reversed())
    jobs = app.ref("t.x").enqueue_many([(i,) for i in range(20)])
    assert [app.get_job(j.id).args for j in jobs] == [[i] for i in range(20)]
    app.close()


def test_the_column_list_is_in_job_record_field_order() -> None:
    from dataclasses import fields

    from conveyor.backends._sql import load_queries
    from conveyor.job import JobRecord

    columns = load_queries("conveyor.backends.sqlite")["columns"].replace("\n", " ").split(",")
    assert [c.strip() for c in columns] == [f.name for f in fields(JobRecord)]


def test_maintain_checkpoints_the_wal_into_the_database_file(tmp_path: Path) -> None:
    app = Conveyor(f"sqlite:///{tmp_path / 'wal.db'}")
    app.ref("t.x").enqueue_many([(i,) for i in range(2000)])
    before = (tmp_path / "wal.db").stat().st_size  # the jobs are still only in the WAL
    app.backend.maintain()
    assert (tmp_path / "wal.db").stat().st_size > before + 100_000
    app.close()
