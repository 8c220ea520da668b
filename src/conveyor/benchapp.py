"""The tasks `conveyor bench` runs; worker processes import this as conveyor.benchapp:app."""

from __future__ import annotations

import asyncio

from conveyor.app import Conveyor


def register(app: Conveyor) -> Conveyor:
    """Register the benchmark's tasks on `app` (the bench's own app runs them in-process)."""

    @app.task(name="bench.noop")
    async def noop(i: int) -> None:
        """An async task that does nothing: measures the machinery alone."""

    @app.task(name="bench.noop_sync")
    def noop_sync(i: int) -> None:
        """A sync task that does nothing: adds the thread-pool hop."""

    @app.task(name="bench.sleep")
    async def sleep(seconds: float) -> None:
        """An io-bound task: waits without using the CPU."""
        await asyncio.sleep(seconds)

    return app


app = register(Conveyor())  # URL and prefix come from CONVEYOR_URL / CONVEYOR_PREFIX, set by the bench
