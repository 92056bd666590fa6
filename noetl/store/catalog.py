"""SQL for the playbook catalog."""

from __future__ import annotations

from typing import Any

from psycopg import AsyncConnection
from psycopg.types.json import Jsonb

# The counter row's lock serialises registrations of one path across consumers and batches.
NEXT_VERSION = """
INSERT INTO catalog_paths (path, latest_version) VALUES (%s, 1)
ON CONFLICT (path) DO UPDATE SET latest_version = catalog_paths.latest_version + 1
RETURNING latest_version
"""

INSERT = """
INSERT INTO catalog (path, version, kind, content, payload, meta)
VALUES (%s, %s, %s, %s, %s, %s)
RETURNING catalog_id, path, version, kind, created_at
"""

COLUMNS = "catalog_id, path, version, kind, content, payload, meta, created_at"


async def add(
    conn: AsyncConnection, *, path: str, kind: str, content: str, payload: dict[str, Any]
) -> dict[str, Any]:
    cur = await conn.execute(NEXT_VERSION, (path,))
    row = await cur.fetchone()
    assert row is not None
    cur = await conn.execute(INSERT, (path, row["latest_version"], kind, content, Jsonb(payload), None))
    added = await cur.fetchone()
    assert added is not None
    return added


async def by_id(conn: AsyncConnection, catalog_id: int) -> dict[str, Any] | None:
    cur = await conn.execute(f"SELECT {COLUMNS} FROM catalog WHERE catalog_id = %s", (catalog_id,))
    return await cur.fetchone()


async def by_path(conn: AsyncConnection, path: str, version: int | None) -> dict[str, Any] | None:
    """The entry at `version`, or the latest when `version` is None."""
    if version is None:
        cur = await conn.execute(
            f"SELECT {COLUMNS} FROM catalog WHERE path = %s ORDER BY version DESC LIMIT 1", (path,)
        )
    else:
        cur = await conn.execute(
            f"SELECT {COLUMNS} FROM catalog WHERE path = %s AND version = %s", (path, version)
        )
    return await cur.fetchone()


async def entries(conn: AsyncConnection, kind: str | None) -> list[dict[str, Any]]:
    cur = await conn.execute(
        f"SELECT {COLUMNS} FROM catalog WHERE (%(kind)s::text IS NULL OR kind = %(kind)s) "
        "ORDER BY catalog_id DESC",
        {"kind": kind},
    )
    return await cur.fetchall()
