"""Storage engines behind one protocol; `open_backend(url)` picks one by URL scheme."""

from __future__ import annotations

import re

from conveyor.backends.base import Backend
from conveyor.clock import SYSTEM_CLOCK, Clock
from conveyor.errors import ConfigError

_REDIS_SCHEMES = {
    "redis",
    "rediss",
    "unix",
    "redis+sentinel",
    "rediss+sentinel",
    "redis+cluster",
    "rediss+cluster",
}


def open_backend(url: str, prefix: str = "conveyor", clock: Clock = SYSTEM_CLOCK) -> Backend:
    """Open the engine a URL names: sqlite:///file.db, redis://..., postgresql://... or memory://."""
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme == "sqlite":
        from conveyor.backends.sqlite import SQLiteBackend

        return SQLiteBackend(url, prefix=prefix, clock=clock)
    if scheme == "memory":
        from conveyor.backends.memory import MemoryBackend

        return MemoryBackend(url, prefix=prefix, clock=clock)
    if scheme in _REDIS_SCHEMES:
        try:
            from conveyor.backends.redis import RedisBackend
        except ImportError as exc:
            raise ConfigError(
                f"the {scheme}:// engine needs redis-py: pip install 'conveyor[redis]' ({exc})"
            ) from None
        return RedisBackend(url, prefix=prefix, clock=clock)
    if scheme in {"postgresql", "postgres"}:
        try:
            from conveyor.backends.postgres import PostgresBackend
        except ImportError as exc:
            raise ConfigError(
                f"the {scheme}:// engine needs psycopg 3: pip install 'conveyor[postgres]' ({exc})"
            ) from None
        return PostgresBackend(url, prefix=prefix, clock=clock)
    raise ConfigError(
        f"unsupported engine URL {redact_url(url)!r}: expected sqlite:///path.db, "
        "redis://host:6379/0, postgresql://host/dbname or memory://"
    )


# A query option that carries a secret: libpq's password and sslpassword, redis-py's
# password, Sentinel's sentinel_password. Until 2026-12-07 only the user part was
# hidden, and `?sentinel_password=...` went into every Redis error and log line.
_SECRET_OPTION = re.compile(r"([?&][^=&#]*password[^=&#]*=)[^&#]*", re.IGNORECASE)


def redact_url(url: str) -> str:
    """The URL with every password (the user part's, and any query option whose name
    holds "password") replaced by ***, for logs and error messages."""
    if "://" not in url:
        return url
    scheme, rest = url.split("://", 1)
    end = min((i for i in (rest.find("/"), rest.find("?"), rest.find("#")) if i >= 0), default=len(rest))
    authority, tail = rest[:end], rest[end:]
    if "@" in authority:
        credentials, host = authority.rsplit("@", 1)
        if ":" in credentials:
            authority = f"{credentials.split(':', 1)[0]}:***@{host}"
    return f"{scheme}://{authority}" + _SECRET_OPTION.sub(r"\1***", tail)


__all__ = ["Backend", "open_backend", "redact_url"]
