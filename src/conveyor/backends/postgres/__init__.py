"""The PostgreSQL engine (`pip install 'conveyor[postgres]'`)."""

from conveyor.backends.postgres.backend import PostgresBackend, migrate_database

__all__ = ["PostgresBackend", "migrate_database"]
