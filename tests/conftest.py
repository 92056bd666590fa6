"""Real servers for every test: one nats-server with JetStream and one PostgreSQL per session.

Each test that touches them starts from a clean state: the tables are truncated (identities keep
counting), the streams purged, and the durable consumers deleted, so every test declares its own.
The facade runs in-process behind `httpx.ASGITransport`; the consumers run in-process as a task of
`consumers.process.run`, or as real `noetl` processes where a test says so.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import nats
import psycopg
import pytest
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError
from psycopg.conninfo import make_conninfo
from psycopg.rows import dict_row

from consumers import process
from noetl.bus import subjects
from noetl.crypto import generate_key
from noetl.embedded import EmbeddedNats, EmbeddedPostgres, free_port
from noetl.facade.app import create_app
from noetl.settings import Settings, servers_of
from noetl.store.migrate import migrate
from noetl.store.roles import CONSUMER_ROLE

STREAMS = (
    subjects.COMMANDS_STREAM,
    subjects.HEARTBEATS_STREAM,
    subjects.EVENTS_STREAM,
    subjects.JOBS_STREAM,
    subjects.ACCEPTED_STREAM,
)
TABLES = (
    "runtime_components",
    "processed_commands",
    "events",
    "dead_letters",
    "jobs",
    "executions",
    "catalog",
    "catalog_paths",
    "credentials",
)
DURABLES = {
    subjects.COMMANDS_STREAM: "runtime-commands",
    subjects.HEARTBEATS_STREAM: "runtime-heartbeats",
}

# Defaults for the in-process stack: fast, and distinct from the documented defaults where a test
# must prove that a setting is honoured (Retry-After of an unknown heartbeat).
TEST_SETTINGS: dict[str, Any] = {
    "api_reply_timeout": 5.0,
    "heartbeat_retry_after": 7,
    "runtime_offline_seconds": 60.0,
    "runtime_sweep_interval": 0.5,
    "consumer_ack_wait": 5.0,
    # A key made for this run (none is kept in the repository); a test without one says so.
    "credentials_key": generate_key(),
}


CONSUMER_PASSWORD = secrets.token_urlsafe(16)


def pytest_configure(config: pytest.Config) -> None:
    # The tests decide every setting: nothing leaks in from the shell that runs them.
    for key in list(os.environ):
        if key.startswith(("NOETL_", "POSTGRES_")):
            del os.environ[key]


# --------------------------------------------------------------------------- servers


@dataclass
class Servers:
    nats: EmbeddedNats
    pg: EmbeddedPostgres
    root: Path

    @property
    def nats_url(self) -> str:
        return self.nats.url

    @property
    def dsn(self) -> str:
        """The schema owner's: migrations, and tests that look at or reset the tables."""
        return self.pg.dsn

    @property
    def consumer_dsn(self) -> str:
        """The consumers' least-privilege role (`noetl.store.roles`): every consumer the tests run
        connects as it, so a consumer that needs more than reading and writing rows fails here."""
        return make_conninfo(self.pg.dsn, user=CONSUMER_ROLE, password=CONSUMER_PASSWORD)

    def settings(self, **overrides: Any) -> Settings:
        return Settings(
            **{"nats_url": self.nats_url, "pg_dsn": self.consumer_dsn, **TEST_SETTINGS, **overrides}
        )


@pytest.fixture(scope="session")
def scratch() -> Any:
    """This session's own directory: pytest prunes old `tmp_path` trees, even those of a run that
    is still going on, when other pytest sessions on the machine start."""
    root = Path(tempfile.mkdtemp(prefix="noetl-tests-"))
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def scratch_dir(scratch: Path) -> Path:
    return Path(tempfile.mkdtemp(dir=scratch))


@pytest.fixture(scope="session")
def servers(scratch: Path) -> Any:
    root = scratch / "servers"
    nats_server = EmbeddedNats(root / "nats", free_port())
    pg = EmbeddedPostgres(root / "pg", free_port(), durable=False)
    nats_server.start()
    try:
        pg.start()
        try:
            asyncio.run(migrate(pg.dsn, consumer_password=CONSUMER_PASSWORD))
            yield Servers(nats_server, pg, root)
        finally:
            pg.stop()
    finally:
        nats_server.stop()


# --------------------------------------------------------------------------- database helpers


