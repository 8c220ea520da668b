"""Forward-only schema migrations, applied under an advisory lock.

Each `migrations/NNNN_name.sql` runs once per schema, in one transaction with its
bookkeeping row, so a failed migration leaves nothing half-applied. The lock makes
concurrent `conveyor migrate` runs (or workers started with `migrate=1`) queue up
instead of racing: the second finds the work done.

A migration that only adds (a nullable column, an index, a function) may say so in a
line `-- Readable from version N`: a Conveyor that ships version N or later then keeps
starting on a schema with it applied (recorded as `readers_from`, from version 9 on).
So an upgrade can migrate first and roll the new code out after, while processes of
the old code restart. A schema with a newer migration that does not say so is refused.
"""

from __future__ import annotations

import re
import time
from typing import Any

import psycopg
from psycopg import sql
from psycopg.errors import InsufficientPrivilege

from conveyor.backends._sql import load_migrations
from conveyor.backends.postgres.pools import GRANTS
from conveyor.errors import ConfigError

_PACKAGE = "conveyor.backends.postgres"
_READABLE = re.compile(r"^-- Readable from version (\d+)\b", re.MULTILINE)


def latest_version() -> int:
    """The newest migration this Conveyor ships."""
    return max(version for version, _, _ in load_migrations(_PACKAGE))


def readable_from(script: str) -> int | None:
    """The oldest version whose Conveyors still run once `script` is applied, if it says."""
    match = _READABLE.search(script)
    return int(match.group(1)) if match else None


def schema_version(conn: psycopg.Connection[tuple[Any, ...]], schema: str) -> int:
    """The highest migration applied to `schema`; 0 when it has none."""
    exists = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (f"{schema}.migrations",)).fetchone()
    if not exists or not exists[0]:
        return 0
    row = conn.execute(sql.SQL("SELECT max(version) FROM {}.migrations").format(sql.Identifier(schema)))
    found = row.fetchone()
    return int(found[0] or 0) if found else 0


def migrate(conn: psycopg.Connection[tuple[Any, ...]], schema: str) -> list[int]:
    """Apply the migrations `schema` lacks; returns the versions applied by this call.
    ConfigError if the role may not: a migration needs the schema's owner."""
    try:
        return _migrate(conn, schema)
    except InsufficientPrivilege as exc:
        raise ConfigError(
            f"PostgreSQL role {conn.info.user!r} may not migrate schema {schema!r} ({exc}). Run "
            "`conveyor migrate` as a role that may create it, or own it, and grant this one "
            f"{GRANTS} (see the README's Roles)"
        ) from exc


def _migrate(conn: psycopg.Connection[tuple[Any, ...]], schema: str) -> list[int]:
    # Already current: nothing to lock or create, so a role without CREATE on the
    # database may start with migrate=1 once the owner has migrated.
    current = schema_version(conn, schema)
    _refuse_newer(conn, current, schema)
    if current >= latest_version():
        return []
    applied: list[int] = []
    with conn.transaction():
        # One lock per schema: two environments on one server migrate independently.
        conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (f"conveyor.migrate.{schema}",))
        ident = sql.Identifier(schema)
        conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(ident))
        conn.execute(
            sql.SQL(
                "CREATE TABLE IF NOT EXISTS {}.migrations "
                "(version integer PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL)"
            ).format(ident)
        )
        current = schema_version(conn, schema)
        _refuse_newer(conn, current, schema)
        for version, name, script in load_migrations(_PACKAGE):
            if version <= current:
                continue
            # No parameters: psycopg sends the script as one simple query, so function
            # bodies with their own semicolons stay whole.
            conn.execute(script.replace("{p}", schema).encode())
            conn.execute(
                sql.SQL("INSERT INTO {}.migrations VALUES (%s, %s, to_timestamp(%s))").format(ident),
                (version, name, time.time()),
            )
            if (older := readable_from(script)) is not None:
                conn.execute(
                    sql.SQL("UPDATE {}.migrations SET readers_from = %s WHERE version = %s").format(ident),
                    (older, version),
                )
            applied.append(version)
    return applied


def require_current(conn: psycopg.Connection[tuple[Any, ...]], schema: str) -> None:
    """ConfigError unless `schema` is at the version this Conveyor ships, or at a newer
    one whose newer migrations all keep this version readable."""
    current, latest = schema_version(conn, schema), latest_version()
    _refuse_newer(conn, current, schema)
    if current < latest:
        where = "has no Conveyor tables" if current == 0 else f"is at version {current}"
        raise ConfigError(
            f"PostgreSQL schema {schema!r} {where}; this Conveyor needs version {latest}. "
            "Run `conveyor migrate` (or add ?migrate=1 to the URL to migrate at start)"
        )


def _refuse_newer(conn: psycopg.Connection[tuple[Any, ...]], current: int, schema: str) -> None:
    latest = latest_version()
    if current <= latest:
        return
    # The first migration beyond this Conveyor's that did not say this version reads it.
    query = (
        "SELECT min(version) FROM {}.migrations WHERE version > %s AND coalesce(readers_from, version) > %s"
    )
    row = conn.execute(sql.SQL(query).format(sql.Identifier(schema)), (latest, latest)).fetchone()
    if row is None or row[0] is None:
        return
    raise ConfigError(
        f"PostgreSQL schema {schema!r} is at version {current}, newer than this Conveyor "
        f"knows ({latest}), and migration {row[0]} changed what it reads: upgrade Conveyor "
        "on this machine"
    )
