"""Versioned schema migrations: each file once, in order, safe from two processes at once."""

from __future__ import annotations

import logging
from importlib import resources

import psycopg

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


async def migrate(dsn: str) -> list[int]:
    """Apply what is missing; returns the versions applied by this call."""
    applied: list[int] = []
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        await conn.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK,))
        try:
            await conn.execute(CREATE_LEDGER)
            cur = await conn.execute("SELECT version FROM schema_migrations")
            done = {row[0] for row in await cur.fetchall()}
            for version, name, sql in migration_files():
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
        finally:
            await conn.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK,))
    return applied
