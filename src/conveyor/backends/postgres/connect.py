"""Turn a Conveyor PostgreSQL URL into libpq connection settings and Conveyor's options.

    postgresql://user:password@host:5432/dbname?sslmode=require   (Supabase, Neon, RDS)
    postgresql:///dbname                                           the local socket

libpq's own query options (sslmode, options, application_name, ...) pass through.
Conveyor's are taken off first:

    pool=10        most connections the backend's pool opens (single enqueues keep one
                   more between calls, see held.py; the LISTEN connection is one more, and
                   a worker's async claims and finishes use two more)
    timeout=5      seconds to wait for a connection: an enqueue while the server is down
                   raises within it
    migrate=1      apply missing migrations when the backend opens (else: `conveyor migrate`)
    listen=0       no LISTEN/NOTIFY; workers poll (behind PgBouncer in transaction mode)
    pgbouncer=1    listen=0, and no server-side prepared statements
    vacuum=50000   dead rows in the jobs table at which a worker runs VACUUM on it (and
                   on the events table at 1,000); 0: never (see vacuum.py)
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit

from conveyor.backends import redact_url
from conveyor.errors import ConfigError

DEFAULT_TIMEOUT = 5.0
DEFAULT_POOL = 10  # a worker uses about 4 at once: claim/finish, waiter, leases, maintenance
DEFAULT_VACUUM = 50_000
_OWN_OPTIONS = {"pool", "timeout", "migrate", "listen", "pgbouncer", "vacuum"}
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}
# The prefix is the schema name: unquoted identifiers only, so psql users type it as is.
_SCHEMA = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
# Words PostgreSQL reserves (pg_get_keywords() catcode R and T, versions 15 to 18): one
# unquoted as a schema is a syntax error ("left.jobs"), found only when migrating.
_RESERVED = frozenset(
    """all analyse analyze and any array as asc asymmetric authorization binary both case
    cast check collate collation column concurrently constraint create cross
    current_catalog current_date current_role current_schema current_time
    current_timestamp current_user default deferrable desc distinct do else end except
    false fetch for foreign freeze from full grant group having ilike in initially inner
    intersect into is isnull join lateral leading left like limit localtime localtimestamp
    natural not notnull null offset on only or order outer overlaps placing primary
    references returning right select session_user similar some symmetric system_user
    table tablesample then to trailing true union unique user using variadic verbose when
    where window with""".split()  # noqa: SIM905 (100 words: one a line is 100 lines)
)


@dataclass(frozen=True, slots=True)
class PostgresTarget:
    """What a URL asks for, before connecting."""

    conninfo: str  # the URL libpq sees (Conveyor's options removed)
    pool: int = DEFAULT_POOL
    timeout: float = DEFAULT_TIMEOUT
    migrate: bool = False
    listen: bool = True
    prepare: bool = True
    vacuum: int = DEFAULT_VACUUM

    @property
    def connect_options(self) -> dict[str, Any]:
        """psycopg.connect's options for every connection to this target. Behind PgBouncer
        in transaction mode none prepares statements: the next transaction may run on
        another server connection, which lacks them or has one of the same name."""
        return {"autocommit": True, "prepare_threshold": 5 if self.prepare else None}


def parse_postgres_url(url: str) -> PostgresTarget:
    """Validate a PostgreSQL URL; ConfigError names what is wrong."""
    parts = urlsplit(url)
    if parts.scheme.lower() not in {"postgresql", "postgres"}:
        raise ConfigError(f"not a PostgreSQL URL: {redact(url)!r}")
    options = dict(parse_qsl(parts.query, keep_blank_values=True))
    own = {k: options.pop(k) for k in list(options) if k in _OWN_OPTIONS}
    pgbouncer = _flag(own, "pgbouncer", False, url)
    timeout = _number(own, "timeout", DEFAULT_TIMEOUT, url)
    # libpq takes whole seconds and treats 1 as 2; the pool's own wait enforces `timeout`.
    options.setdefault("connect_timeout", str(max(2, round(timeout))))
    # quote, not urlencode's default quote_plus: libpq reads a "+" as itself, so
    # options=-c%20a%3D1%20-c%20b%3D2 (two settings) came out as "-c+a=1+-c+b=2".
    query = urlencode(options, quote_via=quote)
    # Not urlunsplit: with no host it wrote "postgresql:/db", which libpq refuses, so the
    # local socket's postgresql:///db failed ("invalid connection option").
    conninfo = f"postgresql://{parts.netloc}{parts.path}" + (f"?{query}" if query else "")
    return PostgresTarget(
        conninfo=conninfo,
        pool=int(_number(own, "pool", DEFAULT_POOL, url, minimum=1)),
        timeout=timeout,
        migrate=_flag(own, "migrate", False, url),
        listen=_flag(own, "listen", True, url) and not pgbouncer,
        prepare=not pgbouncer,
        vacuum=int(_number(own, "vacuum", DEFAULT_VACUUM, url, minimum=0)),
    )


def check_schema(prefix: str) -> str:
    """The schema a prefix maps to; ConfigError if it is not a plain identifier."""
    if not _SCHEMA.match(prefix):
        raise ConfigError(
            f"prefix {prefix!r} cannot be a PostgreSQL schema name: use lowercase letters, "
            "digits and _, starting with a letter or _ (at most 63 characters)"
        )
    if prefix in _RESERVED:
        raise ConfigError(
            f"prefix {prefix!r} is a word PostgreSQL reserves, so it cannot name a schema "
            f"unquoted: choose another, such as '{prefix}_jobs'"
        )
    return prefix


def redact(url: str) -> str:
    """The URL with its passwords replaced by *** (see redact_url)."""
    return redact_url(url)


def _number(own: dict[str, str], name: str, default: float, url: str, minimum: float = 0.1) -> float:
    if name not in own:
        return default
    try:
        value = float(own[name])
    except ValueError:
        value = -1.0
    if value < minimum:
        raise ConfigError(
            f"PostgreSQL URL {redact(url)!r}: {name}={own[name]!r} must be a number >= {minimum}"
        )
    return value


def _flag(own: dict[str, str], name: str, default: bool, url: str) -> bool:
    if name not in own:
        return default
    value = own[name].lower()
    if value not in _TRUE | _FALSE:
        raise ConfigError(f"PostgreSQL URL {redact(url)!r}: {name}={own[name]!r} must be 1 or 0")
    return value in _TRUE
