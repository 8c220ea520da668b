"""The worker's event loop: uvloop where installed, asyncio's when asked (the `loop` setting).

The rest of the suite runs workers on the default, uvloop (the test command installs
it); here the same core behaviour runs on both loops, on a threaded engine (SQLite)
and on PostgreSQL's async claim path.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conveyor import Conveyor
from conveyor.errors import ConfigError, JobFailed
from conveyor.settings import Settings
from conveyor.worker._aio import chosen_loop
from tests.conftest import engine_url, running

pytest.importorskip("uvloop", reason="the uvloop extra is not installed")


@pytest.fixture(params=["sqlite", "postgres"])
def app(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Conveyor]:
    application = Conveyor(engine_url(request.param, tmp_path), prefix="t")
    yield application
    application.close()


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_jobs_timeouts_and_stop_on_each_loop(app: Conveyor, loop: str) -> None:
    @app.task()
    async def which_loop() -> str:
        return type(asyncio.get_running_loop()).__module__.split(".")[0]

    @app.task()
    def add(a: int, b: int) -> int:
        return a + b

    cut_after: list[float] = []

    @app.task(timeout=0.2, retries=0)
    async def too_slow() -> None:
        start = time.monotonic()
        try:
            await asyncio.sleep(5)
        finally:
            cut_after.append(time.monotonic() - start)

    with running(app, loop=loop, concurrency=4):
        assert which_loop.enqueue().result(timeout=10) == loop
        assert add.enqueue(2, 3).result(timeout=10) == 5
        with pytest.raises(JobFailed, match="timeout of 0.2s"):
            too_slow.enqueue().result(timeout=10)
    assert 0.2 <= cut_after[0] < 0.5, cut_after  # never early, on either loop's clock


def test_auto_takes_uvloop_when_installed() -> None:
    assert chosen_loop("auto") == "uvloop"
    assert chosen_loop("asyncio") == "asyncio"


def test_without_uvloop_auto_falls_back_and_uvloop_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)  # as if not installed
    assert chosen_loop("auto") == "asyncio"
    with pytest.raises(ConfigError, match=r"pip install 'conveyor\[uvloop\]'"):
        chosen_loop("uvloop")
    app = Conveyor(f"sqlite:///{tmp_path / 'c.db'}")
    try:
        with pytest.raises(ConfigError, match="loop=uvloop needs the uvloop package"):
            app.worker(loop="uvloop").run(burst=True, handle_signals=False)
    finally:
        app.close()


@pytest.mark.parametrize(
    ("overrides", "env", "message"),
    [
        ({"loop": "tokio"}, {}, "loop: must be one of auto, asyncio, uvloop, got 'tokio'"),
        ({}, {"CONVEYOR_LOOP": "trio"}, "CONVEYOR_LOOP: must be one of auto, asyncio, uvloop, got 'trio'"),
    ],
)
def test_an_unknown_loop_is_named(overrides: dict[str, str], env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Settings.load(overrides, env=env)
    assert Settings.load({"loop": " UVLoop "}, env={}).loop == "uvloop"
