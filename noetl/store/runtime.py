"""SQL for the runtime registry. Every write takes a whole batch in one statement."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg import AsyncConnection
from psycopg.types.json import Jsonb

from noetl.contracts.runtime import RuntimeRegistration


@dataclass(frozen=True, slots=True)
class Registered:
    runtime_id: int
    kind: str
    name: str
    created: bool


@dataclass(frozen=True, slots=True)
class Beaten:
    runtime_id: int
    kind: str
    name: str
    came_back: bool


# Rows are sorted by (kind, name) before every batched write, so two consumers touching the same
# components lock them in the same order and never deadlock. A batch travels as one JSON array
# (`jsonb_to_recordset`): psycopg would encode parallel arrays element by element in Python.

UPSERT = """
INSERT INTO runtime_components AS r (kind, name, uri, status, labels, capacity, runtime, heartbeat)
SELECT u.kind, u.name, u.uri, u.status, u.labels, u.capacity, u.runtime, now()
FROM jsonb_to_recordset(%s::jsonb)
    AS u(kind text, name text, uri text, status text, labels jsonb, capacity int, runtime jsonb)
ON CONFLICT (kind, name) DO UPDATE SET
    uri = excluded.uri,
    status = excluded.status,
    labels = excluded.labels,
    capacity = excluded.capacity,
    runtime = excluded.runtime,
    heartbeat = now(),
    updated_at = now()
RETURNING r.runtime_id, r.kind, r.name, (r.xmax = 0) AS created
"""


async def upsert(conn: AsyncConnection, regs: list[RuntimeRegistration]) -> list[Registered]:
    """Register or re-register: the (kind, name) keeps its runtime_id; the rest is replaced."""
    latest = {(r.kind, r.name): r for r in regs}
    rows = [latest[key] for key in sorted(latest)]
    batch = [
        {
            "kind": r.kind,
            "name": r.name,
            "uri": r.uri,
            "status": r.status,
            "labels": r.labels,
            "capacity": r.capacity,
            "runtime": r.runtime_metadata(),
        }
        for r in rows
    ]
    cur = await conn.execute(UPSERT, (Jsonb(batch),))
    return [Registered(**row) for row in await cur.fetchall()]


DEREGISTER = """
UPDATE runtime_components r SET status = 'offline', updated_at = now()
FROM (SELECT * FROM jsonb_to_recordset(%s::jsonb) AS u(kind text, name text) ORDER BY kind, name) u
WHERE r.kind = u.kind AND r.name = u.name
RETURNING r.runtime_id, r.kind, r.name
"""


async def mark_offline(conn: AsyncConnection, keys: list[tuple[str, str]]) -> list[dict[str, Any]]:
    """Deregister: never delete, mark offline. Unknown keys are simply not returned."""
    keys = sorted(set(keys))
    cur = await conn.execute(DEREGISTER, (Jsonb([{"kind": k, "name": n} for k, n in keys]),))
    return await cur.fetchall()


# A beat never moves the heartbeat backwards, and a beat from the future counts as now. Only a
# fresh beat (younger than the offline threshold) brings an offline component back. Each beat
# locks its row through the (kind, name) index in the sorted order of the batch: no scan of the
# table, and no deadlock between two consumers.
HEARTBEAT = """
WITH prev AS (
    SELECT r.runtime_id, r.status, b.sent_at, b.sent_at > now() - make_interval(secs => %s) AS fresh
    FROM jsonb_to_recordset(%s::jsonb) AS b(kind text, name text, sent_at timestamptz)
    CROSS JOIN LATERAL (
        SELECT runtime_id, status FROM runtime_components
        WHERE kind = b.kind AND name = b.name
        FOR UPDATE
    ) r
)
UPDATE runtime_components r SET
    heartbeat = GREATEST(r.heartbeat, LEAST(p.sent_at, now())),
    status = CASE WHEN r.status = 'offline' AND p.fresh THEN 'ready' ELSE r.status END,
    updated_at = CASE WHEN r.status = 'offline' AND p.fresh THEN now() ELSE r.updated_at END
FROM prev p
WHERE r.runtime_id = p.runtime_id
RETURNING r.runtime_id, r.kind, r.name, (p.status = 'offline' AND r.status <> 'offline') AS came_back
"""


async def beat(
    conn: AsyncConnection, beats: dict[tuple[str, str], datetime], offline_after: float
) -> dict[tuple[str, str], Beaten]:
    """Apply one collapsed beat per component; the keys missing from the result are unknown."""
    keys = sorted(beats)
    batch = [{"kind": kind, "name": name, "sent_at": beats[kind, name].isoformat()} for kind, name in keys]
    cur = await conn.execute(HEARTBEAT, (offline_after, Jsonb(batch)))
    return {(row["kind"], row["name"]): Beaten(**row) for row in await cur.fetchall()}


SWEEP = """
UPDATE runtime_components SET status = 'offline', updated_at = now()
WHERE status <> 'offline' AND heartbeat < now() - make_interval(secs => %s)
RETURNING runtime_id, kind, name, heartbeat
"""


async def sweep(conn: AsyncConnection, offline_after: float) -> list[dict[str, Any]]:
    """Mark silent components offline. A concurrent sweeper re-checks each row after the lock,
    so a component is marked (and announced) once."""
    cur = await conn.execute(SWEEP, (offline_after,))
    return await cur.fetchall()


LIST = """
SELECT name, runtime, status, capacity, labels, heartbeat, created_at, updated_at
FROM runtime_components
WHERE kind = %(kind)s
  AND (%(runtime)s::text IS NULL OR runtime->>'type' = %(runtime)s)
  AND (%(status)s::text IS NULL OR status = %(status)s)
ORDER BY name
"""


async def list_components(
    conn: AsyncConnection, kind: str, runtime: str | None, status: str | None
) -> list[dict[str, Any]]:
    cur = await conn.execute(LIST, {"kind": kind, "runtime": runtime, "status": status})
    return await cur.fetchall()
