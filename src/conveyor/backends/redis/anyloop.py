"""EVALSHA awaited on any event loop: the producers' `aenqueue` on Redis.

A producer awaits from whatever loop it runs in: one per `asyncio.run`, one per test,
one per thread. redis.asyncio's connections belong to the loop that opened them (their
streams are that loop's), and `asyncio.to_thread` costs two thread switches a call,
60-85 us on this project's VM: a single `aenqueue` ran at 4,200-5,400/s that way,
against 9,100-10,200/s for the same script called from sync code.

Here a connection is redis-py's own sync one, opened by redis-py in a thread (AUTH,
SELECT, Sentinel's master lookup), and its socket, made non-blocking, is driven by the
running loop's `sock_sendall` and `sock_recv`, which keep nothing of the loop between
calls; hiredis parses the replies, with redis-py's error classes. The same script then
ran at 7,500-8,600/s. A TLS socket cannot be driven this way (the loop refuses an
SSLSocket), so TLS clients, like Cluster ones, keep the threaded path.

Each connection is lent whole, to one borrower at a time; at most _CONNECTIONS are open,
and a borrower that finds none idle at the cap gets None and takes the threaded path.
"""

from __future__ import annotations

import asyncio
import os
import socket
import threading
from collections.abc import Sequence
from typing import Any

from redis.commands.core import Script
from redis.connection import SSLConnection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError

from conveyor.backends.redis.lane import (
    READ,
    checked,
    curable,
    load_command,
    packed,
    reply_reader,
    resend_pauses,
    translated,
)

# Connections open at most: enough for a web app's concurrent requests to overlap
# their round trips (one Redis server runs scripts one at a time anyway).
_CONNECTIONS = 16


class Link:
    """One redis-py connection and the parser of its replies."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self.sock: socket.socket | None = None
        self.reader: Any = None

    async def open(self) -> None:
        """Connect in a thread (redis-py's handshake is blocking), then go non-blocking."""
        await asyncio.to_thread(self.conn.connect)
        self.reader = reply_reader(self.conn)
        self.sock = self.conn._sock  # redis-py keeps it there; only this link uses it
        self.sock.setblocking(False)

    def close(self) -> None:
        self.conn.disconnect()
        self.sock = self.reader = None


class AnyLoopLane:
    """EVALSHA for one single-server or Sentinel client without TLS, awaited on any loop."""

    def __init__(self, client: Any) -> None:
        pool = client.connection_pool
        self._pool = pool
        self._timeout: float | None = pool.connection_kwargs.get("socket_timeout")
        self._idle: list[Link] = []
        self._open = 0  # idle or lent
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self._closed = False

    @staticmethod
    def serves(client: Any) -> bool:
        """Whether this path can drive the connections of a client the sync Lane serves
        (which needs hiredis too): not over TLS (see the module's notes)."""
        return not issubclass(client.connection_pool.connection_class, SSLConnection)

    def borrow(self) -> Link | None:
        """An idle link, a new one while under the cap, or None at the cap."""
        with self._lock:
            if self._pid != os.getpid():
                # A forked child: the parent's sockets are the parent's; only forgotten.
                self._idle, self._open, self._pid = [], 0, os.getpid()
            if self._closed:
                return None
            if self._idle:
                return self._idle.pop()
            if self._open >= _CONNECTIONS:
                return None
            self._open += 1
        return Link(self._pool.connection_class(**self._pool.connection_kwargs))

    def give_back(self, link: Link, *, clean: bool) -> None:
        """Return a borrowed link: kept idle after a clean call, else closed."""
        with self._lock:
            if clean and link.sock is not None and not self._closed and self._pid == os.getpid():
                self._idle.append(link)
                return
            self._open -= 1
        link.close()

    def close(self) -> None:
        """Close the idle links; lent ones close when given back."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
            self._open -= len(idle)
        for link in idle:
            link.close()

    async def run(
        self, link: Link, script: Script, keys: list[str], args: list[Any], again: list[Any]
    ) -> Any:
        """As Lane.run, on `link`: resent after a connection error (with `again`, see
        resend_pauses), never after a timeout, and the script loaded once more if the
        server lost it."""
        try:
            (reply,) = await self._sent(
                link,
                [("EVALSHA", script.sha, len(keys), *keys, *args)],
                [("EVALSHA", script.sha, len(keys), *keys, *again)],
            )
        except NoScriptError:  # maybe on the resend, so the first may have run: send `again`
            calls = [load_command(script), ("EVALSHA", script.sha, len(keys), *keys, *again)]
            _, reply = await self._sent(link, calls, calls)
        return reply

    async def _sent(
        self, link: Link, commands: Sequence[tuple[Any, ...]], resends: Sequence[tuple[Any, ...]]
    ) -> list[Any]:
        calls, pauses = commands, None
        while True:  # as Lane._sent: each resend reopens the link
            try:
                return await self._send(link, calls)
            except RedisConnectionError as exc:
                pauses = pauses or resend_pauses(self._timeout)
                if not curable(exc) or (pause := next(pauses, None)) is None:
                    raise
            await asyncio.sleep(pause)
            calls = resends

    async def _send(self, link: Link, commands: Sequence[tuple[Any, ...]]) -> list[Any]:
        """Write the commands at once and read a reply for each; anything but an error
        reply closes the link, as a reply may be left half read (a cancelled call too)."""
        loop = asyncio.get_running_loop()
        try:
            if link.sock is None:
                await link.open()
            async with asyncio.timeout(self._timeout):
                await loop.sock_sendall(_socket(link), packed(commands))
                replies = [await _reply(loop, link) for _ in commands]
        except BaseException as exc:
            link.close()
            raised = translated(exc, self._timeout)
            if raised is exc:
                raise
            raise raised from exc
        return checked(replies, link.close)


async def _reply(loop: asyncio.AbstractEventLoop, link: Link) -> Any:
    while (reply := link.reader.gets()) is False:
        data = await loop.sock_recv(_socket(link), READ)
        if not data:
            raise RedisConnectionError("the server closed the connection")
        link.reader.feed(data)
    return reply


def _socket(link: Link) -> socket.socket:
    if link.sock is None:  # pragma: no cover - open() sets it, close() is only after
        raise RedisConnectionError("the connection is closed")
    return link.sock
