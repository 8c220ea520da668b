"""The hot path's Redis calls: EVALSHA on one connection per thread, past redis-py's
per-command layer; and batches of reads (listing, counts) written at once.

redis-py 8 wraps every command in a retry closure and observability hooks, and its
pool records metrics on every checkout: on this project's 2-core VM a bare EVALSHA
through the client ran at 12,000/s, through the pool's connections at 15,000/s,
and on a connection a thread keeps at 23,500/s, against 30,000/s for
redis-benchmark's single client. Enqueue, claim and finish are one script each, so
that layer was half of each call's time.

A thread keeps its connection for its life (it closes when the thread ends, and all
close with the backend). The connections come from the client's own settings
(timeouts, TLS, Sentinel's master lookup), and redis-py's connection still does the
handshake, the health check and the reconnect. The calls themselves go on its socket
(`Connection._sock`, a blocking one with the client's timeout) and hiredis parses the
replies with redis-py's error classes, as anyloop.py does: redis-py's send and read
methods cost a single enqueue 6-8 us more, and the same script ran at 10,400-11,200/s
through them against 11,800-12,400/s this way (a bare socket: 12,300-12,500/s).
A call whose connection fails is sent again (see resend_pauses), never one that timed
out (the script may have run).
"""

from __future__ import annotations

