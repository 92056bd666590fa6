"""The outbox relay: event rows to the events stream, in order, at least once.

Each event is published with `Nats-Msg-Id` derived from its row, so a relay that dies between
publishing and marking the row republishes into JetStream's duplicate window and nothing is
doubled. One relay is active at a time (a session advisory lock); others wait to take over.
"""

from __future__ import annotations

import asyncio
import logging

from psycopg import AsyncConnection

from noetl.bus.connection import Bus
from noetl.bus.envelope import MSG_ID_HEADER
from noetl.bus.publish import AckedPublisher
from noetl.store import outbox
from noetl.store.db import connect

log = logging.getLogger(__name__)

RELAY_LOCK = 0x6E6F65746C02
BATCH = 1000
IDLE_WAKE = 1.0
ACK_TIMEOUT = 10.0  # no ack by then: the relay starts over and republishes (deduplicated)


async def relay_pending(conn: AsyncConnection, publisher: AckedPublisher, since: int = 0) -> int:
    """Publish every queued event from id `since` on; returns how many."""
    total = 0
    while True:
        rows = await outbox.unpublished(conn, BATCH, since)
        if not rows:
            return total
        await publisher.publish_all(
            [(row["subject"], row["envelope"].encode(), {MSG_ID_HEADER: row["message_id"]}) for row in rows],
            ACK_TIMEOUT,
        )
        await outbox.mark_published(conn, [row["event_id"] for row in rows])
        total += len(rows)
        # A lower id not visible yet belongs to a transaction whose commit will notify us of it.
        since = rows[-1]["event_id"] + 1


async def run_relay(dsn: str, bus: Bus, stop: asyncio.Event) -> None:
    while not stop.is_set():
        try:
            async with await connect(dsn) as conn:
                await _relay(conn, bus, stop)
        except Exception:
            log.exception("relay: failed; reconnecting")
            await asyncio.sleep(1.0)


async def _relay(conn: AsyncConnection, bus: Bus, stop: asyncio.Event) -> None:
    while not stop.is_set():
        cur = await conn.execute("SELECT pg_try_advisory_lock(%s) AS held", (RELAY_LOCK,))
        row = await cur.fetchone()
        if row and row["held"]:
            break
        await asyncio.sleep(IDLE_WAKE)
    await conn.execute("LISTEN noetl_outbox")
    log.info("relay: active")
    publisher = AckedPublisher(bus.nc)
    await publisher.start()
    try:
        await _relay_until(conn, publisher, stop)
    finally:
        await publisher.stop()


async def _relay_until(conn: AsyncConnection, publisher: AckedPublisher, stop: asyncio.Event) -> None:
    since = 0  # the whole queue first: what an earlier relay left
    while not stop.is_set():
        await relay_pending(conn, publisher, since)
        since = 0  # no word within IDLE_WAKE: a whole pass
        async for note in conn.notifies(timeout=IDLE_WAKE, stop_after=1):
            # Each committed insert names its lowest event id: scan from there.
            since = int(note.payload) if note.payload.isdigit() else 0
