"""Turn a Conveyor Redis URL into a redis-py client: one server, TLS, Sentinel or Cluster.

    redis://[:password@]host[:port][/db]          one server (also Valkey)
    rediss://...                                   the same over TLS (Upstash, ElastiCache)
    redis+sentinel://[:password@]h1:26379,h2:26379/service[/db]
    rediss+sentinel://...                          the same over TLS, to Sentinels and data nodes
    redis+cluster://h1:7000,h2:7001   (or redis://h1:7000,h2:7001: a node list is a cluster)

Conveyor's own query options are taken off before redis-py sees the URL:
`allow_eviction=1` lets workers start on a server whose maxmemory-policy may evict
keys (jobs), and `timeout=5` sets the socket timeouts in seconds. One server's URL
passes any other option to redis-py. Sentinel and Cluster URLs take only the options
named in _OPTIONS_OF, and refuse any other: until 2026-12-07 they dropped them
unread, so a Cluster's private CA (ssl_ca_certs) was never used.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, cast
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

from redis.backoff import ExponentialBackoff
from redis.cluster import ClusterNode, RedisCluster
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ReadOnlyError
from redis.retry import Retry
from redis.sentinel import Sentinel

import redis
from conveyor.errors import ConfigError

DEFAULT_TIMEOUT = 5.0  # seconds: a command, a connect, or an enqueue while Redis is down
_OWN_OPTIONS = {"allow_eviction", "timeout"}
# The options a Sentinel or Cluster URL takes besides Conveyor's own. The Sentinels'
# own password, where they have one (Bitnami's chart sets it, as the data nodes'): the
# URL's password is the data nodes'. TLS files and checking, over TLS (rediss+).
_TLS_FILES = {"ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_cert_reqs"}
_OPTIONS_OF = {"sentinel": {"sentinel_password", "sentinel_username"}, "cluster": set[str]()}
_TRUE = {"1", "true", "yes", "on"}


@dataclass(frozen=True, slots=True)
class RedisTarget:
    """What a URL asks for, before connecting."""

    kind: str  # "server" | "sentinel" | "cluster"
    url: str  # for "server": the URL redis-py parses (our options removed)
    nodes: tuple[tuple[str, int], ...] = ()
    service: str = ""
    password: str | None = field(default=None, repr=False)  # never in a log line
    username: str | None = None
    db: int = 0
    tls: bool = False
    timeout: float = DEFAULT_TIMEOUT
    allow_eviction: bool = False
    options: tuple[tuple[str, str], ...] = field(default=(), repr=False)  # see _OPTIONS_OF


def parse_redis_url(url: str) -> RedisTarget:
    """Validate a Redis URL; ConfigError names what is wrong."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    options = dict(parse_qsl(parts.query, keep_blank_values=True))
    own = {k: options.pop(k) for k in list(options) if k in _OWN_OPTIONS}
    timeout = _timeout(own.get("timeout"), url)
    allow = own.get("allow_eviction", "").lower() in _TRUE
    username = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password else None
    hosts = parts.netloc.rsplit("@", 1)[-1]
    tls = scheme in {"rediss", "rediss+cluster", "rediss+sentinel"}
    if scheme in {"redis+sentinel", "rediss+sentinel"}:
        path = [p for p in parts.path.split("/") if p]
        if not path:
            raise ConfigError(f"Sentinel URL {_safe(url)!r} names no service: add /mymaster")
        db = _db(path[1] if len(path) > 1 else "0", url)
        return RedisTarget("sentinel", "", _nodes(hosts, 26379, url), path[0], password, username, db,
                           tls, timeout, allow, _taken(options, "sentinel", url, tls))  # fmt: skip
    if scheme in {"redis+cluster", "rediss+cluster"} or (scheme in {"redis", "rediss"} and "," in hosts):
        return RedisTarget("cluster", "", _nodes(hosts, 6379, url), "", password, username, 0,
                           tls, timeout, allow, _taken(options, "cluster", url, tls))  # fmt: skip
    if scheme not in {"redis", "rediss", "unix"}:
        raise ConfigError(f"not a Redis URL: {_safe(url)!r}")
    clean = urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(options), parts.fragment))
    if scheme == "unix":  # urlunsplit drops the // of an empty host, and redis-py wants unix:///path
        clean = "unix:///" + clean.removeprefix("unix:").lstrip("/")
    return RedisTarget("server", clean, password=password, tls=tls, timeout=timeout, allow_eviction=allow)


