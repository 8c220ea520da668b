"""A private PostgreSQL server for fault tests: its own data folder and loopback port,
so it can be stopped and restarted without touching the machine's server."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import IN_CI
from tests.redis.servers import free_port


def _bin(name: str) -> str | None:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return found[-1] if found else shutil.which(name)


def _as_server_user() -> list[str]:
    """PostgreSQL refuses to run as root: run it as `postgres` when we are root."""
    return ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []


@dataclass
class Server:
    folder: Path
    port: int

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _ctl(self, *args: str) -> None:
        command = [*_as_server_user(), str(_bin("pg_ctl")), "-D", str(self.folder / "data"), *args]
        subprocess.run(command, check=True, capture_output=True, timeout=60)

    def start(self) -> None:
        options = f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1"
        self._ctl("-o", options, "-l", str(self.folder / "server.log"), "-w", "start")

    def stop(self, mode: str = "fast") -> None:
        self._ctl("-m", mode, "-w", "stop")

    def remove(self) -> None:
        subprocess.run([*_as_server_user(), str(_bin("pg_ctl")), "-D", str(self.folder / "data"),
                        "-m", "immediate", "stop"], capture_output=True, timeout=60)  # fmt: skip
        shutil.rmtree(self.folder, ignore_errors=True)


def server() -> Server:
    """initdb and start a server; fail in CI (skip elsewhere) without the binaries."""
    if _bin("initdb") is None or _bin("pg_ctl") is None:
        message = "PostgreSQL server binaries (initdb, pg_ctl) not installed"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    # Not under pytest's tmp_path: the server user must be able to reach the folder.
    folder = Path(tempfile.mkdtemp(prefix="conveyor-pg-"))
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres", "postgres")
    command = [*_as_server_user(), str(_bin("initdb")), "-D", str(folder / "data"), "-A", "trust",
               "-U", "postgres", "--no-sync"]  # fmt: skip
    subprocess.run(command, check=True, capture_output=True, timeout=120)
    found = Server(folder, free_port())
    found.start()
    return found
