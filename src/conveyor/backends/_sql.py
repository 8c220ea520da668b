"""Loading named SQL from the `.sql` files that sit beside each SQL engine."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from importlib import resources
from typing import Any

from conveyor.job import AttemptRecord

_NAME = re.compile(r"^--\s*name:\s*(\w+)\s*$")


def load_queries(package: str, filename: str = "queries.sql") -> dict[str, str]:
    """Parse `-- name: x` sections; comment lines inside a section are dropped."""
    text = resources.files(package).joinpath(filename).read_text(encoding="utf-8")
    queries: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in text.splitlines():
        match = _NAME.match(line)
        if match:
            current = queries.setdefault(match.group(1), [])
        elif current is not None and not line.lstrip().startswith("--"):
            current.append(line)
    return {name: "\n".join(lines).strip() for name, lines in queries.items()}


def load_migrations(package: str) -> list[tuple[int, str, str]]:
    """(version, name, sql) for every `NNNN_name.sql` under `migrations/`, in order."""
    folder = resources.files(package).joinpath("migrations")
    found = []
    for entry in folder.iterdir():
        match = re.match(r"^(\d{4})_(\w+)\.sql$", entry.name)
        if match:
            found.append((int(match.group(1)), match.group(2), entry.read_text(encoding="utf-8")))
    return sorted(found)


def split_statements(script: str) -> list[str]:
    """Split a migration script into statements at lines that end with `;`."""
    statements, buffer = [], []
    for line in script.splitlines():
        if line.lstrip().startswith("--") or not line.strip():
            continue
        buffer.append(line)
        if line.rstrip().endswith(";"):
            statements.append("\n".join(buffer))
            buffer = []
    if buffer:
        statements.append("\n".join(buffer))
    return statements


def attempts_from(items: Iterable[Mapping[str, Any]]) -> list[AttemptRecord]:
    """A job's failed-attempt history from its stored JSON objects, oldest first."""
    return [
        AttemptRecord(
            attempt=item.get("attempt") or i,
            error=item.get("error") or "",
            traceback=item.get("traceback"),
            started_at=item.get("started_at"),
            finished_at=item.get("finished_at") or 0.0,
            worker=item.get("worker"),
        )
        for i, item in enumerate(items, start=1)
    ]


def sql_ident(row: Sequence[Any]) -> tuple[str, str]:
    """The job id and lease token of a claimed row in JobRecord's column order."""
    return str(row[0]), str(row[17])
