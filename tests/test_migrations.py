"""Schema migrations: each file once, in order; run twice; run from two processes at once."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator

import psycopg
import pytest
from conftest import Servers, noetl_command

from noetl.store.migrate import migrate, migration_files

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
