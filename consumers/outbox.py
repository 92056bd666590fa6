"""The outbox relay: event rows to their streams (events, and the jobs a broker dispatches), in
order, each once.

Each event is published with `Nats-Msg-Id` derived from its row, so a relay that dies between
publishing and marking the row republishes into JetStream's duplicate window and nothing is
doubled. Every event acked by JetStream is marked at once, even when another of its batch failed,
so a failure never makes the relay publish an event again. An event that cannot be published at
all (a malformed subject, too large for a message, refused by the stream) is set aside as a dead
letter and the relay moves on; while the bus is away, it waits and retries what is left. One relay
is active at a time (a session advisory lock); others wait to take over.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

from nats.errors import Error as NatsError
from nats.errors import MaxPayloadError
from nats.js.errors import APIError, NoStreamResponseError
from psycopg import AsyncConnection

from consumers.base import dead_letter
from noetl.bus import subjects
from noetl.bus.connection import Bus
from noetl.bus.envelope import MSG_ID_HEADER
from noetl.bus.publish import AckedPublisher
from noetl.bus.streams import captured, ensure_streams
from noetl.contracts.fields import int64
from noetl.metrics import DEAD_LETTERS, OUTBOX_PUBLISHED
from noetl.store import outbox
from noetl.store.db import connect

log = logging.getLogger(__name__)

RELAY = "outbox-relay"
RELAY_LOCK = 0x6E6F65746C02
BATCH = 1000
IDLE_WAKE = 1.0
ACK_TIMEOUT = 10.0
RETRY_DELAY = 0.5
HEADERS_ROOM = 512  # the message id header and the protocol line, with room to spare


class Unpublishable(ValueError):
    """An event that no retry can publish: it is set aside as a dead letter."""


@dataclass(frozen=True, slots=True)
class Pass:
    """What one scan of the queue did."""

    published: int
    set_aside: int
    onward: int | None  # the batch was full: the next id to scan from, as more may be queued
    retry: bool  # the bus did not take everything: try the rest again


def _refusal(row: dict[str, Any], max_payload: int) -> str | None:
    """Why `row` cannot be published, seen before publishing it."""
    subject = row["subject"]
    if not subjects.publishable(subject) or not captured(subject):
        return f"the subject {subject!r} is not one that a stream takes"
    if len(row["envelope"].encode()) + HEADERS_ROOM > max_payload:
        return f"the event is larger than a NATS message may be ({max_payload} bytes)"
    return None


def _permanent(exc: BaseException) -> bool:
    """A refusal that publishing again would meet again."""
    if isinstance(exc, MaxPayloadError):
        return True
    return isinstance(exc, APIError) and not isinstance(exc, NoStreamResponseError) and (exc.code or 0) < 500


async def relay_once(conn: AsyncConnection, publisher: AckedPublisher, since: int, replicas: int) -> Pass:
    """Publish one batch of queued events from id `since` on (`replicas`: of a stream declared again)."""
    rows = await outbox.unpublished(conn, BATCH, since)
    max_payload = publisher.nc.max_payload
    refused: list[tuple[dict[str, Any], str]] = []
    sendable: list[dict[str, Any]] = []
    for row in rows:
        reason = _refusal(row, max_payload)
        if reason is None:
            sendable.append(row)
        else:
            refused.append((row, reason))
    fates = await publisher.publish_each(
        [(r["subject"], r["envelope"].encode(), {MSG_ID_HEADER: r["message_id"]}) for r in sendable],
        ACK_TIMEOUT,
    )
    published = [row["event_id"] for row, fate in zip(sendable, fates, strict=True) if fate is None]
    retry = False
    for row, fate in zip(sendable, fates, strict=True):
        if fate is None:
            continue
        if _permanent(fate):
            refused.append((row, f"refused by JetStream: {fate!r}"))
        else:
            retry = True
            log.warning("relay: event %s not published yet (%r); retrying", row["event_id"], fate)
            if isinstance(fate, NoStreamResponseError):
                await _declare_streams(publisher, replicas)
    await outbox.mark_published(conn, published)
    OUTBOX_PUBLISHED.inc(len(published))
    await _set_aside(conn, refused)
    if refused:
        DEAD_LETTERS.labels(RELAY).inc(len(refused))
    onward = rows[-1]["event_id"] + 1 if len(rows) == BATCH else None
    return Pass(len(published), len(refused), onward, retry)


async def _declare_streams(publisher: AckedPublisher, replicas: int) -> None:
    try:
        await ensure_streams(publisher.nc.jetstream(), replicas)
    except NatsError as exc:
        log.debug("relay: cannot declare the streams yet: %r", exc)


async def _set_aside(conn: AsyncConnection, refused: list[tuple[dict[str, Any], str]]) -> None:
    """Dead letters for events that cannot be published, out of the queue in the same transaction.
    A dead-letter event that cannot be published is set aside without announcing it again."""
    if not refused:
        return
    async with conn.transaction():
        for row, reason in refused:
            await dead_letter(
                conn,
                consumer=RELAY,
                subject=row["subject"],
                reason=reason,
                data=row["envelope"].encode(),
                headers={MSG_ID_HEADER: row["message_id"]},
                announce=row["subject"] != subjects.DEAD_LETTER_EVENT,
            )
        await outbox.mark_published(conn, [row["event_id"] for row, _ in refused])


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
        await _relay_until(conn, publisher, stop, bus.replicas)
    finally:
        await publisher.stop()


async def _relay_until(
    conn: AsyncConnection, publisher: AckedPublisher, stop: asyncio.Event, replicas: int
) -> None:
    """Scan from where events may be waiting, as long as there is anything to publish.

    Each commit names the lowest event id it added, and every pass starts from the lowest id named
    since the last one: an id drawn before others but committed after them is published as soon as
    its commit is heard of, not once the queue runs dry. No word within IDLE_WAKE: a whole pass.
    """
    since: int | None = 0  # the whole queue first: what an earlier relay left
    while not stop.is_set():
        if since is None:
            since = await _noted(conn, IDLE_WAKE)
            if since is None:
                since = 0
        done = await relay_once(conn, publisher, since, replicas)
        if done.retry:
            await asyncio.sleep(RETRY_DELAY)
            continue  # from the same place: what was published has left the queue
        since = _lowest(await _noted(conn, 0), done.onward)


def _lowest(*ids: int | None) -> int | None:
    known = [i for i in ids if i is not None]
    return min(known) if known else None


async def _noted(conn: AsyncConnection, timeout: float) -> int | None:
    """The lowest event id named by the commits heard of within `timeout` (0: those already in),
    or None when none was."""
    lowest: int | None = None
    async for note in conn.notifies(timeout=timeout, stop_after=None if timeout == 0 else 1):
        named = int64(note.payload)
        lowest = _lowest(lowest, 0 if named is None else named)
    return lowest
