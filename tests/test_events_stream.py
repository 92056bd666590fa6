"""Events for subscribers: NATS subscribers of one execution, one type, or all (through
`noetl.bus.events.follow`), and Server-Sent Events with `Last-Event-ID` over a real HTTP server."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
from conftest import Servers, Stack, StackFactory
from helpers_execution import HELLO_PATH, LiveApi, domain_stack, register, run, serve, sse

from noetl.bus import subjects
from noetl.bus.events import StreamEvent, follow


@pytest.fixture
async def xstack(make_stack: StackFactory, servers: Servers) -> AsyncIterator[Stack]:
    async with domain_stack(make_stack, servers) as stack:
        yield stack


@pytest.fixture
async def live(xstack: Stack) -> AsyncIterator[LiveApi]:
    """A real HTTP server over the same bus as `xstack`, whose consumers answer it."""
    async with serve(xstack.settings) as api:
        yield api


class Follower:
    """`follow` as a background task collecting what it receives."""

    def __init__(self, js, filter_subject: str, **kwargs) -> None:
        self.items: list[StreamEvent] = []
        self.ready = asyncio.Event()
        self._task = asyncio.create_task(self._run(js, filter_subject, kwargs))

    async def _run(self, js, filter_subject: str, kwargs: dict) -> None:
        async for item in follow(js, filter_subject, idle=0.05, **kwargs):
            self.ready.set()  # the first item, None or not, comes after the subscription exists
            if item is not None:
                self.items.append(item)

    async def until(self, count: int, timeout: float = 10.0) -> list[StreamEvent]:
        async with asyncio.timeout(timeout):
            while len(self.items) < count:
                if self._task.done():
                    self._task.result()
                await asyncio.sleep(0.02)
        return self.items

    async def stop(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


@contextlib.asynccontextmanager
async def following(js, filter_subject: str, **kwargs) -> AsyncIterator[Follower]:
    follower = Follower(js, filter_subject, **kwargs)
    try:
        async with asyncio.timeout(10):
            await follower.ready.wait()
        yield follower
    finally:
        await follower.stop()


# What a run of the hello playbook tells before a worker takes `greet`: its start, the `start`
# step (a router) entered and done, and `greet` dispatched.
STARTED = ["execution_start", "step_started", "step_completed", "step_started"]
RUN_AND_CANCEL = [*STARTED, "execution_cancelled"]


def types(items: list[StreamEvent]) -> list[str]:
    return [i.event.type for i in items]


async def start_and_cancel(stack: Stack, count: int) -> list[str]:
    ids = [(await run(stack.client, path=HELLO_PATH))["execution_id"] for _ in range(count)]
    for eid in ids:
        response = await stack.client.post(f"/api/executions/{eid}/cancel", json={"reason": "test"})
        assert response.status_code == 200
    return ids


# --------------------------------------------------------------------------- NATS subscribers


async def test_subscriber_follows_one_execution_in_order(xstack: Stack, nc) -> None:
    js = nc.jetstream()
    await register(xstack.client)
    async with following(js, subjects.execution_events(), new_only=True) as every:
        ids = await start_and_cancel(xstack, 3)
        items = await every.until(15)
    assert len(items) == 15
    sequences = [i.sequence for i in items]
    assert sequences == sorted(sequences) and len(set(sequences)) == 15
    for eid in ids:
        mine = [i for i in items if i.event.entity == {"domain": "execution", "execution_id": eid}]
        assert types(mine) == RUN_AND_CANCEL
        assert [int(i.event.id) for i in mine] == sorted(int(i.event.id) for i in mine)
        start, cancelled = mine[0].event.payload, mine[-1].event.payload
        assert start["status"] == "STARTED" and start["meta"]["path"] == HELLO_PATH
        assert cancelled["status"] == "CANCELLED" and cancelled["context"] == {"reason": "test"}

    # A subscriber of one execution, replaying from the start, gets that one's events alone.
    async with following(js, subjects.execution_events(ids[1])) as one:
        await one.until(5)
        await asyncio.sleep(0.3)
    assert types(one.items) == RUN_AND_CANCEL
    assert {i.event.entity["execution_id"] for i in one.items} == {ids[1]}

    # One event type across executions.
    async with following(js, subjects.execution_events(None, "execution_cancelled")) as cancelled:
        await cancelled.until(3)
        await asyncio.sleep(0.3)
    assert types(cancelled.items) == ["execution_cancelled"] * 3
    assert [i.event.entity["execution_id"] for i in cancelled.items] == ids


async def test_subscriber_of_everything_sees_catalog_and_execution_events(xstack: Stack, nc) -> None:
    js = nc.jetstream()
    async with following(js, subjects.EVENTS_ALL, new_only=True) as every:
        registered = await register(xstack.client)
        [eid] = await start_and_cancel(xstack, 1)
        items = await every.until(6)
    assert types(items) == ["catalog.registered", *RUN_AND_CANCEL]
    assert items[0].event.entity == {"domain": "catalog", "path": HELLO_PATH}
    assert items[0].event.payload["catalog_id"] == registered["catalog_id"]
    assert items[1].event.entity["execution_id"] == eid
    # The envelope: id, type, time, entity, payload.
    envelope = items[1].event.model_dump(mode="json")
    assert set(envelope) == {"id", "type", "time", "entity", "payload"}
    assert isinstance(envelope["id"], str)


async def test_replay_from_sequence_and_time(xstack: Stack, nc) -> None:
    js = nc.jetstream()
    await register(xstack.client)
    first_ids = await start_and_cancel(xstack, 2)
    async with following(js, subjects.execution_events()) as everything:
        stored = await everything.until(10)
    a, b = first_ids
    assert [i.event.entity["execution_id"] for i in stored] == [a] * 4 + [b] * 4 + [a, b]
    assert types(stored) == STARTED * 2 + ["execution_cancelled"] * 2
    cut = stored[7].sequence
    async with following(js, subjects.execution_events(), start_seq=cut + 1) as later:
        await later.until(2)
        await asyncio.sleep(0.3)
    assert [i.sequence for i in later.items] == [i.sequence for i in stored[8:]]

    moment = datetime.now(UTC)
    await asyncio.sleep(0.05)
    [new_id] = await start_and_cancel(xstack, 1)
    async with following(js, subjects.execution_events(), start_time=moment) as since:
        await since.until(5)
        await asyncio.sleep(0.3)
    assert {i.event.entity["execution_id"] for i in since.items} == {new_id}
    early = moment - timedelta(hours=1)
    async with following(js, subjects.execution_events(), start_time=early) as all_of_it:
        assert len(await all_of_it.until(15)) == 15


# --------------------------------------------------------------------------- Server-Sent Events


async def test_sse_execution_stream_stored_then_live_then_resume(xstack: Stack, live: LiveApi) -> None:
    await register(live.client)
    eid = (await run(live.client, path=HELLO_PATH))["execution_id"]
    other = (await run(live.client, path=HELLO_PATH))["execution_id"]
    path = f"/api/executions/{eid}/events/stream"

    async with sse(live.client, path) as reader:
        stored_events = await reader.take(4)
        stored = stored_events[0]
        assert reader.retry == 2000
        assert [e.event for e in stored_events] == STARTED
        assert stored.json()["entity"] == {"domain": "execution", "execution_id": eid}
        assert stored.id is not None and stored.id.isdigit()
        # Live: the cancel happens while the client is connected.
        await live.client.post(f"/api/executions/{other}/cancel")
        await live.client.post(f"/api/executions/{eid}/cancel", json={"reason": "live"})
        [cancelled] = await reader.take(1)
        assert cancelled.event == "execution_cancelled"
        assert cancelled.json()["payload"]["context"] == {"reason": "live"}
        assert int(cancelled.id) > int(stored_events[-1].id)

    # Resume after the first event: only what came after it, nothing repeated.
    async with sse(live.client, path, last_event_id=stored.id) as reader:
        resumed = await reader.take(4)
        expected = [*stored_events[1:], cancelled]
        assert [(e.id, e.event, e.data) for e in resumed] == [(e.id, e.event, e.data) for e in expected]
        assert await reader.nothing_within(0.5)

    # Resume after the last: nothing until something new (nothing comes: the execution has ended).
    async with sse(live.client, path, last_event_id=cancelled.id) as reader:
        assert await reader.nothing_within(0.5)


async def test_sse_all_events_resume_has_no_gaps_or_repeats(xstack: Stack, live: LiveApi) -> None:
    await register(live.client)
    first = [(await run(live.client, path=HELLO_PATH))["execution_id"] for _ in range(3)]
    received = []
    async with sse(live.client, "/api/events/stream") as reader:
        received += await reader.take(13)  # catalog.registered and three runs started
        assert [e.event for e in received] == ["catalog.registered", *STARTED * 3]
    last_seen = received[-1].id

    # While disconnected, more happens.
    for eid in first:
        await live.client.post(f"/api/executions/{eid}/cancel")
    second = (await run(live.client, path=HELLO_PATH))["execution_id"]

    async with sse(live.client, "/api/events/stream", last_event_id=last_seen) as reader:
        resumed = await reader.take(7)
        assert [e.event for e in resumed] == ["execution_cancelled"] * 3 + STARTED
        assert resumed[-1].json()["entity"]["execution_id"] == second
        # Live after the replay, on the same connection.
        await live.client.post(f"/api/executions/{second}/cancel")
        [live_event] = await reader.take(1)
        assert live_event.event == "execution_cancelled"
        assert live_event.json()["entity"]["execution_id"] == second
    received += [*resumed, live_event]

    sequences = [int(e.id) for e in received]
    assert sequences == list(range(sequences[0], sequences[0] + len(sequences)))  # no gap, no repeat
    ids = [e.json()["id"] for e in received]
    assert len(set(ids)) == len(ids)

    # A fresh client from the start sees exactly the same events.
    async with sse(live.client, "/api/events/stream", last_event_id="0") as reader:
        again = await reader.take(len(received))
    assert [(e.id, e.data) for e in again] == [(e.id, e.data) for e in received]


@pytest.mark.parametrize("last_event_id", ["", "garbage", "-3"])
async def test_sse_odd_last_event_id_starts_from_the_beginning(
    xstack: Stack, live: LiveApi, last_event_id: str
) -> None:
    await register(live.client)
    async with sse(live.client, "/api/events/stream", last_event_id=last_event_id) as reader:
        [event] = await reader.take(1)
        assert event.event == "catalog.registered"


@pytest.mark.parametrize("execution_id", ["987654321", "abc", "99999999999999999999999"])
async def test_sse_unknown_execution_is_404(xstack: Stack, execution_id: str) -> None:
    response = await xstack.client.get(f"/api/executions/{execution_id}/events/stream")
    assert response.status_code == 404, response.text
    assert "execution not found" in response.json()["detail"]


async def test_sse_clients_do_not_stop_the_server(xstack: Stack, live: LiveApi) -> None:
    """Clients that come and go mid-stream leave the server serving."""
    await register(live.client)
    for _ in range(5):
        async with sse(live.client, "/api/events/stream") as reader:
            await reader.take(1)
    assert (await live.client.get("/api/catalog/list")).status_code == 200


async def test_sse_execution_id_with_leading_zeros(xstack: Stack, live: LiveApi) -> None:
    """`/api/executions/007/...` finds execution 7: its stream must carry execution 7's events."""
    await register(live.client)
    eid = (await run(live.client, path=HELLO_PATH))["execution_id"]
    padded = eid.rjust(len(eid) + 2, "0")
    assert (await live.client.get(f"/api/executions/{padded}")).json()["execution_id"] == eid
    async with sse(live.client, f"/api/executions/{padded}/events/stream") as reader:
        [event] = await reader.take(1)
    assert event.event == "execution_start" and event.json()["entity"]["execution_id"] == eid
