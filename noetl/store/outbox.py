"""The outbox: events are rows written in the transaction of the change they describe, each queued
in `outbox` until the relay has published it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from psycopg import AsyncConnection
from psycopg.types.json import Jsonb


@dataclass(eq=False, slots=True)
class NewEvent:
    """An event to write. `time` is when it happened (default: now, not the transaction's start);
    `id` may be drawn beforehand (`noetl.store.jobs.allocate`) so that other rows can name it, and
    `parent` (an event of the same batch, or an id) becomes the payload's `parent_event_id`."""

    type: str
    subject: str
    entity: dict[str, str]
    payload: dict[str, Any] = field(default_factory=dict)
    time: datetime = field(default_factory=lambda: datetime.now(UTC))
    id: int | None = None
    parent: NewEvent | int | None = None

    def row(self) -> dict[str, Any]:
        payload = self.payload
        if self.parent is not None:
            parent = self.parent.id if isinstance(self.parent, NewEvent) else self.parent
            payload = {**payload, "parent_event_id": None if parent is None else str(parent)}
        return {
            "event_id": self.id,
            "type": self.type,
            "subject": self.subject,
            "entity": self.entity,
            "payload": payload,
            "created_at": self.time.isoformat(),
        }


# Events without a drawn id get the next one here.
INSERT_EVENTS = """
WITH added AS (
    INSERT INTO events (event_id, type, subject, entity, payload, created_at) OVERRIDING SYSTEM VALUE
    SELECT COALESCE(e.event_id, nextval(pg_get_serial_sequence('events', 'event_id'))),
           e.type, e.subject, e.entity, e.payload, e.created_at
    FROM jsonb_to_recordset(%s::jsonb)
        AS e(event_id bigint, type text, subject text, entity jsonb, payload jsonb, created_at timestamptz)
    RETURNING event_id
)
INSERT INTO outbox (event_id) SELECT event_id FROM added
"""


# Inside `batched`, events are collected and written by one INSERT at the end of the block.
_PENDING: ContextVar[list[NewEvent] | None] = ContextVar("noetl_outbox_pending", default=None)


@asynccontextmanager
async def batched(conn: AsyncConnection) -> AsyncIterator[None]:
    """Collect the block's events and insert them together (in order) when it ends without error."""
    pending: list[NewEvent] = []
    token = _PENDING.set(pending)
    try:
        yield
    finally:
        _PENDING.reset(token)
    await _insert(conn, pending)


async def add_events(conn: AsyncConnection, events: list[NewEvent]) -> None:
    if not events:
        return
    pending = _PENDING.get()
    if pending is not None:
        pending.extend(events)
        return
    await _insert(conn, events)


async def _insert(conn: AsyncConnection, events: list[NewEvent]) -> None:
    if not events:
        return
    await conn.execute(INSERT_EVENTS, (Jsonb([event.row() for event in events]),))


# Events are looked up by primary key, so the plan stays an index scan whatever the queue's
# statistics say. The envelope (`noetl.bus.envelope.Event`) is built here as JSON text, and the
# relay only forwards it. The message id is unique across database resets too (an event id alone
# could repeat inside JetStream's duplicate window).
UNPUBLISHED = """
SELECT e.event_id, e.subject,
       e.event_id::text || '-' || floor(extract(epoch FROM e.created_at) * 1000000)::bigint AS message_id,
       json_build_object('id', e.event_id::text, 'type', e.type, 'time', e.created_at,
                         'entity', e.entity, 'payload', e.payload)::text AS envelope
FROM events e
WHERE e.event_id = ANY(ARRAY(SELECT event_id FROM outbox WHERE event_id >= %s ORDER BY event_id LIMIT %s))
ORDER BY e.event_id
"""

MARK_PUBLISHED = "DELETE FROM outbox WHERE event_id = ANY(%s)"


async def unpublished(conn: AsyncConnection, limit: int, since: int = 0) -> list[dict[str, Any]]:
    """Queued events from id `since` on, oldest first."""
    cur = await conn.execute(UNPUBLISHED, (since, limit))
    return await cur.fetchall()


async def mark_published(conn: AsyncConnection, event_ids: list[int]) -> None:
    await conn.execute(MARK_PUBLISHED, (event_ids,))
