"""`noetl dev`: the whole system on one machine, every part a child process of this one.

NATS and PostgreSQL (embedded, unless `NOETL_NATS_URL` and a DSN name servers of one's own), the
consumers, the worker pools and the API run under a `Supervisor`: a part that dies is restarted
with backoff, `ready` is said once every part is, and Ctrl-C or SIGTERM stops the workers and the
API first (running steps finish), the consumers next, the servers last. The data directory is
locked while its servers run, so a second `noetl dev` on it is refused at once.

With `--auth` every door is locked (`noetl.access`): the API takes a bearer token per role, each
part has its own NATS user with only its subjects, and the consumers use their own database role.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import platformdirs
from psycopg.conninfo import make_conninfo

from noetl.access import NATS_CONFIG_FILE, NATS_FILE, TOKENS_FILE, Access, load_or_create, write_private
from noetl.bus.connection import nats_options
from noetl.bus.permissions import Part
from noetl.crypto import KEY_SETTING, generate_key
from noetl.embedded import HOST, EmbeddedNats, EmbeddedPostgres, free_port, require_free
from noetl.problems import Problem
from noetl.reach import probe_nats, probe_postgres
from noetl.settings import PostgresEnv, get_settings
from noetl.store.migrate import migrate
from noetl.store.roles import CONSUMER_ROLE
from noetl.supervisor import Command, Server, Supervisor

DB_ENV = (
    "NOETL_PG_DSN",
    "POSTGRES_HOST",
    "POSTGRES_PORT",
    "POSTGRES_USER",
    "POSTGRES_PASSWORD",
    "POSTGRES_DB",
)
LOCK_FILE = "noetl-dev.lock"
WAITING_NOTE_EVERY = 10.0  # seconds between "waiting for ..." lines while not every part is ready


def default_data_dir() -> Path:
    return Path(platformdirs.user_data_dir("noetl"))


@dataclass
class DevOptions:
    data_dir: Path | None
    port: int
    nats_port: int
    pg_port: int
    workers: int
    auth: bool = False


def credentials_key(data_dir: Path) -> str:
    """`NOETL_CREDENTIALS_KEY` from the environment, or the key kept in the data directory
    (made on first start, readable by this user only): credentials sealed with it outlive a restart."""
    if os.environ.get(KEY_SETTING):
        return os.environ[KEY_SETTING]
    path = data_dir / "credentials" / "key"
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_text().strip()
    key = generate_key()
    with os.fdopen(fd, "w") as out:
        out.write(key + "\n")
    return key


def _say(line: str) -> None:
    print(f"noetl dev: {line}", flush=True)


# --------------------------------------------------------------------------- the data directory


class DataDirInUse(Problem):
    pass


def _holder(recorded: str) -> str:
    pid, _, command = recorded.partition(" ")
    if not pid.isdigit():
        return "another noetl dev"
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return f"the servers of pid {pid}, which has exited (they are stopping: try again in a moment)"
    except PermissionError:
        pass
    return f"pid {pid} ({command})" if command else f"pid {pid}"


def hold_data_dir(data_dir: Path) -> IO[str]:
    """The data directory for this process alone: an exclusive lock on a file in it, which names
    the owner. The servers inherit the lock, so it lasts until the last of them has stopped."""
    lock = (data_dir / LOCK_FILE).open("a+")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.seek(0)
        holder = _holder(lock.read().strip())
        lock.close()
        raise DataDirInUse(
            f"the data directory {data_dir} is in use by {holder}; stop it, or pass another --data-dir"
        ) from None
    lock.seek(0)
    lock.truncate()
    lock.write(f"{os.getpid()} {' '.join(['noetl', *sys.argv[1:]])}\n")
    lock.flush()
    return lock


# --------------------------------------------------------------------------- signals


class Signals:
    """SIGINT and SIGTERM counted: the first stops in order, a second one stops at once."""

    def __init__(self) -> None:
        self.received = 0
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._on_signal)

    def _on_signal(self, _signum: int, _frame: object) -> None:
        self.received += 1

    @property
    def stopping(self) -> bool:
        return self.received >= 1

    @property
    def hurry(self) -> bool:
        return self.received >= 2


# --------------------------------------------------------------------------- the whole


def run_dev(opts: DevOptions) -> int:
    """Start everything, supervise it until a signal, stop everything; the exit code."""
    data_dir = (opts.data_dir or default_data_dir()).expanduser().resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    lock = hold_data_dir(data_dir)
    try:
        return _run(opts, data_dir, lock.fileno())
    finally:
        lock.close()


def _run(opts: DevOptions, data_dir: Path, lock_fd: int) -> int:
    settings = get_settings()
    external_nats = "NOETL_NATS_URL" in os.environ
    external_pg = bool(settings.pg_dsn or PostgresEnv().dsn())
    if external_nats:
        asyncio.run(probe_nats(settings.nats_url, nats_options(settings)))
    if external_pg:
        asyncio.run(probe_postgres(settings.database_dsn()))
    require_free(opts.port, "the API", "--port")
    if not external_nats:
        require_free(opts.nats_port, "NATS", "--nats-port")
    if not external_pg:
        require_free(opts.pg_port, "PostgreSQL", "--pg-port")

    access = load_or_create(data_dir / "credentials") if opts.auth else None
    signals = Signals()
    supervisor = Supervisor(_say)
    try:
        if external_nats:
            nats_url = settings.nats_url
            _say(f"NATS         {nats_url} (external{'; its own users' if access else ''})")
        else:
            config = None
            if access is not None:
                config = data_dir / "credentials" / NATS_CONFIG_FILE
                write_private(config, access.nats_server_config())
            nats = EmbeddedNats(data_dir / "nats", opts.nats_port, keep_fds=(lock_fd,), config=config)
            nats_url = nats.start()
            supervisor.add(Server("nats", nats), started=True)
            users = "; a user per part" if access else ""
            _say(f"NATS         {nats_url} (JetStream store {nats.store_dir}{users})")
        parts = Parts(access, nats_url, own_database=not external_pg)
        if external_pg:
            dsn = settings.database_dsn()
            _say("PostgreSQL   external (NOETL_PG_DSN / POSTGRES_*)")
        else:
            pg = EmbeddedPostgres(data_dir / "postgres", opts.pg_port, keep_fds=(lock_fd,))
            dsn = pg.start()
            supervisor.add(Server("postgres", pg), started=True)
            _say(f"PostgreSQL   {dsn} (data {pg.data_dir})")
        password = access.consumer_db_password if access and parts.own_database else None
        applied = asyncio.run(migrate(dsn, consumer_password=password))
        _say(f"schema       migrated ({len(applied)} new migration(s))")
        if access is not None:
            folder = data_dir / "credentials"
            _say(f"auth         on: a token per role in {folder / TOKENS_FILE} (send one as NOETL_API_TOKEN)")
            _say(f"auth         a NATS user per part in {folder / NATS_FILE}")
        if not signals.stopping:
            _start_parts(supervisor, opts, data_dir, parts, dsn)
            _supervise(supervisor, signals, opts.port)
    finally:
        _say("stopping (Ctrl-C again to stop at once)" if signals.stopping else "stopping")
        supervisor.stop(hurry=lambda: signals.hurry)
        _say("stopped")
    return 0


@dataclass
class Parts:
    """What each part is given to reach the bus (and, with auth, who it is there)."""

    access: Access | None
    nats_url: str
    own_database: bool

    def env(self, part: Part) -> dict[str, str]:
        # Workers get neither the database nor the credentials key; the API seals, consumers open.
        env = {k: v for k, v in os.environ.items() if k not in (*DB_ENV, KEY_SETTING)}
        env["NOETL_NATS_URL"] = self.nats_url
        if self.access is not None:
            if "NOETL_NATS_URL" not in os.environ:  # the embedded server knows the parts' users
                env |= self.access.nats_env(part)
            if part == "facade":
                env["NOETL_API_TOKENS"] = self.access.token_digests()
        return env

    def database(self, dsn: str) -> str:
        """The consumers' DSN: their own least-privilege role on a database of our own."""
        if self.access is None or not self.own_database:
            return dsn
        return make_conninfo(dsn, user=CONSUMER_ROLE, password=self.access.consumer_db_password)


