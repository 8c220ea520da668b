"""Wake-ups from Redis pub/sub: one subscriber connection per backend, read by one thread.

Scripts publish on `<base>:wake` when work lands on an empty queue and on
`<base>:done` when an awaited job finishes (outside database 0 the names end in
`@<db>`: channels span a server's databases). Waiters subscribe first, then look at
the data, then block on a generation counter, so a publish between the look and the
block is never missed. A message carries no data the waiter trusts: it only says
"look again". If the subscriber connection drops, every waiter is woken to look
again, and redis-py resubscribes on reconnect; waits are bounded, so a publish lost
during the outage costs at most one wait.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterable
from typing import Any

from redis.exceptions import RedisClusterException, RedisError

from conveyor.errors import BackendUnavailable

log = logging.getLogger("conveyor.redis")

_READ_SECONDS = 0.25  # the reader's longest block: bounds how long close() waits for it
_RETRY_SECONDS = 0.5  # pause after a failed read before reconnecting


class Waker:
    """Subscriptions and a counter that moves on every message."""

    def __init__(self, client: Any, timeout: float) -> None:
        self._client = client
        self._timeout = timeout
        self._cond = threading.Condition()
        self._send = threading.Lock()  # subscribe commands, sent from callers' threads
        self._pubsub: Any = None
        self._thread: threading.Thread | None = None
        self._confirmed: set[str] = set()
        self._generation = 0
        self._down_since: float | None = None  # when the connection was lost, if it is
        self._closed = False

    @property
    def generation(self) -> int:
        return self._generation

    def listen(self, channels: Iterable[str]) -> None:
        """Subscribe to `channels` and return once the server has confirmed them."""
        wanted = set(channels)
        with self._cond:
            missing = wanted - self._confirmed
        if not missing:
            return
        try:
            with self._send:
                if self._pubsub is None:
                    self._pubsub = self._client.pubsub()
                self._pubsub.subscribe(*sorted(missing))
                if self._thread is None:
                    self._thread = threading.Thread(
                        target=self._read, name="conveyor-redis-waker", daemon=True
                    )
                    self._thread.start()
        except (RedisError, RedisClusterException) as exc:
            raise BackendUnavailable(f"Redis: could not subscribe for wake-ups: {exc}") from exc
        deadline = time.monotonic() + self._timeout
        with self._cond:
            while not wanted <= self._confirmed:
                left = deadline - time.monotonic()
                if left <= 0 or self._closed:
                    raise BackendUnavailable("Redis: the server did not confirm a subscription in time")
                self._cond.wait(left)

    def wait(self, generation: int, timeout: float) -> bool:
        """Block until a message arrives after `generation` was read; False on timeout."""
        with self._cond:
            if self._generation == generation and timeout > 0:
                self._cond.wait(timeout)
            return self._generation != generation

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=_READ_SECONDS + 1)
        if self._pubsub is not None:
            with contextlib.suppress(RedisError, RedisClusterException):
                self._pubsub.close()

    def _read(self) -> None:
        while not self._closed:
            try:
                message = self._pubsub.get_message(timeout=_READ_SECONDS)
            except (RedisError, RedisClusterException, OSError, ValueError) as exc:
                self._lost(exc)
                continue
            if message is None:
                continue
            if self._down_since is not None:  # resubscribed: the first reply is a confirmation
                log.warning("Redis wake-up connection back after %.1fs", time.monotonic() - self._down_since)
                self._down_since = None
            with self._cond:
                if message["type"] == "subscribe":
                    self._confirmed.add(message["channel"])
                self._generation += 1
                self._cond.notify_all()

    def _lost(self, exc: Exception) -> None:
        """The subscriber connection failed: wake everyone to look again, then retry."""
        if self._closed:
            return
        if self._down_since is None:  # one warning an outage, not one a reconnect attempt (2 a second)
            log.warning("Redis wake-up connection lost, reconnecting: %s", exc)
            self._down_since = time.monotonic()
        with self._cond:
            self._confirmed.clear()
            self._generation += 1
            self._cond.notify_all()
            self._cond.wait(_RETRY_SECONDS)
