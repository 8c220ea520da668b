"""Fixtures the Redis engine's test modules share."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.redis import servers


@pytest.fixture
def own_server(tmp_path: Path) -> Iterator[servers.Server]:
    """A server of the test's own, to stop, pause or flush: the shared one serves the
    other tests at once."""
    servers.need_binaries()
    # Every write is on disk before Redis answers, so a restart may lose nothing acknowledged.
    server = servers.server(tmp_path / "aof", "--appendonly", "yes", "--appendfsync", "always")
    yield server
    server.stop()
