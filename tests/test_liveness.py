"""Liveness: a silent component is marked offline by the sweeper and brought back by a heartbeat,
both changes announced on the events stream; two sweepers at once never double-apply."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import psycopg
from conftest import ConsumerTask, Db, Servers, Stack, StackFactory, read_stream, wait_for

from consumers.sweeper import sweep_once
from noetl.bus import subjects
from noetl.bus.envelope import MSG_ID_HEADER, REPLY_TO_HEADER
from noetl.store.db import open_pool

OFFLINE_AFTER = 1.0


async def status(db: Db, name: str, kind: str = "worker_pool") -> str | None:
    row = await db.component(name, kind)
    return row["status"] if row else None


async def test_silent_component_goes_offline_and_a_heartbeat_brings_it_back(
    make_stack: StackFactory, db: Db, nc
) -> None:
    stack = await make_stack(runtime_offline_seconds=OFFLINE_AFTER, runtime_sweep_interval=0.1)
    for name in ["silent.pool", "chatty"]:
        response = await stack.client.post(
            "/api/worker/pool/register", json={"name": name, "runtime": "python"}
        )
        assert response.status_code == 200
    runtime_id = (await db.component("silent.pool"))["runtime_id"]

    # chatty keeps beating; silent.pool says nothing.
    async def silent_is_offline():
        beat = await stack.client.post("/api/worker/pool/heartbeat", json={"name": "chatty"})
        assert beat.status_code == 200
        return await status(db, "silent.pool") == "offline"

    await wait_for(
        silent_is_offline, timeout=15, interval=0.2, what="the sweeper to mark silent.pool offline"
    )
    assert await status(db, "chatty") == "ready"
    listed = (await stack.client.get("/api/worker/pools", params={"status": "offline"})).json()
    assert [i["name"] for i in listed["items"]] == ["silent.pool"]

    beat = await stack.client.post("/api/worker/pool/heartbeat", json={"name": "silent.pool"})
    assert beat.status_code == 200
    assert beat.json() == {"status": "ok", "name": "silent.pool", "runtime_id": str(runtime_id)}
    assert await status(db, "silent.pool") == "ready"
    assert (await db.events_for("silent.pool"))[:3] == [
        "runtime.registered",
        "runtime.offline",
        "runtime.online",
    ]
    assert "runtime.offline" not in await db.events_for("chatty")

    # Both on the events stream, in order, as envelopes with the row's id as Nats-Msg-Id.
    filter_subject = f"noetl.evt.runtime.worker_pool.{subjects.token('silent.pool')}.>"

    async def relayed():
        msgs = await read_stream(nc.jetstream(), filter_subject)
        return msgs if len(msgs) >= 3 else None

    msgs = await wait_for(relayed, what="offline and online events on NOETL_EVENTS")
    events = [json.loads(m.data) for m in msgs]
    assert [e["type"] for e in events][:3] == ["runtime.registered", "runtime.offline", "runtime.online"]
    offline, online = events[1], events[2]
    assert msgs[1].subject == subjects.runtime_event("worker_pool", "silent.pool", "offline")
    assert msgs[2].subject == subjects.runtime_event("worker_pool", "silent.pool", "online")
    for event, msg in zip(events, msgs, strict=True):
        assert set(event) == {"id", "type", "time", "entity", "payload"}
        assert event["entity"] == {"domain": "runtime", "kind": "worker_pool", "name": "silent.pool"}
        assert msg.headers[MSG_ID_HEADER].startswith(event["id"] + "-")
    assert int(offline["id"]) < int(online["id"])
    assert offline["payload"]["runtime_id"] == str(runtime_id)
    assert offline["payload"]["last_heartbeat"]
    assert online["payload"]["runtime_id"] == str(runtime_id)


async def test_offline_component_recovers_through_a_bus_heartbeat(
    make_stack: StackFactory, db: Db, nc
) -> None:
    """A worker beats on the bus with no HTTP: the same recovery."""
    from noetl.bus.envelope import Command, utcnow
    from noetl.contracts.runtime import Heartbeat

    stack = await make_stack(runtime_offline_seconds=OFFLINE_AFTER, runtime_sweep_interval=0.1)
    await stack.client.post("/api/worker/pool/register", json={"name": "bus-worker"})
    await wait_for(lambda: _is(db, "bus-worker", "offline"), what="bus-worker offline")
    beat = Heartbeat(kind="worker_pool", name="bus-worker", sent_at=utcnow())
    command = Command(
        id="hb-bus-worker-1", type=subjects.HEARTBEAT_TYPE, payload=beat.model_dump(mode="json")
    )
    await nc.jetstream().publish(
        subjects.heartbeat("worker_pool", "bus-worker"),
        command.model_dump_json().encode(),
        headers={MSG_ID_HEADER: command.id},
    )
    await wait_for(lambda: _is(db, "bus-worker", "ready"), what="bus-worker back")
    assert (await db.events_for("bus-worker"))[:3] == [
        "runtime.registered",
        "runtime.offline",
        "runtime.online",
    ]


async def test_a_stale_beat_does_not_bring_a_component_back(make_stack: StackFactory, db: Db, nc) -> None:
    """A beat older than the offline threshold (late in the stream, or from a skewed clock) says
    nothing about the component now: it stays offline, with no online event."""
    from noetl.bus.envelope import Command, utcnow
    from noetl.contracts.runtime import Heartbeat

    stack = await make_stack(runtime_offline_seconds=OFFLINE_AFTER, runtime_sweep_interval=0.1)
    await stack.client.post("/api/worker/pool/register", json={"name": "stale-worker"})
    await wait_for(lambda: _is(db, "stale-worker", "offline"), what="stale-worker offline")
    reply = nc.new_inbox()
    answers = await nc.subscribe(reply)
    stale = Heartbeat(kind="worker_pool", name="stale-worker", sent_at=utcnow() - timedelta(seconds=30))
    command = Command(id="hb-stale-1", type=subjects.HEARTBEAT_TYPE, payload=stale.model_dump(mode="json"))
    await nc.publish(
        subjects.heartbeat("worker_pool", "stale-worker"),
        command.model_dump_json().encode(),
        headers={REPLY_TO_HEADER: reply},
    )
    [answer] = json.loads((await answers.next_msg(timeout=10)).data)
    assert answer["result"]["status"] == "ok"  # known, and its beat recorded...
    assert await status(db, "stale-worker") == "offline"  # ...but not brought back
    assert "runtime.online" not in await db.events_for("stale-worker")


async def _is(db: Db, name: str, wanted: str) -> bool:
    return await status(db, name) == wanted


async def test_every_kind_is_swept(make_stack: StackFactory, db: Db) -> None:
    stack = await make_stack(runtime_offline_seconds=OFFLINE_AFTER, runtime_sweep_interval=0.1)
    kinds = ["worker_pool", "broker", "server_api", "scheduler", "monitor"]
    for kind in kinds:
        body = {"name": f"k-{kind}", "kind": kind, "uri": "http://x"}
        assert (await stack.client.post("/api/runtime/register", json=body)).status_code == 200

    async def all_offline():
        rows = await db.all("SELECT kind, status FROM runtime_components")
        return len(rows) == 5 and {r["status"] for r in rows} == {"offline"}

    await wait_for(all_offline, what="every kind marked offline")
    assert await db.value("SELECT count(*) FROM events WHERE type = 'runtime.offline'") == 5


async def test_already_offline_is_not_swept_again(make_stack: StackFactory, db: Db) -> None:
    stack = await make_stack(runtime_offline_seconds=OFFLINE_AFTER, runtime_sweep_interval=0.1)
    await stack.client.post("/api/worker/pool/register", json={"name": "gone"})
    await stack.client.request("DELETE", "/api/worker/pool/deregister", json={"name": "gone"})
    await asyncio.sleep(OFFLINE_AFTER + 0.8)
    assert await db.events_for("gone") == ["runtime.registered", "runtime.deregistered"]


async def _lock_waiters(db: Db) -> int:
    return await db.value(
        "SELECT count(*) FROM pg_stat_activity"
        " WHERE wait_event_type = 'Lock' AND query ILIKE '%%runtime_components%%'"
    )


async def test_two_sweepers_racing_never_double_apply(stack: Stack, servers: Servers, db: Db) -> None:
    """Both sweepers see the same silent rows and block on the same row locks; when the locks go,
    each row is marked (and announced) by exactly one of them."""
    names = [f"race-{i:03d}" for i in range(60)]
    responses = await asyncio.gather(
        *[stack.client.post("/api/worker/pool/register", json={"name": n}) for n in names]
    )
    assert {r.status_code for r in responses} == {200}
    await stack.stop_consumers()  # only our two sweepers from here on
    await db.execute("UPDATE runtime_components SET heartbeat = now() - interval '1 hour'")

    pools = [await open_pool(servers.dsn, max_size=2) for _ in range(2)]
    try:
        async with await psycopg.AsyncConnection.connect(servers.dsn) as locker:
            await locker.execute("SELECT 1 FROM runtime_components ORDER BY runtime_id FOR UPDATE")
            sweeps = [asyncio.create_task(sweep_once(pool, 60.0)) for pool in pools]
            await wait_for(lambda: _at_least(db, 2), what="both sweepers blocked on the row locks")
            assert not any(s.done() for s in sweeps)
            await locker.commit()
            counts = await asyncio.gather(*sweeps)
    finally:
        for pool in pools:
            await pool.close()

    assert sum(counts) == len(names), counts
    assert await db.value("SELECT count(*) FROM runtime_components WHERE status = 'offline'") == len(names)
    rows = await db.all(
        "SELECT entity->>'name' AS name, count(*) AS n FROM events WHERE type = 'runtime.offline' GROUP BY 1"
    )
    assert len(rows) == len(names)
    assert {r["n"] for r in rows} == {1}


async def _at_least(db: Db, n: int) -> bool:
    return await _lock_waiters(db) >= n


async def test_two_sweeper_processes_share_the_sweeping(
    make_stack: StackFactory, servers: Servers, db: Db
) -> None:
    """Two sweeper consumers sweeping every 20 ms while components fall silent together."""
    stack = await make_stack(consumers=False, runtime_offline_seconds=OFFLINE_AFTER)
    await stack.start_consumers(["runtime", "outbox"])
    names = [f"pair-{i:03d}" for i in range(120)]
    responses = await asyncio.gather(
        *[stack.client.post("/api/worker/pool/register", json={"name": n}) for n in names]
    )
    assert {r.status_code for r in responses} == {200}
    sweepers = [
        ConsumerTask(
            ["sweeper"], servers.settings(runtime_offline_seconds=OFFLINE_AFTER, runtime_sweep_interval=0.02)
        )
        for _ in range(2)
    ]
    try:
        for sweeper in sweepers:
            await sweeper.start()

        async def all_offline():
            return await db.value("SELECT count(*) FROM runtime_components WHERE status = 'offline'") == len(
                names
            )

        await wait_for(all_offline, what="every silent pool offline")
        await asyncio.sleep(0.3)
    finally:
        for sweeper in sweepers:
            await sweeper.stop()
    assert await db.value("SELECT count(*) FROM events WHERE type = 'runtime.offline'") == len(names)
    assert await db.value(
        "SELECT count(DISTINCT entity->>'name') FROM events WHERE type = 'runtime.offline'"
    ) == len(names)


async def test_a_worker_beat_is_answered_only_when_the_registry_does_not_know_it(
    make_stack: StackFactory, db: Db, nc
) -> None:
    """Workers beat without headers: no reply traffic for the usual ok, and `unknown` on the
    component's own subject when it must register again."""
    from noetl.bus.envelope import Command, utcnow
    from noetl.contracts.runtime import Heartbeat

    stack = await make_stack()
    await stack.client.post("/api/worker/pool/register", json={"name": "quiet-worker"})
    answers = await nc.subscribe(subjects.heartbeat_unknown("worker_pool", "forgotten.worker"))
    quiet = await nc.subscribe(subjects.heartbeat_unknown("worker_pool", "quiet-worker"))
    for i, name in enumerate(("quiet-worker", "forgotten.worker")):
        beat = Heartbeat(kind="worker_pool", name=name, sent_at=utcnow())
        command = Command(
            id=f"hb-quiet-{i}", type=subjects.HEARTBEAT_TYPE, payload=beat.model_dump(mode="json")
        )
        await nc.publish(subjects.heartbeat("worker_pool", name), command.model_dump_json().encode())
    msg = await answers.next_msg(timeout=10)
    assert msg.subject == subjects.heartbeat_unknown("worker_pool", "forgotten.worker")
    [answer] = json.loads(msg.data)
    assert answer["error"]["code"] == "unknown"
    assert answer["error"]["detail"] == {"status": "unknown", "name": "forgotten.worker"}
    with contextlib.suppress(TimeoutError):
        extra = await quiet.next_msg(timeout=1.0)
        raise AssertionError(f"an ok beat was answered: {extra.data!r}")
    row = await db.component("quiet-worker")
    assert row is not None and row["heartbeat"] > row["created_at"]


