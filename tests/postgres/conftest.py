"""Fixtures of the PostgreSQL engine's own tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from conveyor.backends.postgres.backend import PostgresBackend
from tests.conftest import POSTGRES_URL, fresh_postgres


@pytest.fixture
def backend() -> Iterator[PostgresBackend]:
    """A migrated backend on this process's test database, with a pool of one (single
    enqueues keep one more: held.py)."""
    fresh_postgres(POSTGRES_URL)
    opened = PostgresBackend(f"{POSTGRES_URL}?migrate=1&pool=1", prefix="engine")
    yield opened
    opened.close()