def _start_parts(supervisor: Supervisor, opts: DevOptions, data_dir: Path, parts: Parts, dsn: str) -> None:
    """The consumers, the worker pools and the API, as `noetl` child processes."""
    from consumers.process import CONSUMER_NAMES

    level = logging.getLevelName(logging.getLogger().getEffectiveLevel()).lower()
    noetl = [sys.executable, "-m", "noetl.cli", "--log-level", level]
    key_env = {KEY_SETTING: credentials_key(data_dir)}
    grace = get_settings().worker_grace_seconds

    port = free_port()
    consumers = [*noetl, "consumer", *CONSUMER_NAMES, "--metrics-port", str(port)]
    consumer_env = parts.env("consumer") | key_env | {"NOETL_PG_DSN": parts.database(dsn)}
    supervisor.add(Command("consumers", consumers, consumer_env, tier=1, stop_timeout=30))
    _say(f"consumers    {', '.join(CONSUMER_NAMES)} (metrics {_metrics_url(port)})")
    for i in range(opts.workers):
        name = f"local-{i + 1}" if opts.workers > 1 else "local"
        port = free_port()
        argv = [*noetl, "worker", "--name", name, "--metrics-port", str(port)]
        worker_env = parts.env("worker") | {"NOETL_WORKER_DATA_DIR": str(data_dir / "worker")}
        supervisor.add(Command(f"worker {name}", argv, worker_env, tier=0, stop_timeout=grace + 10))
        _say(f"worker       {name} (runtime python; metrics {_metrics_url(port)})")
    api = [*noetl, "api", "--host", HOST, "--port", str(opts.port)]
    supervisor.add(Command("api", api, parts.env("facade") | key_env, tier=0, stop_timeout=15))


def _metrics_url(port: int) -> str:
    return f"http://{HOST}:{port}/metrics"


def _supervise(supervisor: Supervisor, signals: Signals, port: int) -> None:
    """Tend the parts until a signal; say `ready` once every part is."""
    announced = False
    note_at = time.monotonic() + WAITING_NOTE_EVERY
    while not signals.stopping:
        supervisor.tend()
        if not announced:
            waiting = supervisor.waiting_for()
            if not waiting:
                _say(
                    f"API          http://{HOST}:{port}  (docs: http://{HOST}:{port}/docs, "
                    f"metrics: {_metrics_url(port)})"
                )
                _say(f"console      http://{HOST}:{port}/ui")
                _say("ready; Ctrl-C stops everything")
                announced = True
            elif time.monotonic() >= note_at:
                _say(f"waiting for {', '.join(waiting)}")
                note_at += WAITING_NOTE_EVERY
        time.sleep(0.1)