async def test_beats_waiting_together_each_get_their_due(stack: Stack, db: Db, nc) -> None:
    """Beats that queued while the consumers were down are applied together: every known row
    takes its beat's exact time (one without an offset counts as UTC), the beat that waits for
    an answer gets `ok`, the offline component comes back, and the unknown one is told so."""
    from noetl.bus.envelope import Command

    names = ("queued-quiet", "queued-asking", "queued-naive", "queued-away")
    for name in names:
        assert (await stack.client.post("/api/worker/pool/register", json={"name": name})).status_code == 200
    await db.execute("UPDATE runtime_components SET status = 'offline' WHERE name = 'queued-away'")
    registered = {name: (await db.component(name))["heartbeat"] for name in names}
    await stack.stop_consumers()
    now = datetime.now(UTC)
    sent = {
        "queued-quiet": now.astimezone(timezone(timedelta(hours=2))).isoformat(),
        "queued-asking": now.isoformat(),
        "queued-naive": now.replace(tzinfo=None).isoformat(),
        "queued-away": now.isoformat(),
        "queued-stranger": now.isoformat(),
    }
    reply = nc.new_inbox()
    answers = await nc.subscribe(reply)
    unknown = await nc.subscribe(subjects.heartbeat_unknown("worker_pool", "queued-stranger"))
    for i, (name, sent_at) in enumerate(sent.items()):
        payload = {"kind": "worker_pool", "name": name, "sent_at": sent_at}
        command = Command(id=f"hb-queued-{i}", type=subjects.HEARTBEAT_TYPE, payload=payload)
        headers = {REPLY_TO_HEADER: reply} if name == "queued-asking" else None
        await nc.publish(
            subjects.heartbeat("worker_pool", name), command.model_dump_json().encode(), headers=headers
        )
    await nc.flush()
    await stack.start_consumers()

    [asked] = json.loads((await answers.next_msg(timeout=10)).data)
    asking = await db.component("queued-asking")
    assert asked["result"] == {
        "status": "ok",
        "name": "queued-asking",
        "runtime_id": str(asking["runtime_id"]),
    }
    [told] = json.loads((await unknown.next_msg(timeout=10)).data)
    assert told["error"]["code"] == "unknown"
    # The answers can come before an earlier batch commits (two batches overlap), so each row
    # is awaited until its beat lands, then checked for the exact time.
    for name in names:
        beaten = functools.partial(_beaten_since, db, name, registered[name])
        row = await wait_for(beaten, what=f"{name}'s beat")
        assert row["heartbeat"] == now, name
    assert await status(db, "queued-away") == "ready"
    await wait_for(lambda: _has_event(db, "queued-away", "runtime.online"), what="queued-away online event")
    assert await db.component("queued-stranger") is None
    with contextlib.suppress(TimeoutError):
        extra = await answers.next_msg(timeout=0.5)
        raise AssertionError(f"a second answer: {extra.data!r}")


