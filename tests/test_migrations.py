"""Schema migrations: each file once, in order; run twice; run from two processes at once."""

from __future__ import annotations

import asyncio
import base64
import os
import secrets
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator

import psycopg
import pytest
from conftest import Servers, noetl_command
from psycopg.conninfo import make_conninfo

from noetl.store.migrate import SchemaBehind, migrate, migration_files
from noetl.store.roles import CONSUMER_ROLE, scram_verifier

RUNTIME_TABLES = {"runtime_components", "processed_commands", "events", "dead_letters", "schema_migrations"}


@pytest.fixture
async def fresh_db(servers: Servers) -> AsyncIterator[str]:
    """An empty database of its own, dropped afterwards."""
    name = f"mig_{uuid.uuid4().hex[:12]}"
    async with await psycopg.AsyncConnection.connect(servers.dsn, autocommit=True) as conn:
        await conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield servers.dsn.rsplit("/", 1)[0] + f"/{name}"
    finally:
        async with await psycopg.AsyncConnection.connect(servers.dsn, autocommit=True) as conn:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def tables(dsn: str) -> set[str]:
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        cur = await conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        return {row[0] for row in await cur.fetchall()}


async def ledger(dsn: str) -> list[int]:
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        cur = await conn.execute("SELECT version FROM schema_migrations ORDER BY version")
        return [row[0] for row in await cur.fetchall()]


def test_migration_files_are_numbered_and_unique() -> None:
    files = migration_files()
    versions = [v for v, _, _ in files]
    assert versions, "no migrations packaged"
    assert versions == sorted(set(versions))
    assert versions[0] == 1


async def test_migrate_twice(fresh_db: str) -> None:
    versions = [v for v, _, _ in migration_files()]
    assert await migrate(fresh_db) == versions
    assert await migrate(fresh_db) == []
    assert await ledger(fresh_db) == versions
    assert RUNTIME_TABLES <= await tables(fresh_db)


async def test_migrate_concurrently_in_one_process(fresh_db: str) -> None:
    results = await asyncio.gather(*[migrate(fresh_db) for _ in range(4)])
    versions = [v for v, _, _ in migration_files()]
    assert sorted(results, key=len) == [[], [], [], versions]
    assert await ledger(fresh_db) == versions


def _migrate_processes(dsn: str, count: int, use_cli: bool) -> list[subprocess.CompletedProcess[str]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NOETL_", "POSTGRES_"))}
    env["NOETL_PG_DSN"] = dsn
    if use_cli:
        argv = [*noetl_command(), "db", "migrate"]
    else:
        code = (
            "import asyncio, sys; from noetl.store.migrate import migrate; "
            "print(asyncio.run(migrate(sys.argv[1])))"
        )
        argv = [sys.executable, "-c", code, dsn]
    procs = [
        subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(count)
    ]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=60)
        results.append(subprocess.CompletedProcess(argv, proc.returncode, out, err))
    return results


async def test_migrate_from_two_processes_at_once(fresh_db: str) -> None:
    results = await asyncio.to_thread(_migrate_processes, fresh_db, 2, False)
    for result in results:
        assert result.returncode == 0, result.stderr
    versions = [v for v, _, _ in migration_files()]
    outputs = sorted(r.stdout.strip() for r in results)
    assert outputs == sorted(["[]", str(versions)])
    assert await ledger(fresh_db) == versions
    assert RUNTIME_TABLES <= await tables(fresh_db)


async def test_noetl_db_migrate_cli_from_two_processes_then_again(fresh_db: str) -> None:
    results = await asyncio.to_thread(_migrate_processes, fresh_db, 2, True)
    for result in results:
        assert result.returncode == 0, result.stderr
    versions = [v for v, _, _ in migration_files()]
    assert await ledger(fresh_db) == versions
    [again] = await asyncio.to_thread(_migrate_processes, fresh_db, 1, True)
    assert again.returncode == 0, again.stderr
    assert await ledger(fresh_db) == versions


async def test_schema_refuses_an_unknown_kind(fresh_db: str) -> None:
    await migrate(fresh_db)
    async with await psycopg.AsyncConnection.connect(fresh_db, autocommit=True) as conn:
        for kind in ["worker_pool", "broker", "server_api", "scheduler", "monitor"]:
            await conn.execute(
                "INSERT INTO runtime_components (name, kind, status) VALUES ('n', %s, 'ready')", (kind,)
            )
        with pytest.raises(psycopg.errors.CheckViolation):
            await conn.execute(
                "INSERT INTO runtime_components (name, kind, status) VALUES ('n', 'queue', 'ready')"
            )
        with pytest.raises(psycopg.errors.UniqueViolation):
            await conn.execute(
                "INSERT INTO runtime_components (name, kind, status) VALUES ('n', 'broker', 'x')"
            )


# --------------------------------------------------------------------------- the consumers' role


def as_consumer(dsn: str, password: str) -> str:
    return make_conninfo(dsn, user=CONSUMER_ROLE, password=password)


async def test_consumer_role_reads_and_writes_rows_and_nothing_more(servers: Servers) -> None:
    """The session's consumers all run as this role (conftest): here, what it may not do."""
    async with await psycopg.AsyncConnection.connect(servers.consumer_dsn, autocommit=True) as conn:
        cur = await conn.execute("SELECT current_user")
        assert (await cur.fetchone()) == (CONSUMER_ROLE,)
        cur = await conn.execute("SELECT count(*) FROM schema_migrations")
        assert (await cur.fetchone())[0] == len(migration_files())
        for statement in (
            "CREATE TABLE intruder (id int)",
            "DROP TABLE events",
            "ALTER TABLE events ADD COLUMN intruder int",
            "TRUNCATE events",
            "DELETE FROM schema_migrations",
            "INSERT INTO schema_migrations (version, name) VALUES (9999, 'x')",
            "CREATE INDEX intruder ON events (event_id)",
            "CREATE ROLE intruder",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                await conn.execute(statement)


async def test_a_consumer_on_its_role_refuses_a_schema_behind(fresh_db: str) -> None:
    """The owner migrates; the consumers' role passes a current schema, and says what to do when
    the schema lacks a migration, rather than failing on a DDL statement."""
    password = secrets.token_urlsafe(12)
    assert await migrate(fresh_db, consumer_password=password)
    consumer = as_consumer(fresh_db, password)
    assert await migrate(consumer) == []
    async with await psycopg.AsyncConnection.connect(fresh_db, autocommit=True) as conn:
        await conn.execute(
            "DELETE FROM schema_migrations WHERE version = (SELECT max(version) FROM schema_migrations)"
        )
    with pytest.raises(SchemaBehind, match="run `noetl db migrate` as the schema's owner"):
        await migrate(consumer)


async def test_the_login_password_never_reaches_the_server_in_clear(fresh_db: str) -> None:
    password = secrets.token_urlsafe(12)
    await migrate(fresh_db, consumer_password=password)
    async with await psycopg.AsyncConnection.connect(fresh_db) as conn:
        cur = await conn.execute("SELECT rolpassword FROM pg_authid WHERE rolname = %s", (CONSUMER_ROLE,))
        stored = (await cur.fetchone())[0]
    assert stored.startswith("SCRAM-SHA-256$4096:") and password not in stored
    salt = base64.b64decode(stored.split("$")[1].split(":")[1])
    assert stored == scram_verifier(password, salt=salt)
