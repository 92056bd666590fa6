"""Processed commands (exactly-once effect) and dead letters."""

from __future__ import annotations

from typing import Any

from psycopg import AsyncConnection
from psycopg.types.json import Jsonb

from noetl.contracts.fields import escaped

STORED = """
SELECT request_id, fingerprint, outcome FROM processed_commands WHERE request_id = ANY(%s)
"""

RECORD = """
INSERT INTO processed_commands (request_id, type, fingerprint, outcome)
SELECT request_id, type, fingerprint, outcome
FROM jsonb_to_recordset(%s::jsonb) AS c(request_id text, type text, fingerprint text, outcome jsonb)
ON CONFLICT (request_id) DO NOTHING
"""

DEAD_LETTER = """
INSERT INTO dead_letters (subject, consumer, reason, headers, data, deliveries)
VALUES (%s, %s, %s, %s, %s, %s) RETURNING id
"""


async def stored(conn: AsyncConnection, request_ids: list[str]) -> dict[str, dict[str, Any]]:
    """request id -> {"fingerprint", "outcome"} for those already applied."""
    if not request_ids:
        return {}
    cur = await conn.execute(STORED, (request_ids,))
    return {row["request_id"]: row for row in await cur.fetchall()}


async def record(conn: AsyncConnection, rows: list[tuple[str, str, str | None, dict[str, Any]]]) -> None:
    """Record (request_id, type, fingerprint, outcome) rows."""
    if not rows:
        return
    batch = [
        {"request_id": rid, "type": kind, "fingerprint": fingerprint, "outcome": outcome}
        for rid, kind, fingerprint, outcome in rows
    ]
    await conn.execute(RECORD, (Jsonb(batch),))


async def dead_letter(
    conn: AsyncConnection,
    *,
    subject: str,
    consumer: str,
    reason: str,
    headers: dict[str, str] | None,
    data: bytes,
    deliveries: int | None,
) -> int:
    # What is set aside may hold anything: its text is kept escaped, its bytes as they came.
    kept = Jsonb({escaped(k): escaped(v) for k, v in headers.items()}) if headers else None
    cur = await conn.execute(
        DEAD_LETTER, (escaped(subject), consumer, escaped(reason), kept, data, deliveries)
    )
    row = await cur.fetchone()
    assert row is not None
    return int(row["id"])
