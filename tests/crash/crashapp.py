"""Tasks for the crash tests, run by real worker processes (URL from CONVEYOR_URL)."""

from __future__ import annotations

import asyncio
import os
import time

from conveyor import Conveyor, current_job

app = Conveyor()


def _note(path: str, line: str) -> None:
    # O_APPEND makes each short write atomic, so concurrent processes never interleave.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, f"{line}\n".encode())
    finally:
        os.close(fd)


@app.task(name="crash.slow", retries=3)
def slow(marker: str, seconds: float) -> dict[str, int]:
    """Records that it started, then works for `seconds` (only on the first attempt)."""
    _note(marker, f"{current_job().id} {os.getpid()} {current_job().attempt}")
    if current_job().attempt == 1:
        time.sleep(seconds)
    return {"pid": os.getpid(), "attempt": current_job().attempt}


@app.task(name="crash.meet")
def meet(marker: str, together: int, timeout: float) -> int:
    """Records that it started, then waits (up to `timeout` seconds) until `together`
    jobs have: that many run at once, so with one slot each they are in as many processes."""
    _note(marker, f"{current_job().id} {os.getpid()} {current_job().attempt}")
    deadline = time.monotonic() + timeout
    while len(_lines(marker)) < together and time.monotonic() < deadline:
        time.sleep(0.01)
    return os.getpid()


def _lines(path: str) -> list[str]:
    with open(path, encoding="utf-8") as f:
        return f.read().splitlines()


@app.task(name="crash.record")
async def record(runs: str, i: int) -> int:
    """Records each run, so the test can see every job ran exactly once."""
    _note(runs, f"{current_job().id} {os.getpid()}")
    await asyncio.sleep(0)
    return i
