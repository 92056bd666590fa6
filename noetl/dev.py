"""`noetl dev`: the whole system on one machine, every part a child process stopped together."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import platformdirs

from noetl.crypto import KEY_SETTING, generate_key
from noetl.embedded import HOST, EmbeddedNats, EmbeddedPostgres, require_free, stop_process, wait_for_port
from noetl.settings import PostgresEnv, Settings
from noetl.store.migrate import migrate

DB_ENV = (
    "NOETL_PG_DSN",
    "POSTGRES_HOST",
    "POSTGRES_PORT",
    "POSTGRES_USER",
    "POSTGRES_PASSWORD",
    "POSTGRES_DB",
)
CONSUMERS = ("runtime", "catalog", "execution", "credentials", "sweeper", "outbox")


def default_data_dir() -> Path:
    return Path(platformdirs.user_data_dir("noetl"))


@dataclass
class DevOptions:
    data_dir: Path
    port: int
    nats_port: int
    pg_port: int
    workers: int


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


def _child(args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "noetl.cli", *args], env=env)


def _stop_together(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in procs:
        stop_process(proc)


def run_dev(opts: DevOptions) -> int:
    """Start everything, wait for a signal or a child's death, stop everything; the exit code."""
    settings = Settings()
    external_nats = "NOETL_NATS_URL" in os.environ
    external_pg = bool(settings.pg_dsn or PostgresEnv().dsn())
    require_free(opts.port, "the API", "--port")
    if not external_nats:
        require_free(opts.nats_port, "NATS", "--nats-port")
    if not external_pg:
        require_free(opts.pg_port, "PostgreSQL", "--pg-port")

    stopping = False

    def _stop(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)

    servers: list[EmbeddedNats | EmbeddedPostgres] = []
    children: list[tuple[str, subprocess.Popen[bytes]]] = []
    code = 0
    try:
        if external_nats:
            nats_url = settings.nats_url
            _say(f"NATS         {nats_url} (external)")
        else:
            nats = EmbeddedNats(opts.data_dir / "nats", opts.nats_port)
            servers.append(nats)
            nats_url = nats.start()
            _say(f"NATS         {nats_url} (JetStream store {nats.store_dir})")
        if external_pg:
            dsn = settings.database_dsn()
            _say("PostgreSQL   external (NOETL_PG_DSN / POSTGRES_*)")
        else:
            pg = EmbeddedPostgres(opts.data_dir / "postgres", opts.pg_port)
            servers.append(pg)
            dsn = pg.start()
            _say(f"PostgreSQL   {dsn} (data {pg.data_dir})")
        applied = asyncio.run(migrate(dsn))
        _say(f"schema       migrated ({len(applied)} new migration(s))")

        # Workers get neither the database nor the credentials key; the API seals, consumers open.
        base_env = {k: v for k, v in os.environ.items() if k not in (*DB_ENV, KEY_SETTING)}
        base_env["NOETL_NATS_URL"] = nats_url
        key_env = {KEY_SETTING: credentials_key(opts.data_dir)}
        consumer_env = {**base_env, **key_env, "NOETL_PG_DSN": dsn}
        children.append(("consumers", _child(["consumer", *CONSUMERS], consumer_env)))
        for i in range(opts.workers):
            name = f"local-{i + 1}" if opts.workers > 1 else "local"
            children.append((f"worker {name}", _child(["worker", "--name", name], base_env)))
        api = _child(["api", "--host", HOST, "--port", str(opts.port)], {**base_env, **key_env})
        children.append(("api", api))
        wait_for_port(opts.port, api, "the API", timeout=30)
        _say(f"API          http://{HOST}:{opts.port}  (docs: http://{HOST}:{opts.port}/docs)")
        _say("ready; Ctrl-C stops everything")
        while not stopping:
            dead = [(what, p) for what, p in children if p.poll() is not None]
            if dead:
                what, proc = dead[0]
                _say(f"{what} exited with status {proc.returncode}; stopping")
                code = 1
                break
            time.sleep(0.2)
    finally:
        # Workers and the API first, so a worker's deregistration still reaches the consumers.
        _stop_together([p for what, p in children if what != "consumers"])
        _stop_together([p for what, p in children if what == "consumers"])
        for server in reversed(servers):
            server.stop()
        _say("stopped")
    return code