def connect(target: RedisTarget) -> Any:
    """A client for `target`. One server's and Sentinel's connect lazily; a Cluster's reads the
    slots of its nodes here, so an unreachable Cluster fails at once."""
    retried: tuple[type[Exception], ...] = (RedisConnectionError,)
    if target.kind == "server":
        # READONLY: the server behind this address was demoted to a replica (a failover
        # behind one name, as ElastiCache's primary endpoint does). The retry's new
        # connection resolves the name again and finds the new primary; a replica ran
        # no write. Sentinel's connections handle it themselves, Cluster by its slots.
        retried = (RedisConnectionError, ReadOnlyError)
    common: dict[str, Any] = {
        "decode_responses": True,
        "socket_timeout": target.timeout,
        "socket_connect_timeout": target.timeout,
        # One quick retry, and only for connection errors: a command on a socket the
        # server closed (after a restart) never ran, so sending it again is safe. A
        # timeout is never retried: the script may have run, and enqueue must not run twice.
        "retry": Retry(ExponentialBackoff(cap=0.2, base=0.05), 1, supported_errors=retried),
        "health_check_interval": 15,
    }
    if target.kind == "server":
        return redis.Redis.from_url(target.url, **common)
    auth: dict[str, Any] = {"password": target.password, "username": target.username}
    options = dict(target.options)
    tls: dict[str, Any] = {name: options.pop(name) for name in _TLS_FILES if name in options}
    if target.tls:
        tls["ssl"] = True
    if target.kind == "sentinel":
        sentinel_options: dict[str, Any] = {"socket_timeout": target.timeout, **tls}
        if options:  # either alone counts: an ACL user may need no password ("nopass")
            sentinel_options["password"] = options.get("sentinel_password")
            sentinel_options["username"] = options.get("sentinel_username")
        # Through Any: redis-py types these calls from 8.2 on, and left them untyped before.
        sentinel = cast(Any, Sentinel)(list(target.nodes), sentinel_kwargs=sentinel_options, **common, **tls)
        return sentinel.master_for(target.service, db=target.db, **auth)
    nodes = [ClusterNode(host, port) for host, port in target.nodes]  # type: ignore[no-untyped-call]
    common.pop("health_check_interval")
    return RedisCluster(startup_nodes=nodes, **auth, **common, **tls)


def _nodes(hosts: str, default_port: int, url: str) -> tuple[tuple[str, int], ...]:
    nodes = []
    for item in hosts.split(","):
        host, _, port = item.strip().rpartition(":") if ":" in item else (item.strip(), "", "")
        host = host or item.strip()
        if not host:
            raise ConfigError(f"Redis URL {_safe(url)!r} has an empty host in its node list")
        try:
            nodes.append((host, int(port) if port else default_port))
        except ValueError:
            raise ConfigError(f"Redis URL {_safe(url)!r}: port {port!r} is not a number") from None
    return tuple(nodes)


def _taken(options: dict[str, str], kind: str, url: str, tls: bool) -> tuple[tuple[str, str], ...]:
    """The query options a Sentinel or Cluster URL may carry; ConfigError for any other."""
    allowed = _OPTIONS_OF[kind] | (_TLS_FILES if tls else set())
    for name in options:
        if name not in allowed:
            known = ", ".join(sorted(allowed | _OWN_OPTIONS))
            hint = f" (over TLS: rediss+{kind}://)" if name in _TLS_FILES else ""
            raise ConfigError(
                f"Redis URL {_safe(url)!r}: a {kind} URL takes no option {name!r}{hint}; it takes {known}"
            )
    return tuple(sorted(options.items()))


def _db(text: str, url: str) -> int:
    if not text.isdigit():
        raise ConfigError(f"Redis URL {_safe(url)!r}: database {text!r} is not a number")
    return int(text)


def _timeout(text: str | None, url: str) -> float:
    if text is None:
        return DEFAULT_TIMEOUT
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise ConfigError(f"Redis URL {_safe(url)!r}: timeout must be a number of seconds > 0, got {text!r}")
    return value


def _safe(url: str) -> str:
    from conveyor.backends import redact_url

    return redact_url(url)
