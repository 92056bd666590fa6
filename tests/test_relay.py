"""The outbox relay cannot be poisoned: an event it cannot publish is set aside as a dead letter
and the relay moves on; every other event reaches a subscriber once (a core subscriber sees every
publish, the duplicates JetStream drops included) and promptly, whatever happened around it."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import Counter
from collections.abc import AsyncIterator

import psycopg
import pytest
from conftest import Db, Servers, Stack, StackFactory, stream_events, wait_for
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from noetl.bus import subjects
from noetl.bus.envelope import MSG_ID_HEADER

GOOD = "noetl.evt.runtime.worker_pool.relayed.registered"


class Subscriber:
    """A core NATS subscriber of every event: it hears each publish, stored or not."""

    def __init__(self) -> None:
        self.ids: Counter[str] = Counter()
        self.arrived: dict[str, float] = {}

    async def on_msg(self, msg) -> None:
        event_id = json.loads(msg.data)["id"]
        self.ids[(msg.headers or {}).get(MSG_ID_HEADER, event_id)] += 1
        self.arrived.setdefault(event_id, time.monotonic())

    def has(self, *event_ids: int) -> bool:
        return all(str(e) in self.arrived for e in event_ids)


@pytest.fixture
async def subscriber(nc) -> AsyncIterator[Subscriber]:
    listener = Subscriber()
    sub = await nc.subscribe(subjects.EVENTS_ALL, cb=listener.on_msg)
    await nc.flush()
    yield listener
    await sub.unsubscribe()


@pytest.fixture
async def relay(make_stack: StackFactory) -> Stack:
    stack = await make_stack(consumers=False)
    await stack.start_consumers(["outbox"])
    return stack


async def add_event(conn: psycopg.AsyncConnection, subject: str, payload: dict | None = None) -> int:
    """An event row queued for the relay in one statement, as `noetl.store.outbox` writes one."""
    cur = await conn.execute(
        "WITH added AS (INSERT INTO events (type, subject, entity, payload)"
        " VALUES ('test.relayed', %s, %s, %s) RETURNING event_id)"
        " INSERT INTO outbox (event_id) SELECT event_id FROM added RETURNING event_id",
        (subject, Jsonb({"domain": "test"}), Jsonb(payload or {})),
    )
    return (await cur.fetchone())["event_id"]


@contextlib.asynccontextmanager
async def connection(servers: Servers) -> AsyncIterator[psycopg.AsyncConnection]:
    conn = await psycopg.AsyncConnection.connect(servers.dsn, autocommit=True, row_factory=dict_row)
    try:
        yield conn
    finally:
        await conn.close()


POISON = {
    "empty-token": "noetl.evt.catalog..registered",
    "trailing-dot": "noetl.evt.runtime.",
    "wildcard": "noetl.evt.runtime.*.x",
    "space": "noetl.evt.a b",
    "no-stream": "noetl.nowhere.at.all",
}


@pytest.mark.parametrize("subject", POISON.values(), ids=POISON.keys())
async def test_an_event_no_stream_takes_is_set_aside_and_the_rest_flow(
    relay: Stack, servers: Servers, db: Db, nc, subscriber: Subscriber, subject: str
) -> None:
    async with connection(servers) as conn, conn.transaction():
        before = [await add_event(conn, GOOD) for _ in range(5)]
        poison = await add_event(conn, subject)
        after = [await add_event(conn, GOOD) for _ in range(5)]
    await wait_for(lambda: _async(subscriber.has(*before, *after)), what="the good events")
    [letter] = await wait_for(lambda: db.all("SELECT * FROM dead_letters"), what="the dead letter")
    assert letter["consumer"] == "outbox-relay" and letter["subject"] == subject
    assert json.loads(bytes(letter["data"]))["id"] == str(poison)
    assert await db.value("SELECT count(*) FROM outbox") == 0
    announced = await wait_for(lambda: stream_events(nc.jetstream(), subjects.DEAD_LETTER_EVENT))
    assert [e["payload"]["subject"] for e in announced] == [subject]

    # Later events still flow, and nothing was published twice.
    async with connection(servers) as conn:
        later = await add_event(conn, GOOD)
    await wait_for(lambda: _async(subscriber.has(later)), what="an event after the poison")
    assert set(subscriber.ids.values()) == {1}, subscriber.ids
    stored = await stream_events(nc.jetstream(), GOOD)
    assert [e["id"] for e in stored] == [str(i) for i in [*before, *after, later]]


async def test_an_event_too_large_for_a_message_is_set_aside(
    relay: Stack, servers: Servers, db: Db, nc, subscriber: Subscriber
) -> None:
    async with connection(servers) as conn, conn.transaction():
        first = await add_event(conn, GOOD)
        large = await add_event(conn, GOOD, {"blob": "x" * (nc.max_payload + 1)})
        last = await add_event(conn, GOOD)
    await wait_for(lambda: _async(subscriber.has(first, last)), what="the events around the large one")
    [letter] = await wait_for(lambda: db.all("SELECT * FROM dead_letters"), what="the dead letter")
    assert "larger than a NATS message" in letter["reason"]
    assert json.loads(bytes(letter["data"]))["id"] == str(large)
    assert str(large) not in subscriber.arrived
    assert set(subscriber.ids.values()) == {1}


async def test_a_dead_letter_event_that_cannot_be_published_is_not_announced_again(
    relay: Stack, servers: Servers, db: Db, subscriber: Subscriber
) -> None:
    """Setting aside an announcement must not make another announcement, and so on forever."""
    async with connection(servers) as conn:
        await add_event(conn, subjects.DEAD_LETTER_EVENT, {"blob": "x" * (2 << 20)})
        after = await add_event(conn, GOOD)
    await wait_for(lambda: _async(subscriber.has(after)), what="the event after")
    assert await db.value("SELECT count(*) FROM dead_letters") == 1
    assert await db.value("SELECT count(*) FROM outbox") == 0
    assert await db.value("SELECT count(*) FROM events WHERE type = 'system.dead_letter'") == 0


async def test_a_playbook_whose_path_is_empty_is_refused_and_events_flow_on(
    make_stack: StackFactory, nc, subscriber: Subscriber
) -> None:
    """`path: "/"` normalises to "": its event subject once had an empty token, which stopped
    every later event for everyone. Such a playbook is refused at the door, the next one is
    announced, and an empty value never makes an empty subject token."""
    stack = await make_stack(consumers=False)
    await stack.start_consumers(["catalog", "outbox"])
    content = "kind: Playbook\nmetadata: {path: '/'}\nworkflow: [{step: start}]\n"
    response = await stack.client.post("/api/catalog/register", json={"content": content})
    assert response.status_code == 400, response.text
    assert "path" in response.json()["detail"]
    content = "kind: Playbook\nmetadata: {path: after}\nworkflow: [{step: start}]\n"
    response = await stack.client.post("/api/catalog/register", json={"content": content})
    assert response.status_code == 200, response.text
    events = await wait_for(lambda: stream_events(nc.jetstream(), "noetl.evt.catalog.*.registered"))
    assert [e["entity"]["path"] for e in events] == ["after"]
    for subject in (subjects.catalog_event("", "registered"), subjects.runtime_event("", "", "registered")):
        assert subjects.publishable(subject), subject


async def test_an_event_committed_late_is_not_held_back_by_busy_traffic(
    relay: Stack, servers: Servers, subscriber: Subscriber
) -> None:
    """An id drawn before others but committed after them (two consumers' transactions) reaches
    subscribers as soon as its commit does, not once the relay finds the queue empty: the relay
    once kept scanning forward under steady traffic and held such an event back for seconds."""
    stop = asyncio.Event()
    busy: list[int] = []

    async def traffic() -> None:
        async with connection(servers) as conn:
            while not stop.is_set():
                busy.append(await add_event(conn, GOOD))
                await asyncio.sleep(0.001)

    async with connection(servers) as late_conn:
        await late_conn.execute("BEGIN")
        late = await add_event(late_conn, GOOD)  # its id is drawn now, and committed later
        task = asyncio.create_task(traffic())
        try:
            await wait_for(lambda: _async(len(busy) > 200 and subscriber.has(*busy[:200])), what="traffic")
            await late_conn.execute("COMMIT")
            committed = time.monotonic()
            await wait_for(lambda: _async(subscriber.has(late)), timeout=30, what="the late event")
            assert subscriber.arrived[str(late)] - committed < 1.0
            assert not task.done()  # the traffic went on all along
        finally:
            stop.set()
            await task
    await wait_for(lambda: _async(subscriber.has(*busy)), what="all the traffic")
    assert set(subscriber.ids.values()) == {1}


async def _async(value):
    return value
