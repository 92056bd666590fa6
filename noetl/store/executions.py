"""SQL for executions and their events."""

from __future__ import annotations

from typing import Any

from psycopg import AsyncConnection
from psycopg.types.json import Jsonb

from noetl.contracts.execution import TERMINAL

# Column name and its SQL type, in insert order.
COLUMNS = (
    ("catalog_id", "bigint"),
    ("path", "text"),
    ("version", "int"),
    ("type", "text"),
    ("status", "text"),
    ("workload", "jsonb"),
    ("parameters", "jsonb"),
    ("merge", "bool"),
    ("parent_execution_id", "text"),
    ("parent_event_id", "text"),
    ("parent_step", "text"),
    ("metadata", "jsonb"),
    ("depth", "int"),
)
_NAMES = ", ".join(name for name, _ in COLUMNS)

# The batch travels as one JSON document: one json.dumps is far cheaper than dumping a Python
# list per column. Only the columns the database fills come back (the caller has the rest, and
# reading the JSON columns back would parse them again). Identities are drawn in the order of the
# sorted SELECT, so ordering by execution_id gives the rows back in the order they were given.
INSERT_MANY = f"""
WITH added AS (
    INSERT INTO executions ({_NAMES})
    SELECT {_NAMES}
    FROM ROWS FROM (jsonb_to_recordset(%s::jsonb) AS ({", ".join(f"{n} {t}" for n, t in COLUMNS)}))
         WITH ORDINALITY AS u({_NAMES}, ord)
    ORDER BY u.ord
    RETURNING execution_id, progress, result, error, start_time, end_time, updated_at
)
SELECT * FROM added ORDER BY execution_id
"""


async def add(conn: AsyncConnection, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """New executions (dicts keyed by the COLUMNS' names) in one statement; their rows in the
    same order."""
    if not rows:
        return []
    cur = await conn.execute(INSERT_MANY, (Jsonb(rows),))
    return [{**given, **filled} for given, filled in zip(rows, await cur.fetchall(), strict=True)]


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


async def advance(conn: AsyncConnection, execution_id: int, *, steps: int, progress: int | None) -> None:
    """Count the steps dispatched, and record the progress when it is known."""
    await conn.execute(
        "UPDATE executions SET steps = steps + %s, progress = COALESCE(%s, progress), updated_at = now() "
        "WHERE execution_id = %s",
        (steps, progress, execution_id),
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


EVENT_COUNTS = """
SELECT type, count(*) AS n FROM events
WHERE entity ->> 'domain' = 'execution' AND (entity ->> 'execution_id')::bigint = %s
GROUP BY type ORDER BY type
"""

LAST_ERRORS = """
SELECT payload ->> 'node_name' AS node_name, payload ->> 'error' AS error, created_at FROM events
WHERE entity ->> 'domain' = 'execution' AND (entity ->> 'execution_id')::bigint = %s
  AND type = 'action_error'
ORDER BY created_at DESC, event_id DESC LIMIT 3
"""


async def event_summary(
    conn: AsyncConnection, execution_id: int
) -> tuple[dict[str, int], list[dict[str, Any]]]:
    """Events by type, and the last three action errors."""
    cur = await conn.execute(EVENT_COUNTS, (execution_id,))
    counts = {row["type"]: row["n"] for row in await cur.fetchall()}
    cur = await conn.execute(LAST_ERRORS, (execution_id,))
    return counts, await cur.fetchall()
