"""PostgreSQL failover under load, on loopback: a primary and a synchronous streaming standby
(`pg_basebackup`), consumers given both in one multi-host DSN (`target_session_attrs=read-write`).
The primary is SIGKILLed while registrations pour in through the facade, the standby is promoted,
and the consumers find it by themselves: every request answered 200 is on the new primary, every
one answered 202 is applied there too, and none is applied twice."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import signal
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from conftest import Processes, Servers, StackFactory, wait_for
from psycopg.rows import dict_row
from test_resilience import wait_consumer_process

from noetl.embedded import HOST, EmbeddedPostgres, free_port
from noetl.store.migrate import migrate
from noetl.store.roles import CONSUMER_ROLE

REQUESTS = 300
CONCURRENCY = 6
KILL_AFTER = 60  # answers before the primary is killed
# Commits wait for the standby (once it streams, `Pair.start`): a commit acknowledged is a commit
# the standby holds.
SYNCHRONOUS = {"synchronous_commit": "on"}


class Pair:
    """A primary and its standby, each a server of its own on 127.0.0.1."""

    def __init__(self, root: Path) -> None:
        self.primary = EmbeddedPostgres(root / "primary", free_port(), durable=False, settings=SYNCHRONOUS)
        self.standby: EmbeddedPostgres | None = None
        self.password = secrets.token_urlsafe(12)

    def start(self, root: Path) -> None:
        self.primary.start()
        asyncio.run(migrate(self.primary.dsn, consumer_password=self.password))
        self.standby = self.primary.standby(root / "standby", free_port(), durable=False)
        self.standby.start()
        with psycopg.connect(self.primary.dsn, autocommit=True) as conn:
            conn.execute("ALTER SYSTEM SET synchronous_standby_names = '*'")
            conn.execute("SELECT pg_reload_conf()")

    def consumer_dsn(self) -> str:
        assert self.standby is not None
        return (
            f"host={HOST},{HOST} port={self.primary.port},{self.standby.port} dbname=postgres "
            f"user={CONSUMER_ROLE} password={self.password} target_session_attrs=read-write connect_timeout=2"
        )

    def stop(self) -> None:
        for server in (self.standby, self.primary):
            if server is not None:
                server.stop()


@pytest.fixture
def pair(scratch_dir: Path) -> Any:
    servers = Pair(scratch_dir)
    try:
        servers.start(scratch_dir)
        yield servers
    finally:
        servers.stop()


async def query(dsn: str, sql: str, *params: Any) -> list[dict[str, Any]]:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True, row_factory=dict_row) as conn:
        cur = await conn.execute(sql, params or None)
        return await cur.fetchall()


async def load(client: httpx.AsyncClient, answers: dict[str, httpx.Response], killed: asyncio.Event) -> None:
    """REQUESTS registrations, CONCURRENCY at a time; KILL_AFTER answers in, `killed` is set."""
    names = iter(f"failover-{i:04d}" for i in range(REQUESTS))

    async def client_loop() -> None:
        for name in names:
            body = {"name": name, "runtime": "python", "capacity": 1}
            answers[name] = await client.post("/api/worker/pool/register", json=body)
            if len(answers) >= KILL_AFTER:
                killed.set()

    async with asyncio.TaskGroup() as group:
        for _ in range(CONCURRENCY):
            group.create_task(client_loop())


async def test_the_primary_lost_under_load_loses_nothing_answered(
    pair: Pair, clean: Servers, make_stack: StackFactory, processes: Processes
) -> None:
    assert pair.standby is not None

    async def streaming_in_sync() -> bool:
        rows = await query(pair.primary.dsn, "SELECT sync_state FROM pg_stat_replication")
        return [row["sync_state"] for row in rows] == ["sync"]

    await wait_for(streaming_in_sync, timeout=30, interval=0.1, what="the standby streaming, in sync")
    env = {
        "NOETL_NATS_URL": clean.nats_url,
        "NOETL_PG_DSN": pair.consumer_dsn(),
        "NOETL_CONSUMER_ACK_WAIT": "3",
        "NOETL_CONSUMER_BATCH_SIZE": "20",
    }
    consumer = processes.start(["consumer", "runtime"], env)
    await wait_consumer_process(clean, consumer)
    stack = await make_stack(consumers=False, api_reply_timeout=2.0)

    answers: dict[str, httpx.Response] = {}
    killed = asyncio.Event()
    async with asyncio.TaskGroup() as group:
        group.create_task(load(stack.client, answers, killed))
        await killed.wait()
        assert pair.primary.proc is not None
        pair.primary.proc.send_signal(signal.SIGKILL)
        await asyncio.to_thread(pair.primary.proc.wait, 30)
        promoted = await query(pair.standby.dsn, "SELECT pg_promote(wait => true) AS done")
        assert promoted == [{"done": True}]

    statuses = {name: answer.status_code for name, answer in answers.items()}
    assert set(statuses.values()) <= {200, 202}, {n: s for n, s in statuses.items() if s not in (200, 202)}
    ok = sorted(name for name, status in statuses.items() if status == 200)
    late = {name: answers[name].json()["request_id"] for name, status in statuses.items() if status == 202}
    new_primary = pair.standby.dsn
    lost = ("batch failed", "server closed the connection", "discarding closed connection")
    assert any(sign in consumer.output() for sign in lost), "the primary was not lost under load"

    async def everything_applied() -> bool:
        rows = await query(new_primary, "SELECT count(*) AS n FROM runtime_components")
        assert consumer.popen.poll() is None, consumer.output()
        return rows[0]["n"] == REQUESTS

    await wait_for(
        everything_applied, timeout=120, interval=0.3, what="every registration on the new primary"
    )
    names = {row["name"] for row in await query(new_primary, "SELECT name FROM runtime_components")}
    assert set(ok) <= names and set(late) <= names
    # Once each: a command, its row, its one event.
    events = await query(
        new_primary,
        "SELECT entity->>'name' AS name, count(*) AS n FROM events "
        "WHERE type = 'runtime.registered' GROUP BY 1",
    )
    assert {row["name"]: row["n"] for row in events} == dict.fromkeys(statuses, 1)
    processed = await query(new_primary, "SELECT count(*) AS n FROM processed_commands")
    assert processed[0]["n"] == REQUESTS
    assert (await query(new_primary, "SELECT count(*) AS n FROM dead_letters"))[0]["n"] == 0
    # A late answer's request is answered from its recorded outcome.
    for request_id in list(late.values())[:5]:
        outcome = (await stack.client.get(f"/api/requests/{request_id}")).json()
        assert outcome["state"] == "done", outcome
    with contextlib.suppress(ProcessLookupError):
        consumer.signal(signal.SIGTERM)
    assert await asyncio.to_thread(consumer.wait, 30) == 0, consumer.output()
