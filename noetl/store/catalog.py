"""SQL for the playbook catalog."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg import AsyncConnection
from psycopg.rows import class_row
from psycopg.types.json import Jsonb

from noetl.contracts.catalog import CatalogQuery
from noetl.store.db import pages

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
# For reads: the documents as JSON text, passed on as they are stored.
TEXT_COLUMNS = "catalog_id, path, version, kind, content, payload::text, meta::text, created_at"


@dataclass(frozen=True, slots=True)
class StoredEntry:
    catalog_id: int
    path: str
    version: int
    kind: str
    content: str
    payload: str
    meta: str | None
    created_at: datetime


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
    cur = await conn.execute(*_by_path(COLUMNS, path, version))
    return await cur.fetchone()


async def stored_by_path(conn: AsyncConnection, path: str, version: int | None) -> StoredEntry | None:
    """`by_path`, the documents as their JSON text."""
    async with conn.cursor(row_factory=class_row(StoredEntry)) as cur:
        await cur.execute(*_by_path(TEXT_COLUMNS, path, version))
        return await cur.fetchone()


def _by_path(columns: str, path: str, version: int | None) -> tuple[str, tuple[Any, ...]]:
    if version is None:
        return f"SELECT {columns} FROM catalog WHERE path = %s ORDER BY version DESC LIMIT 1", (path,)
    return f"SELECT {columns} FROM catalog WHERE path = %s AND version = %s", (path, version)


ENTRIES = f"""
SELECT {TEXT_COLUMNS} FROM catalog
WHERE (%(resource_type)s::text IS NULL OR kind = %(resource_type)s)
ORDER BY catalog_id DESC
LIMIT %(limit)s OFFSET %(offset)s
"""
PAGE_ROWS = 64  # a playbook's text may be as long as a request body


def entries(conn: AsyncConnection, query: CatalogQuery) -> AsyncIterator[list[StoredEntry]]:
    """The entries a listing asks for, newest first, a page at a time."""
    return pages(conn, ENTRIES, query.model_dump(), class_row(StoredEntry), PAGE_ROWS)
