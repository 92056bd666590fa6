"""Versioned schema migrations: each file once, in order, safe from two processes at once."""

from __future__ import annotations

import logging
from importlib import resources
from typing import Any

import psycopg

from noetl.problems import Problem
from noetl.store import roles

log = logging.getLogger(__name__)

# Any fixed 64-bit number; it serialises migrators across processes.
MIGRATION_LOCK = 0x6E6F65746C

CREATE_LEDGER = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    integer PRIMARY KEY,
    name       text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""


def migration_files() -> list[tuple[int, str, str]]:
    """(version, name, sql) for every `NNNN_name.sql`, ordered by version."""
    found = []
    for entry in resources.files("noetl.store.migrations").iterdir():
        if entry.name.endswith(".sql"):
            version, _, rest = entry.name.partition("_")
            found.append((int(version), rest.removesuffix(".sql"), entry.read_text()))
    return sorted(found)


class SchemaBehind(Problem):
    """The schema lacks migrations and this role may not apply them (a consumer's own role)."""


async def _applied(conn: psycopg.AsyncConnection[Any]) -> set[int] | None:
    """The versions in the ledger; None before there is one."""
    cur = await conn.execute("SELECT to_regclass('schema_migrations') IS NOT NULL")
    row = await cur.fetchone()
    if not row or not row[0]:
        return None
    cur = await conn.execute("SELECT version FROM schema_migrations")
    return {row[0] for row in await cur.fetchall()}


async def migrate(dsn: str, *, consumer_password: str | None = None) -> list[int]:
    """Apply what is missing; returns the versions applied by this call. A schema already current
    needs nothing but the ledger's SELECT, so a consumer's least-privilege role passes here.
    `consumer_password`: give the consumers' role (`noetl_consumer`) a login with it."""
    applied: list[int] = []
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        await conn.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK,))
        try:
            done = await _applied(conn)
            missing = [m for m in migration_files() if done is None or m[0] not in done]
            if missing and not await _owns_schema(conn):
                raise SchemaBehind(
                    f"the schema lacks migration(s) {[m[0] for m in missing]} and this database role "
                    "may not apply them: run `noetl db migrate` as the schema's owner"
                )
            if done is None:
                await conn.execute(CREATE_LEDGER)
                done = set()
            for version, name, sql in missing:
                if version in done:
                    continue
                async with conn.transaction():
                    await conn.execute(sql)
                    await conn.execute(
                        "INSERT INTO schema_migrations (version, name) VALUES (%s, %s)",
                        (version, name),
                    )
                log.info("store: applied migration %04d %s", version, name)
                applied.append(version)
            if consumer_password is not None:
                await roles.grant_login(conn, roles.CONSUMER_ROLE, consumer_password)
        finally:
            await conn.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK,))
    return applied


async def _owns_schema(conn: psycopg.AsyncConnection[Any]) -> bool:
    cur = await conn.execute("SELECT has_schema_privilege(current_schema(), 'CREATE')")
    row = await cur.fetchone()
    return bool(row and row[0])
