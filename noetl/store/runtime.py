"""SQL for the runtime registry. Every write takes a whole batch in one statement."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from psycopg import AsyncConnection
from psycopg.rows import class_row
from psycopg.types.json import Jsonb

from noetl.contracts.runtime import ComponentInfo, ComponentQuery, RuntimeRegistration
from noetl.store.db import pages


@dataclass(frozen=True, slots=True)
class Registered:
    runtime_id: int
    kind: str
    name: str
    created: bool


@dataclass(frozen=True, slots=True)
class Beaten:
    """A beat worth telling the consumer about: its component is unknown (no `runtime_id`), came
    back online, or its sender waits for an answer."""

    runtime_id: int | None
    kind: str
    name: str
    came_back: bool

    @property
    def unknown(self) -> bool:
        return self.runtime_id is None


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
# table, and no deadlock between two consumers. Most beats need no answer, so only the unknown,
# the returning and the awaited ones come back. A beat travels as [kind, name, sent_at in
# microseconds since the epoch, answer wanted]: exact, and cheaper to encode than ISO text.
HEARTBEAT = """
WITH prev AS (
    SELECT b->>0 AS kind, b->>1 AS name, r.runtime_id, r.status, (b->>3)::boolean AS answer,
        timestamptz 'epoch' + (b->>2)::bigint * interval '1 microsecond' AS sent_at
    FROM jsonb_array_elements(%(beats)s::jsonb) AS b
    LEFT JOIN LATERAL (
        SELECT runtime_id, status FROM runtime_components
        WHERE kind = b->>0 AND name = b->>1
        FOR UPDATE
    ) r ON true
), beaten AS (
    UPDATE runtime_components r SET
        heartbeat = GREATEST(r.heartbeat, LEAST(p.sent_at, now())),
        status = CASE WHEN r.status = 'offline' AND p.fresh THEN 'ready' ELSE r.status END,
        updated_at = CASE WHEN r.status = 'offline' AND p.fresh THEN now() ELSE r.updated_at END
    FROM (SELECT *, sent_at > now() - make_interval(secs => %(offline_after)s) AS fresh FROM prev) p
    WHERE r.runtime_id = p.runtime_id
    RETURNING r.runtime_id, r.kind, r.name, p.answer,
        (p.status = 'offline' AND r.status <> 'offline') AS came_back
)
SELECT runtime_id, kind, name, came_back FROM beaten WHERE came_back OR answer
UNION ALL
SELECT NULL, kind, name, false FROM prev WHERE runtime_id IS NULL
"""

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MICROSECOND = timedelta(microseconds=1)


async def beat(
    conn: AsyncConnection, beats: dict[tuple[str, str], tuple[datetime, bool]], offline_after: float
) -> list[Beaten]:
    """Apply one collapsed beat per component: its latest `sent_at`, and whether it wants an answer."""
    batch = [
        [kind, name, (sent_at - EPOCH) // MICROSECOND, answer]
        for (kind, name), (sent_at, answer) in sorted(beats.items())
    ]
    async with conn.cursor(row_factory=class_row(Beaten)) as cur:
        await cur.execute(HEARTBEAT, {"beats": Jsonb(batch), "offline_after": offline_after})
        return await cur.fetchall()


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
  AND (%(runtime)s::text IS NULL OR lower(runtime->>'type') = lower(%(runtime)s))
  AND (%(status)s::text IS NULL OR status = %(status)s)
ORDER BY name
LIMIT %(limit)s OFFSET %(offset)s
"""
PAGE_ROWS = 2000


def list_components(conn: AsyncConnection, query: ComponentQuery) -> AsyncIterator[list[ComponentInfo]]:
    """The components a listing asks for, ordered by name, a page at a time."""
    return pages(conn, LIST, query.model_dump(), class_row(ComponentInfo), PAGE_ROWS)