class Db:
    """A small async helper over one autocommit connection."""

    def __init__(self, conn: psycopg.AsyncConnection[dict[str, Any]]) -> None:
        self.conn = conn

    async def all(self, sql: str, *params: Any) -> list[dict[str, Any]]:
        cur = await self.conn.execute(sql, params or None)
        return await cur.fetchall()

    async def one(self, sql: str, *params: Any) -> dict[str, Any] | None:
        rows = await self.all(sql, *params)
        assert len(rows) <= 1, rows
        return rows[0] if rows else None

    async def value(self, sql: str, *params: Any) -> Any:
        cur = await self.conn.execute(sql, params or None)
        row = await cur.fetchone()
        return None if row is None else next(iter(row.values()))

    async def execute(self, sql: str, *params: Any) -> None:
        await self.conn.execute(sql, params or None)

    async def component(self, name: str, kind: str = "worker_pool") -> dict[str, Any] | None:
        return await self.one("SELECT * FROM runtime_components WHERE kind = %s AND name = %s", kind, name)

    async def events_for(self, name: str, kind: str = "worker_pool") -> list[str]:
        rows = await self.all(
            "SELECT type FROM events WHERE entity->>'kind' = %s AND entity->>'name' = %s ORDER BY event_id",
            kind,
            name,
        )
        return [r["type"] for r in rows]


@pytest.fixture
async def db(servers: Servers) -> AsyncIterator[Db]:
    conn = await psycopg.AsyncConnection.connect(servers.dsn, autocommit=True, row_factory=dict_row)
    try:
        yield Db(conn)
    finally:
        await conn.close()


# --------------------------------------------------------------------------- bus helpers


@pytest.fixture
async def own_nats(scratch_dir: Path, clean: Servers) -> AsyncIterator[EmbeddedNats]:
    """A nats-server for this test alone, so it can be stopped (or paused) and started again."""
    server = EmbeddedNats(scratch_dir / "nats", free_port())
    await asyncio.to_thread(server.start)
    try:
        yield server
    finally:
        assert server.proc is not None
        with contextlib.suppress(ProcessLookupError):
            os.kill(server.proc.pid, signal.SIGCONT)
        await asyncio.to_thread(server.stop)


@pytest.fixture
async def nc(servers: Servers) -> AsyncIterator[nats.NATS]:
    client = await nats.connect(servers.nats_url, connect_timeout=5)
    try:
        yield client
    finally:
        await client.close()


async def read_stream(
    js: Any, filter_subject: str, stream: str = subjects.EVENTS_STREAM, idle: float = 0.3
) -> list[Any]:
    """Every message on `stream` matching `filter_subject`, oldest first."""
    sub = await js.pull_subscribe(
        filter_subject,
        stream=stream,
        config=ConsumerConfig(
            deliver_policy=DeliverPolicy.ALL, ack_policy=AckPolicy.NONE, inactive_threshold=10.0
        ),
    )
    found: list[Any] = []
    try:
        while True:
            try:
                batch = await sub.fetch(256, timeout=idle)
            except TimeoutError:
                break
            found += batch
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()
    return found


async def stream_events(js: Any, filter_subject: str) -> list[dict[str, Any]]:
    return [json.loads(m.data) for m in await read_stream(js, filter_subject)]