import contextlib
import os
import socket
import ssl
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from redis._parsers import BaseParser  # in its __all__: the error class for each reply
from redis.commands.core import Script
from redis.exceptions import (
    AuthenticationError,
    AuthorizationError,
    InvalidResponse,
    NoScriptError,
    ReadOnlyError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

try:  # redis[hiredis]: packs commands and parses replies in C
    import hiredis
except ImportError:  # pragma: no cover - plain redis-py
    hiredis = None  # type: ignore[assignment]

READ = 65_536  # bytes a read asks for: a reply to a single enqueue is a few dozen


def reply_reader(conn: Any) -> Any:
    """A hiredis reader for `conn`'s replies, as redis-py's own parser makes it: error
    replies come back as redis-py's exception objects, and text decoded as the client
    asks."""
    encoder = conn.encoder
    options: dict[str, Any] = {"protocolError": InvalidResponse, "replyError": BaseParser.parse_error}
    if encoder.decode_responses:
        options.update(encoding=encoder.encoding, errors=encoder.encoding_errors)
    return hiredis.Reader(**options)


def packed(commands: Sequence[tuple[Any, ...]]) -> bytes:
    """The commands as one write. redis-py sends each item with a sendall of its own, so
    Redis read 2,000 probes (a recovery sweep) in many small reads: 11.4 ms of its CPU
    for 1.4 ms of commands, 2.2-2.5 ms as one write."""
    if len(commands) == 1:  # the common call: no join
        one: bytes = hiredis.pack_command(commands[0])
        return one
    return b"".join([hiredis.pack_command(command) for command in commands])


def translated(exc: BaseException, timeout: float | None) -> BaseException:
    """What a call that failed with `exc` raises: the socket's timeout and its errors
    as redis-py's classes (a timeout is never resent: the script may have run), the
    rest as it is."""
    if isinstance(exc, TimeoutError):
        return RedisTimeoutError(f"no reply within {timeout:g} s")
    if isinstance(exc, OSError):
        return RedisConnectionError(f"the connection failed: {exc}")
    return exc


RESEND_PAUSE_FIRST, RESEND_PAUSE_MOST = 0.05, 0.5  # seconds between resends, doubling


def resend_pauses(timeout: float | None) -> Iterator[float]:
    """The pause before each resend of a call whose connection failed: none before the
    first (a socket the server closed, after a restart or an idle timeout, is renewed and
    the call goes through), then 50 ms doubling to 500 ms until `timeout` (the URL's) has
    passed. A restart, Redis's loading of its AOF (LOADING) or a failover is waited
    out, where a producer used to get BackendUnavailable at once; a server that stays
    down raises within the timeout, as a connect to an unreachable host does. With no
    timeout (a client made elsewhere), one resend."""
    deadline = time.monotonic() + (timeout or 0.0)
    yield 0.0
    pause = RESEND_PAUSE_FIRST
    while (left := deadline - time.monotonic()) > 0:
        yield min(pause, left)
        pause = min(pause * 2, RESEND_PAUSE_MOST)


def curable(exc: RedisConnectionError) -> bool:
    """Whether waiting may cure a connection error: not a refused password or user, nor
    a TLS certificate or handshake, which only the configuration fixes."""
    if isinstance(exc, AuthenticationError | AuthorizationError):
        return False
    return not isinstance(exc.__cause__ or exc.__context__, ssl.SSLError)


def load_command(script: Script) -> tuple[Any, ...]:
    """SCRIPT LOAD, written ahead of the calls it serves on the same connection: the
    server lost the script (restart, SCRIPT FLUSH) or is another one (a failover, or a
    replica that resynced), and a load sent on its own could land on a different server
    than the call after it, if the call's connection is renewed in between."""
    return ("SCRIPT", "LOAD", script.script)


def checked(replies: list[Any], disconnect: Callable[[], None]) -> list[Any]:
    """`replies`, all read, or the first error among them raised. A read-only error means
    the server was demoted to a replica (a failover behind one address, as ElastiCache's
    primary endpoint does): `disconnect` drops the connection, so a new one finds the new
    primary, and the error is a connection error. A replica refuses a script at its
    first write, so nothing ran. An error redis-py counts as a connection error (LOADING
    from a server reading its AOF after a restart, NOAUTH) drops the connection too.
    Every error reply is an exception object here, whatever its class: the async path
    once took LOADING's for a script's reply and returned it as a job's id."""
    for reply in replies:
        if isinstance(reply, ReadOnlyError):
            disconnect()
            raise RedisConnectionError(f"the server is a read-only replica now (failed over?): {reply}")
        if isinstance(reply, RedisConnectionError):
            disconnect()
            raise reply
        if isinstance(reply, Exception):
            raise reply
    return replies


class _Link:
    """A thread's redis-py connection, and the socket and parser its calls use."""

    __slots__ = ("buffer", "conn", "pid", "reader", "sock")

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self.pid = os.getpid()
        self.sock: socket.socket | None = None
        self.reader: Any = None
        # Read into, as redis-py does: a claim's reply runs to tens of kilobytes, and
        # recv() would make a new bytes object of READ for every read.
        self.buffer = bytearray(READ)

    def ready(self) -> socket.socket:
        """The connection's socket, connected, and pinged if it sat unused past the
        client's health_check_interval (redis-py's check, which reconnects on failure;
        see answered). A new socket gets a new parser: nothing of an old reply may be
        left in it."""
        conn = self.conn
        if conn._sock is not None:
            conn.check_health()
        if conn._sock is None:
            conn.connect()  # the handshake; under Sentinel, the current master's address
        if conn._sock is not self.sock:
            self.sock, self.reader = conn._sock, reply_reader(conn)
        assert self.sock is not None
        return self.sock

    def reply(self) -> Any:
        while (reply := self.reader.gets()) is False:
            read = self.sock.recv_into(self.buffer) if self.sock is not None else 0
            if not read:
                raise RedisConnectionError("the server closed the connection")
            self.reader.feed(self.buffer, 0, read)
        return reply

    def answered(self) -> None:
        """A whole reply was read: the next health check is an interval away, as redis-py's
        own read sets it (else a busy connection was pinged each 15 s)."""
        interval = self.conn.health_check_interval
        if interval:
            self.conn.next_health_check = time.monotonic() + interval

    def close(self) -> None:
        self.conn.disconnect()
        self.sock = self.reader = None

    def __del__(self) -> None:
        # A thread's link goes when the thread ends (threading.local): its socket is
        # closed now, while the link still holds it. Left to the garbage collector, the
        # connection (in a reference cycle of redis-py's) and its socket went in either
        # order, and a socket collected first warned "unclosed" (a ResourceWarning, an
        # error in the suite: it failed an unrelated test in a full run on 2026-12-07).
        with contextlib.suppress(Exception):  # at collection no one is left to tell
            self.conn.disconnect()


class Lane:
    """EVALSHA for one single-server or Sentinel client (not Cluster: it routes by slot)."""

    def __init__(self, client: Any) -> None:
        self._pool = client.connection_pool
        self._local = threading.local()
        self._open: weakref.WeakSet[Any] = weakref.WeakSet()
        self._lock = threading.Lock()

    @staticmethod
    def serves(client: Any) -> bool:
        """Whether this path can serve `client`: not Cluster, and hiredis installed."""
        return hiredis is not None and hasattr(client, "connection_pool")

    def run(self, script: Script, keys: list[str], args: list[Any], again: list[Any] | None = None) -> Any:
        """The script's reply; loads it once more if the server lost it (restart, SCRIPT FLUSH).

        `again`: the arguments for a resend, where they differ: a script the server ran
        before the connection dropped may be resent knowing so (see claim.lua).
        """
        again = args if again is None else again
        try:
            (reply,) = self._sent(
                [("EVALSHA", script.sha, len(keys), *keys, *args)],
                [("EVALSHA", script.sha, len(keys), *keys, *again)],
            )
        except NoScriptError:  # maybe on the resend, so the first may have run: send `again`
            command = ("EVALSHA", script.sha, len(keys), *keys, *again)
            _, reply = self._sent([load_command(script), command], [load_command(script), command])
        return reply

    def run_each(self, script: Script, calls: Sequence[tuple[list[str], list[Any]]]) -> list[Any]:
        """The script once per (keys, args), written at once, its replies in order: one
        round trip for many queues. Only for scripts that are safe to run twice, as a
        resend after a connection error repeats every call."""

        def commands() -> list[tuple[Any, ...]]:
            return [("EVALSHA", script.sha, len(keys), *keys, *args) for keys, args in calls]

        try:
            return self._sent(commands(), commands())
        except NoScriptError:  # see load_command
            return self._sent([load_command(script), *commands()], [load_command(script), *commands()])[1:]

    def atomic(self, script: Script, calls: Sequence[tuple[list[str], list[Any]]]) -> list[Any]:
        """The script once per (keys, args) in one MULTI/EXEC, written at once, its
        replies in order. Resent as run_each is, so only for calls safe to run twice.
        A server that lacks the script fails every call alike inside EXEC, and ran
        nothing: it is loaded ahead, on the same connection, and the whole sent again."""

        def transaction(load: bool) -> list[tuple[Any, ...]]:
            evals = [("EVALSHA", script.sha, len(keys), *keys, *args) for keys, args in calls]
            return [*([load_command(script)] if load else []), ("MULTI",), *evals, ("EXEC",)]

        replies = self._sent(transaction(False), transaction(False))[-1]
        if any(isinstance(reply, NoScriptError) for reply in replies):
            replies = self._sent(transaction(True), transaction(True))[-1]
        for reply in replies:
            if isinstance(reply, Exception):  # a script's own error, as redis-py raises it
                raise reply
        return list(replies)

    def command(self, *command: Any) -> Any:
        """Any other command, on this thread's connection; the reply as redis-py parses it."""
        (reply,) = self._sent([command], [command])
        return reply

    def read_many(self, commands: Sequence[tuple[Any, ...]]) -> list[Any]:
        """Read-only commands written at once, their replies in order; a resend after a
        connection error is always safe, as they change nothing. One round trip, past
        redis-py's pipeline: listing 20,000 jobs 1,000 at a time took 85 us a job through
        it, 29 this way."""
        return self._sent(commands, commands)

    def _sent(self, commands: Sequence[tuple[Any, ...]], resends: Sequence[tuple[Any, ...]]) -> list[Any]:
        # A socket the server closed (restart, idle timeout) ran nothing; one the server
        # lost mid-call (killed) may have run it: `resends` says what is safe, however
        # often it is sent. _send has closed ours, so each opens a new one.
        link = self._link()
        calls, pauses = commands, None
        while True:
            try:
                return self._send(link, calls)
            except RedisConnectionError as exc:
                pauses = pauses or resend_pauses(link.conn.socket_timeout)
                if not curable(exc) or (pause := next(pauses, None)) is None:
                    raise
            time.sleep(pause)
            calls = resends

    @staticmethod
    def _send(link: _Link, commands: Sequence[tuple[Any, ...]]) -> list[Any]:
        """Write the commands at once (see packed) and read a reply for each. An error
        reply (a script's error, NOSCRIPT) is raised once every reply is read, so the
        socket stays in step and is kept; anything else closes it, as a reply may be
        left half read."""
        try:
            link.ready().sendall(packed(commands))
            replies = [link.reply() for _ in commands]
            link.answered()
        except BaseException as exc:
            link.close()
            raised = translated(exc, link.conn.socket_timeout)  # the socket's own timeout
            if raised is exc:
                raise
            raise raised from exc
        return checked(replies, link.close)

    def _link(self) -> _Link:
        link: _Link | None = getattr(self._local, "link", None)
        if link is None or link.pid != os.getpid():  # a forked child opens its own
            link = _Link(self._pool.connection_class(**self._pool.connection_kwargs))
            self._local.link = link
            with self._lock:
                self._open.add(link.conn)
        return link

    def _connection(self) -> Any:
        """This thread's redis-py connection (tests look at it)."""
        return self._link().conn

    def close(self) -> None:
        """Close every thread's connection (the backend is closing)."""
        with self._lock:
            conns = list(self._open)
        for conn in conns:
            conn.disconnect()
