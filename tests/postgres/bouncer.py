"""A private PgBouncer in transaction mode in front of the test PostgreSQL: the contract
suite runs through it as engine `postgres-pgbouncer`. Each transaction may run on
another server connection there, so session state (prepared statements, LISTEN,
session advisory locks, SET) does not carry over; Conveyor's `pgbouncer=1` avoids it."""

from __future__ import annotations

import getpass
import os
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg

from tests.conftest import unavailable
from tests.postgres.server import _as_server_user
from tests.redis.servers import free_port

_START_SECONDS = 10.0


@dataclass
class Bouncer:
    folder: Path
    port: int
    process: subprocess.Popen[bytes]

    def url_for(self, server_url: str) -> str:
        """`server_url` (user, database) reached through this PgBouncer instead."""
        parts = urlsplit(server_url)
        user = f"{parts.username}@" if parts.username else ""
        return urlunsplit(("postgresql", f"{user}127.0.0.1:{self.port}", parts.path, "", ""))

    def stop(self) -> None:
        # Its own process group: runuser's and PgBouncer's processes go together.
        os.killpg(self.process.pid, signal.SIGTERM)
        self.process.wait(timeout=10)
        shutil.rmtree(self.folder, ignore_errors=True)


def start(server_url: str) -> Bouncer:
    """PgBouncer on a free loopback port, pooling every database of the server at
    `server_url` in transaction mode; fails in CI (skips elsewhere) without the binary."""
    binary = shutil.which("pgbouncer") or shutil.which("pgbouncer", path="/usr/sbin")
    if binary is None:
        unavailable("pgbouncer is not installed (Debian: apt-get install pgbouncer)")
    server = urlsplit(server_url)
    # Not under pytest's tmp_path: the server user must be able to reach the folder.
    folder = Path(tempfile.mkdtemp(prefix="conveyor-pgbouncer-"))
    users = {getpass.getuser(), "postgres", server.username or getpass.getuser()}
    (folder / "users.txt").write_text("".join(f'"{user}" ""\n' for user in sorted(users)))
    port = free_port()
    (folder / "pgbouncer.ini").write_text(
        "[databases]\n"
        f"* = host={server.hostname or '127.0.0.1'} port={server.port or 5432}\n"
        "[pgbouncer]\n"
        f"listen_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n"
        f"auth_type = trust\nauth_file = {folder / 'users.txt'}\n"
        "pool_mode = transaction\n"
        # Fewer server connections than a worker's pool asks for, as in production.
        "default_pool_size = 4\nmax_client_conn = 500\n"
        f"logfile = {folder / 'pgbouncer.log'}\n"
        "ignore_startup_parameters = extra_float_digits,options\n"
    )
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres", "postgres")
        for path in folder.iterdir():
            shutil.chown(path, "postgres", "postgres")
    command = [*_as_server_user(), binary, str(folder / "pgbouncer.ini")]
    with (folder / "stderr.log").open("wb") as said:  # a pipe nobody read would fill and stall it
        process = subprocess.Popen(command, start_new_session=True, stdout=said, stderr=said)
    bouncer = Bouncer(folder, port, process)
    _wait_until_up(bouncer, server_url)
    return bouncer


def _wait_until_up(bouncer: Bouncer, server_url: str) -> None:
    deadline = time.monotonic() + _START_SECONDS
    while True:
        if bouncer.process.poll() is not None:
            said = (bouncer.folder / "stderr.log").read_text()
            raise AssertionError(f"pgbouncer exited with {bouncer.process.returncode}: {said}")
        try:
            psycopg.connect(bouncer.url_for(server_url), connect_timeout=2).close()
            return
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                bouncer.stop()
                raise
            time.sleep(0.05)
