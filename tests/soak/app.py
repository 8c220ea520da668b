"""The soak's tasks: each records, on completion, that it ran (one line per run, in a
file per worker process), and fails one attempt in 20 so retries are part of the run."""

from __future__ import annotations

import asyncio
import os
import random
import time

from conveyor import Conveyor

app = Conveyor(retry_backoff=0.05, retry_backoff_max=0.2)  # URL and prefix from the environment
_FLAKY = 0.05


def _ran(i: int) -> None:
    fd = os.open(f"{os.environ['CONVEYOR_SOAK_LOG']}.{os.getpid()}", os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        os.write(fd, f"{i}\n".encode())
    finally:
        os.close(fd)


@app.task(retries=20)
async def work(i: int) -> int:
    await asyncio.sleep(random.random() * 0.004)
    if random.random() < _FLAKY:
        raise RuntimeError("flaky")
    _ran(i)
    return i


@app.task(retries=20)
def work_sync(i: int) -> int:
    time.sleep(random.random() * 0.004)
    if random.random() < _FLAKY:
        raise RuntimeError("flaky")
    _ran(i)
    return i
