"""Small asyncio helpers shared by the worker's tasks."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


async def wait_event(event: asyncio.Event, timeout: float) -> None:
    """Wait for `event` at most `timeout` seconds."""
    if timeout <= 0:
        return
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout):
            await event.wait()


def call_soon(loop: asyncio.AbstractEventLoop, fn: Callable[[], object]) -> None:
    """`fn()` on `loop` from any thread; nothing if the loop has already closed."""
    with contextlib.suppress(RuntimeError):
        loop.call_soon_threadsafe(fn)


async def in_thread(
    executor: concurrent.futures.Executor, fn: Callable[..., T], *args: Any, **kwargs: Any
) -> T:
    """Run a blocking engine call on `executor` and await its result."""
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(executor, functools.partial(fn, *args, **kwargs))