async def _beaten_since(db: Db, name: str, heartbeat: datetime) -> dict[str, Any] | None:
    row = await db.component(name)
    return row if row["heartbeat"] != heartbeat else None


async def _has_event(db: Db, name: str, event_type: str) -> bool:
    return event_type in await db.events_for(name)


async def test_a_stop_finishes_the_beats_in_flight(stack: Stack, servers: Servers, db: Db, nc) -> None:
    """Stopped while one batch waits on a row lock and the next batch waits for it to ack: the
    stop lets both finish and ack, so whoever consumes next owes nothing and has lost nothing."""
    from noetl.bus.envelope import Command, utcnow

    for name in ("held", "free"):
        assert (await stack.client.post("/api/worker/pool/register", json={"name": name})).status_code == 200
    registered = {name: (await db.component(name))["heartbeat"] for name in ("held", "free")}

    async def beat(name: str) -> None:
        payload = {"kind": "worker_pool", "name": name, "sent_at": utcnow().isoformat()}
        command = Command(id=f"hb-stop-{name}", type=subjects.HEARTBEAT_TYPE, payload=payload)
        await nc.publish(subjects.heartbeat("worker_pool", name), command.model_dump_json().encode())
        await nc.flush()

    async def blocked_on_a_lock() -> bool:
        waiting = "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query ILIKE %s"
        return bool(await db.value(waiting, "%runtime_components%"))

    async with await psycopg.AsyncConnection.connect(servers.dsn) as holder:
        await holder.execute("SELECT 1 FROM runtime_components WHERE name = 'held' FOR UPDATE")
        await beat("held")
        await wait_for(blocked_on_a_lock, what="the held beat's batch waiting on the row")
        await beat("free")
        await wait_for(
            functools.partial(_beaten_since, db, "free", registered["free"]), what="the free beat's batch"
        )
        stopping = asyncio.ensure_future(stack.stop_consumers())
        await asyncio.sleep(0.5)
        assert not stopping.done(), "the stop abandoned the batch waiting on the row"
        await holder.commit()
    await asyncio.wait_for(stopping, 10)

    assert (await db.component("held"))["heartbeat"] > registered["held"]
    info = await nc.jetstream().consumer_info(subjects.HEARTBEATS_STREAM, "runtime-heartbeats")
    assert info.num_ack_pending == 0
    assert info.ack_floor.consumer_seq == info.delivered.consumer_seq == 2
