"""SQL for executions and their events."""

from __future__ import annotations

from typing import Any

from psycopg import AsyncConnection
from psycopg.types.json import Jsonb

from noetl.contracts.execution import TERMINAL

COLUMNS = (
    "catalog_id",
    "path",
    "version",
    "type",
    "status",
    "workload",
    "parameters",
    "merge",
    "parent_execution_id",
    "parent_event_id",
    "parent_step",
    "metadata",
)
JSON_COLUMNS = frozenset({"workload", "parameters", "metadata"})

# Identities are drawn in the order of the sorted SELECT, so ordering by execution_id gives the
# rows back in the order they were given.
INSERT_MANY = f"""
WITH added AS (
    INSERT INTO executions ({", ".join(COLUMNS)})
    SELECT {", ".join(f"u.{c}" for c in COLUMNS)}
    FROM unnest(%s::bigint[], %s::text[], %s::int[], %s::text[], %s::text[], %s::jsonb[], %s::jsonb[],
                %s::bool[], %s::text[], %s::text[], %s::text[], %s::jsonb[])
         WITH ORDINALITY AS u({", ".join(COLUMNS)}, ord)
    ORDER BY u.ord
    RETURNING *
)
SELECT * FROM added ORDER BY execution_id
"""


async def add(conn: AsyncConnection, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """New executions (dicts keyed by COLUMNS) in one statement; their rows in the same order."""
    if not rows:
        return []
    columns = [
        [Jsonb(r[c]) if c in JSON_COLUMNS and r[c] is not None else r[c] for r in rows] for c in COLUMNS
    ]
    cur = await conn.execute(INSERT_MANY, columns)
    return await cur.fetchall()


async def get(conn: AsyncConnection, execution_id: int) -> dict[str, Any] | None:
    cur = await conn.execute("SELECT * FROM executions WHERE execution_id = %s", (execution_id,))
    return await cur.fetchone()


FINISH = """
UPDATE executions SET status = %s, result = %s, error = %s,
       progress = CASE WHEN %s THEN 100 ELSE progress END, end_time = now(), updated_at = now()
WHERE execution_id = %s AND status <> ALL(%s)
RETURNING *
"""


async def finish(
    conn: AsyncConnection, execution_id: int, *, status: str, result: Any = None, error: str | None = None
) -> dict[str, Any] | None:
    """End an execution; None if it had already ended (a terminal state is never overwritten)."""
    cur = await conn.execute(
        FINISH, (status, Jsonb(result), error, status == "completed", execution_id, list(TERMINAL))
    )
    return await cur.fetchone()


async def set_progress(conn: AsyncConnection, execution_id: int, progress: int) -> None:
    await conn.execute(
        "UPDATE executions SET progress = %s, updated_at = now() WHERE execution_id = %s",
        (progress, execution_id),
    )


# Terminal states are never overwritten: the WHERE clause is the state machine's guard.
CANCEL = """
UPDATE executions SET status = 'cancelled', end_time = now(), updated_at = now()
WHERE execution_id = %s AND status <> ALL(%s)
RETURNING *
"""


async def cancel(conn: AsyncConnection, execution_id: int) -> dict[str, Any] | None:
    """The cancelled row, or None when there is nothing to cancel (unknown or already ended)."""
    cur = await conn.execute(CANCEL, (execution_id, list(TERMINAL)))
    return await cur.fetchone()


LIST = """
SELECT * FROM executions
WHERE (%(status)s::text IS NULL OR status = %(status)s)
  AND (%(path)s::text IS NULL OR path = %(path)s)
ORDER BY execution_id DESC
LIMIT %(limit)s OFFSET %(offset)s
"""


async def page(
    conn: AsyncConnection, *, status: str | None, path: str | None, limit: int, offset: int
) -> list[dict[str, Any]]:
    cur = await conn.execute(LIST, {"status": status, "path": path, "limit": limit, "offset": offset})
    return await cur.fetchall()


EVENTS = """
SELECT event_id, type, payload, created_at FROM events
WHERE entity ->> 'domain' = 'execution' AND (entity ->> 'execution_id')::bigint = %s
ORDER BY event_id
"""


async def events(conn: AsyncConnection, execution_id: int) -> list[dict[str, Any]]:
    cur = await conn.execute(EVENTS, (execution_id,))
    return await cur.fetchall()