async def wait_for(
    check: Callable[[], Awaitable[Any]], timeout: float = 20.0, interval: float = 0.1, what: str = ""
) -> Any:
    """Poll `check` until it returns something truthy; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = await check()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what or check}: last {result!r}")
        await asyncio.sleep(interval)


# --------------------------------------------------------------------------- isolation


async def reset_state(servers: Servers) -> None:
    """Empty tables (identities keep counting), purge streams, delete every consumer."""
    async with await psycopg.AsyncConnection.connect(servers.dsn, autocommit=True) as conn:
        await conn.execute(f"TRUNCATE {', '.join(TABLES)} CASCADE")
    client = await nats.connect(servers.nats_url, connect_timeout=5)
    try:
        js = client.jetstream()
        for stream in STREAMS:
            try:
                names = [c.name for c in await js.consumers_info(stream)]
            except NotFoundError:
                continue
            for name in names:
                with contextlib.suppress(NotFoundError):
                    await js.delete_consumer(stream, name)
            await js.purge_stream(stream)
    finally:
        await client.close()


@pytest.fixture
async def clean(servers: Servers) -> Servers:
    await reset_state(servers)
    return servers


# --------------------------------------------------------------------------- the in-process stack


def _no_server_errors(response: httpx.Response) -> None:
    assert response.status_code != 500, f"500 from {response.request.method} {response.request.url}"


class ConsumerTask:
    """`consumers.process.run` as a task in this event loop."""

    def __init__(self, names: list[str], settings: Settings) -> None:
        self.names = names
        self.settings = settings
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        ready = asyncio.Event()
        self.task = asyncio.create_task(
            process.run(self.names, self.settings, handle_signals=False, ready=ready)
        )
        waiter = asyncio.create_task(ready.wait())
        done, _ = await asyncio.wait({self.task, waiter}, timeout=30, return_when=asyncio.FIRST_COMPLETED)
        if waiter not in done:
            waiter.cancel()
            if self.task.done():
                self.task.result()
            raise TimeoutError(f"consumers {self.names} did not start")
        if "runtime" in self.names:
            await wait_durables(self.settings.nats_url)

    async def stop(self) -> None:
        if self.task is None:
            return
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task
        self.task = None


async def wait_durables(nats_url: str, timeout: float = 20) -> None:
    """The runtime consumer declares its durables in its fetch loops: wait until both exist, so a
    heartbeat published next is not lost to `DeliverPolicy.NEW`."""
    client = await nats.connect(servers_of(nats_url), connect_timeout=5)
    try:
        js = client.jetstream()
        deadline = time.monotonic() + timeout
        for stream, durable in DURABLES.items():
            while True:
                try:
                    await js.consumer_info(stream, durable)
                    break
                except NotFoundError:
                    if time.monotonic() > deadline:
                        raise
                    await asyncio.sleep(0.05)
    finally:
        await client.close()


@dataclass
class Stack:
    settings: Settings
    client: httpx.AsyncClient
    app: Any
    consumers: ConsumerTask | None = None
    extra: list[ConsumerTask] = field(default_factory=list)

    async def start_consumers(self, names: list[str] | None = None, **overrides: Any) -> ConsumerTask:
        settings = self.settings.model_copy(update=overrides) if overrides else self.settings
        task = ConsumerTask(names or ["runtime", "sweeper", "outbox"], settings)
        await task.start()
        if self.consumers is None:
            self.consumers = task
        else:
            self.extra.append(task)
        return task

    async def stop_consumers(self) -> None:
        for task in [*self.extra, self.consumers]:
            if task is not None:
                await task.stop()
        self.consumers = None
        self.extra.clear()


@contextlib.asynccontextmanager
async def facade(
    settings: Settings, *, wait_bus: bool = True
) -> AsyncIterator[tuple[Any, httpx.AsyncClient]]:
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        if wait_bus:
            await app.state.bus.wait_ready(15)
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app),
            base_url="http://noetl.test",
            timeout=30,
            event_hooks={"response": [_async(_no_server_errors)]},
        ) as client:
            yield app, client


def _async(fn: Callable[[httpx.Response], None]) -> Callable[[httpx.Response], Awaitable[None]]:
    async def hook(response: httpx.Response) -> None:
        fn(response)

    return hook


StackFactory = Callable[..., Awaitable[Stack]]


@pytest.fixture
async def make_stack(clean: Servers) -> AsyncIterator[StackFactory]:
    """`await make_stack(consumers=True, **settings)`: a facade, and consumers unless told not to."""
    exits = contextlib.AsyncExitStack()
    stacks: list[Stack] = []

    async def make(*, consumers: bool = True, **overrides: Any) -> Stack:
        settings = clean.settings(**overrides)
        app, client = await exits.enter_async_context(facade(settings))
        stack = Stack(settings, client, app)
        stacks.append(stack)
        if consumers:
            await stack.start_consumers()
        return stack

    try:
        yield make
    finally:
        for stack in stacks:
            await stack.stop_consumers()
        await exits.aclose()


@pytest.fixture
async def stack(make_stack: StackFactory) -> Stack:
    return await make_stack()


@pytest.fixture
def client(stack: Stack) -> httpx.AsyncClient:
    return stack.client


# --------------------------------------------------------------------------- real processes


def noetl_command() -> list[str]:
    """The `noetl` console script of this environment."""
    script = Path(sys.executable).parent / "noetl"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "noetl.cli"]


@dataclass
class Proc:
    popen: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def signal(self, sig: int) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(sig)

    def wait(self, timeout: float) -> int:
        return self.popen.wait(timeout)


class Processes:
    """Starts `noetl ...` processes and kills whatever is left of them at the end of the test."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.procs: list[Proc] = []

    def start(self, args: list[str], env: dict[str, str]) -> Proc:
        log = self.root / f"proc-{len(self.procs)}-{args[0]}.log"
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **env}
        with log.open("wb") as out:
            popen = subprocess.Popen(
                [*noetl_command(), *args],
                env=full_env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        proc = Proc(popen, log)
        self.procs.append(proc)
        return proc

    def cleanup(self) -> None:
        for proc in self.procs:
            if proc.popen.poll() is None:
                proc.popen.send_signal(signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.popen.wait(10)


def _stat(pid: int) -> list[str] | None:
    """The fields of /proc/<pid>/stat after the command's name: state, parent pid, ..."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def alive(pid: int) -> bool:
    """`pid` runs (not gone, not a zombie no one reaped yet)."""
    fields = _stat(pid)
    return fields is not None and fields[0] not in ("Z", "X")


def parent_of(pid: int) -> int | None:
    fields = _stat(pid)
    return int(fields[1]) if fields else None


def children_of(pid: int) -> set[int]:
    """Every live descendant of `pid`, read from /proc."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (ppid := parent_of(int(entry.name))) is not None:
            parents.setdefault(ppid, []).append(int(entry.name))
    found: set[int] = set()
    todo = [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return {p for p in found if alive(p)}


@pytest.fixture
def processes(scratch_dir: Path) -> Any:
    procs = Processes(scratch_dir)
    try:
        yield procs
    finally:
        procs.cleanup()
