"""SQL for the credential store. Rows come back as `Row`s; the sealed bytes only where asked."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg import AsyncConnection
from psycopg.rows import class_row
from psycopg.types.json import Jsonb

from noetl.contracts.credentials import BIGINT_MAX, CredentialCommand, CredentialRef

COLUMNS = "id, name, type, meta, tags, description, created_at, updated_at"


@dataclass(frozen=True, slots=True)
class Row:
    id: int
    name: str
    type: str
    meta: dict[str, Any] | None
    tags: list[str]
    description: str | None
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class SealedRow(Row):
    data_encrypted: bytes


@dataclass(frozen=True, slots=True)
class JobGrant:
    status: str
    credentials: list[str]


UPSERT = f"""
INSERT INTO credentials (name, type, data_encrypted, meta, tags, description)
VALUES (%s, %s, %s, %s, %s, %s)
ON CONFLICT (name) DO UPDATE SET
    type = EXCLUDED.type,
    data_encrypted = EXCLUDED.data_encrypted,
    meta = EXCLUDED.meta,
    tags = EXCLUDED.tags,
    description = EXCLUDED.description,
    updated_at = now()
RETURNING {COLUMNS}
"""

LIST = f"""
SELECT {COLUMNS} FROM credentials
WHERE (%(type)s::text IS NULL OR type = %(type)s)
  AND (%(q)s::text IS NULL
       OR strpos(lower(name), lower(%(q)s)) > 0
       OR strpos(lower(coalesce(description, '')), lower(%(q)s)) > 0)
ORDER BY name
"""


def _where(ref: CredentialRef) -> tuple[str, Any]:
    return ("id = %s", ref.id) if ref.id is not None else ("name = %s", ref.name)


async def upsert(conn: AsyncConnection, command: CredentialCommand) -> Row:
    async with conn.cursor(row_factory=class_row(Row)) as cur:
        await cur.execute(
            UPSERT,
            (
                command.name,
                command.type,
                command.data_encrypted.encode(),
                Jsonb(command.meta) if command.meta is not None else None,
                command.tags,
                command.description,
            ),
        )
        row = await cur.fetchone()
    assert row is not None
    return row


async def delete(conn: AsyncConnection, ref: CredentialRef) -> Row | None:
    if ref.id is not None and ref.id > BIGINT_MAX:
        return None
    where, value = _where(ref)
    async with conn.cursor(row_factory=class_row(Row)) as cur:
        await cur.execute(f"DELETE FROM credentials WHERE {where} RETURNING {COLUMNS}", (value,))
        return await cur.fetchone()


async def listing(conn: AsyncConnection, kind: str | None, q: str | None) -> list[Row]:
    async with conn.cursor(row_factory=class_row(Row)) as cur:
        await cur.execute(LIST, {"type": kind, "q": q})
        return await cur.fetchall()


async def one(conn: AsyncConnection, ref: CredentialRef) -> SealedRow | None:
    if ref.id is not None and ref.id > BIGINT_MAX:
        return None
    where, value = _where(ref)
    async with conn.cursor(row_factory=class_row(SealedRow)) as cur:
        await cur.execute(f"SELECT {COLUMNS}, data_encrypted FROM credentials WHERE {where}", (value,))
        return await cur.fetchone()


async def by_names(conn: AsyncConnection, names: list[str]) -> list[SealedRow]:
    async with conn.cursor(row_factory=class_row(SealedRow)) as cur:
        await cur.execute(
            f"SELECT {COLUMNS}, data_encrypted FROM credentials WHERE name = ANY(%s) ORDER BY name", (names,)
        )
        return await cur.fetchall()


async def job_grant(conn: AsyncConnection, job_id: int) -> JobGrant | None:
    """A job's status and the credentials its step may fetch."""
    async with conn.cursor(row_factory=class_row(JobGrant)) as cur:
        await cur.execute("SELECT status, credentials FROM jobs WHERE job_id = %s", (job_id,))
        return await cur.fetchone()
