"""Failures: NATS down (503 at once), consumers down (202, applied when they return), a consumer
killed mid-batch (nothing lost, nothing applied twice), two consumer processes sharing the work,
and the real processes started the way a user starts them."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
import uuid
from collections.abc import AsyncIterator

import httpx
import pytest
from conftest import (
    ConsumerTask,
    Db,
    Processes,
    Servers,
    StackFactory,
    facade,
    wait_durables,
    wait_for,
)

from noetl.bus import subjects
from noetl.bus.envelope import MSG_ID_HEADER, Command
from noetl.embedded import EmbeddedNats, free_port

# --------------------------------------------------------------------------- NATS down


async def assert_bus_down_answers(client: httpx.AsyncClient) -> None:
    assert (await client.get("/health")).status_code == 200
    ready = await client.get("/ready")
    assert ready.status_code == 503
    assert int(ready.headers["Retry-After"]) >= 1
    calls = [
        ("POST", "/api/worker/pool/register", {"name": "while-down", "runtime": "python"}),
        ("POST", "/api/runtime/register", {"name": "api-down", "kind": "server_api", "uri": "http://x"}),
        ("POST", "/api/worker/pool/heartbeat", {"name": "while-down"}),
        ("DELETE", "/api/worker/pool/deregister", {"name": "while-down"}),
        ("POST", "/api/broker/register", {"name": "b", "uri": "nats://b"}),
        ("GET", "/api/worker/pools", None),
        ("GET", "/api/brokers", None),
        ("GET", "/api/requests/abc123", None),
    ]
    for method, path, body in calls:
        started = time.monotonic()
        response = await client.request(method, path, json=body)
        assert response.status_code == 503, (path, response.status_code, response.text)
        assert int(response.headers["Retry-After"]) >= 1
        assert "detail" in response.json()
        # "At once": well before the reply timeout would have turned it into a 202.
        assert time.monotonic() - started < 2.5, path


async def test_503_while_nats_is_down_then_back(own_nats: EmbeddedNats, clean: Servers, db: Db) -> None:
    settings = clean.settings(nats_url=own_nats.url, api_reply_timeout=3.0)
    consumers = ConsumerTask(["runtime", "sweeper", "outbox"], settings)
    await consumers.start()
    try:
        async with facade(settings) as (_app, client):
            before = await client.post(
                "/api/worker/pool/register", json={"name": "before", "runtime": "python"}
            )
            assert before.status_code == 200

            await asyncio.to_thread(own_nats.stop)

            async def bus_down():
                return (await client.get("/ready")).status_code == 503

            await wait_for(bus_down, what="the facade to notice NATS is gone")
            await assert_bus_down_answers(client)
            assert await db.component("while-down") is None

            # NATS comes back on the same port with the same store.
            restarted = EmbeddedNats(own_nats.store_dir, own_nats.port)
            await asyncio.to_thread(restarted.start)
            own_nats.proc = restarted.proc

            async def bus_up():
                return (await client.get("/ready")).status_code == 200

            await wait_for(bus_up, what="the facade to reconnect")

            async def registers():
                r = await client.post(
                    "/api/worker/pool/register", json={"name": "after", "runtime": "python"}
                )
                return r if r.status_code == 200 else None

            response = await wait_for(
                registers, timeout=30, interval=0.5, what="registration after NATS returns"
            )
            assert response.json()["name"] == "after"
            # The heartbeats stream lives in memory: the restarted server lost it, and it is
            # declared again by whoever notices first. A beat sent before the heartbeat consumer
            # is back may be lost (soft state: the next one counts), so beat until one lands.

            async def beats():
                r = await client.post("/api/worker/pool/heartbeat", json={"name": "before"})
                assert r.status_code in (200, 202, 503), r.text
                return r if r.status_code == 200 else None

            beat = await wait_for(beats, timeout=30, interval=0.5, what="heartbeats after NATS returns")
            assert beat.json()["status"] == "ok"
            listed = (await client.get("/api/worker/pools")).json()
            assert [i["name"] for i in listed["items"]] == ["after", "before"]
            assert await db.component("while-down") is None
    finally:
        await consumers.stop()


async def test_facade_started_without_nats_answers_503_at_once(clean: Servers) -> None:
    settings = clean.settings(nats_url=f"nats://127.0.0.1:{free_port()}", api_reply_timeout=5.0)
    async with facade(settings, wait_bus=False) as (_, client):
        await assert_bus_down_answers(client)
        openapi = await client.get("/openapi.json")
        assert openapi.status_code == 200


# --------------------------------------------------------------------------- consumers down


async def test_202_while_consumers_are_down_then_applied(make_stack: StackFactory, db: Db) -> None:
    stack = await make_stack(api_reply_timeout=0.5)
    assert (await stack.client.post("/api/worker/pool/register", json={"name": "known"})).status_code == 200
    await stack.stop_consumers()

    sent = [
        ("POST", "/api/worker/pool/register", {"name": "late-1", "runtime": "python", "capacity": 2}),
        ("POST", "/api/worker/pool/register", {"name": "late-2", "runtime": "python"}),
        ("POST", "/api/runtime/register", {"name": "late-api", "kind": "server_api", "uri": "http://a"}),
        ("DELETE", "/api/worker/pool/deregister", {"name": "late-2"}),
        ("DELETE", "/api/worker/pool/deregister", {"name": "known"}),
    ]
    accepted = []
    for method, path, body in sent:
        response = await stack.client.request(method, path, json=body)
        assert response.status_code == 202, response.text
        request_id = response.json()["request_id"]
        assert response.json() == {"status": "accepted", "request_id": request_id}
        assert response.headers["X-Request-ID"] == request_id
        assert response.headers["Location"] == f"/api/requests/{request_id}"
        assert int(response.headers["Retry-After"]) >= 1
        accepted.append(request_id)

    # Nothing applied while the consumers are away: the outcome is pending.
    assert await db.component("late-1") is None
    assert (await db.component("known"))["status"] == "ready"
    pending = await stack.client.get(f"/api/requests/{accepted[0]}")
    assert pending.status_code == 202
    assert pending.json() == {"request_id": accepted[0], "state": "pending"}
    assert int(pending.headers["Retry-After"]) >= 1

    await stack.start_consumers()

    async def all_done():
        for request_id in accepted:
            r = await stack.client.get(f"/api/requests/{request_id}")
            if r.status_code != 200 or r.json()["state"] != "done":
                return None
        return True

    await wait_for(all_done, what="the accepted commands to be applied")
    outcomes = [(await stack.client.get(f"/api/requests/{rid}")).json() for rid in accepted]
    assert [o["status_code"] for o in outcomes] == [200] * 5
    assert outcomes[0]["response"]["name"] == "late-1"
    assert outcomes[0]["response"]["kind"] == "worker_pool"
    assert outcomes[2]["response"]["kind"] == "server_api"
    assert outcomes[3]["response"] == {
        "status": "ok",
        "name": "late-2",
        "runtime_id": None,
        "kind": "worker_pool",
        "runtime": None,
    }

    # Applied in the order sent, each once.
    assert (await db.component("late-1"))["capacity"] == 2
    assert (await db.component("late-2"))["status"] == "offline"
    assert (await db.component("known"))["status"] == "offline"
    assert (await db.component("late-api", "server_api"))["uri"] == "http://a"
    assert await db.events_for("late-2") == ["runtime.registered", "runtime.deregistered"]
    assert await db.events_for("late-1") == ["runtime.registered"]
    assert await db.value("SELECT count(*) FROM processed_commands") == 6

    # And the facade answers synchronously again.
    again = await stack.client.post("/api/worker/pool/register", json={"name": "late-3"})
    assert again.status_code == 200


async def test_a_202_stands_for_a_stored_command_even_when_the_first_publish_was_lost(
    make_stack: StackFactory, db: Db
) -> None:
    """A fresh command goes out without waiting for JetStream's ack. When its outcome is late, the
    facade publishes it again and waits for the ack, so the 202 never hides a lost command."""
    stack = await make_stack(api_reply_timeout=0.5)
    await stack.stop_consumers()
    js = stack.app.state.bus.js
    await js.delete_stream(subjects.COMMANDS_STREAM)  # the next first publish reaches no stream

    response = await stack.client.post("/api/worker/pool/register", json={"name": "lost-once"})
    assert response.status_code == 202, response.text
    request_id = response.json()["request_id"]
    stored = await js.get_last_msg(subjects.COMMANDS_STREAM, subjects.RUNTIME_REGISTER)
    assert stored.headers[MSG_ID_HEADER] == request_id
    assert (await js.stream_info(subjects.COMMANDS_STREAM)).state.messages == 1

    await stack.start_consumers()

    async def done():
        r = await stack.client.get(f"/api/requests/{request_id}")
        return r.json() if r.status_code == 200 else None

    outcome = await wait_for(done, what="the stored command to be applied")
    assert outcome["status_code"] == 200
    assert (await db.component("lost-once"))["status"] == "ready"


async def test_heartbeat_202_while_consumers_down(make_stack: StackFactory, db: Db) -> None:
    stack = await make_stack(api_reply_timeout=0.5)
    await stack.client.post("/api/worker/pool/register", json={"name": "hb-late"})
    await stack.client.request("DELETE", "/api/worker/pool/deregister", json={"name": "hb-late"})
    await stack.stop_consumers()
    response = await stack.client.post("/api/worker/pool/heartbeat", json={"name": "hb-late"})
    assert response.status_code == 202
    assert (await db.component("hb-late"))["status"] == "offline"
    await stack.start_consumers()
    await wait_for(
        lambda: _status_is(db, "hb-late", "ready"), what="the late heartbeat applied when consumers return"
    )
    assert await db.events_for("hb-late") == ["runtime.registered", "runtime.deregistered", "runtime.online"]


async def _status_is(db: Db, name: str, wanted: str) -> bool:
    row = await db.component(name)
    return row is not None and row["status"] == wanted


# --------------------------------------------------------------------------- real processes


def process_env(servers: Servers, **extra: str) -> dict[str, str]:
    return {"NOETL_NATS_URL": servers.nats_url, "NOETL_PG_DSN": servers.consumer_dsn, **extra}


async def wait_http(url: str, proc, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient() as client:
        while True:
            assert proc.popen.poll() is None, proc.output()
            try:
                if (await client.get(url + "/ready")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"{url} not ready in {timeout}s:\n{proc.output()}")
            await asyncio.sleep(0.2)


async def wait_consumer_process(servers: Servers, proc, timeout: float = 30) -> None:
    try:
        await asyncio.wait_for(wait_durables(servers.nats_url, timeout), timeout)
    except Exception:
        pytest.fail(f"consumer process did not start:\n{proc.output()}")
    assert proc.popen.poll() is None, proc.output()


async def stop_gracefully(proc, timeout: float = 20) -> int:
    proc.signal(signal.SIGTERM)
    try:
        return await asyncio.to_thread(proc.wait, timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{proc.popen.args} did not stop on SIGTERM:\n{proc.output()}")


async def test_real_processes_as_a_user_starts_them(clean: Servers, processes: Processes, db: Db) -> None:
    """`noetl consumer runtime sweeper outbox` and `noetl api`, talked to over real HTTP."""
    consumer = processes.start(
        ["consumer", "runtime", "sweeper", "outbox"],
        process_env(clean, NOETL_HEARTBEAT_RETRY_AFTER="5"),
    )
    port = free_port()
    api = processes.start(
        ["api", "--host", "127.0.0.1", "--port", str(port)],
        {"NOETL_NATS_URL": clean.nats_url, "NOETL_API_REPLY_TIMEOUT": "10"},
    )
    await wait_consumer_process(clean, consumer)
    base = f"http://127.0.0.1:{port}"
    await wait_http(base, api)

    async with httpx.AsyncClient(base_url=base, timeout=30) as client:
        registered = await client.post(
            "/api/worker/pool/register", json={"name": "proc pool.1", "runtime": "python", "capacity": 2}
        )
        assert registered.status_code == 200, registered.text
        body = registered.json()
        assert body == {
            "status": "ok",
            "name": "proc pool.1",
            "runtime_id": body["runtime_id"],
            "kind": "worker_pool",
            "runtime": "python",
        }
        beat = await client.post("/api/worker/pool/heartbeat", json={"name": "proc pool.1"})
        assert beat.json() == {"status": "ok", "name": "proc pool.1", "runtime_id": body["runtime_id"]}
        unknown = await client.post("/api/worker/pool/heartbeat", json={"name": "nobody"})
        assert unknown.status_code == 404
        assert unknown.headers["Retry-After"] == "5"
        listed = (await client.get("/api/worker/pools", params={"runtime": "python"})).json()
        assert [i["name"] for i in listed["items"]] == ["proc pool.1"]
        big = await client.post(
            "/api/worker/pool/register",
            content=b"{" + b" " * (600 * 1024) + b"}",
            headers={"Content-Type": "application/json"},
        )
        assert big.status_code == 413
        bad = await client.post(
            "/api/worker/pool/register", content=b"{nope", headers={"Content-Type": "application/json"}
        )
        assert bad.status_code == 422
        gone = await client.request("DELETE", "/api/worker/pool/deregister", json={"name": "proc pool.1"})
        assert gone.status_code == 200
        assert (await client.get("/openapi.json")).status_code == 200

    # The relay in the consumer process published the events.
    async def relayed():
        return await db.value("SELECT count(*) FROM outbox") == 0

    await wait_for(relayed, what="the relay to publish every event")
    assert await db.events_for("proc pool.1") == ["runtime.registered", "runtime.deregistered"]

    # uvicorn shuts down cleanly, then re-raises the signal it caught: -SIGTERM is its clean exit.
    assert await stop_gracefully(api) in (0, -signal.SIGTERM), api.output()
    assert "Application shutdown complete" in api.output()
    assert await stop_gracefully(consumer) == 0, consumer.output()


async def test_noetl_worker_registers_beats_and_deregisters(
    clean: Servers, processes: Processes, db: Db
) -> None:
    consumer = processes.start(["consumer", "runtime"], process_env(clean))
    await wait_consumer_process(clean, consumer)
    worker = processes.start(
        ["worker", "--name", "cli.worker", "--runtime", "python", "--capacity", "3"],
        {"NOETL_NATS_URL": clean.nats_url, "NOETL_WORKER_HEARTBEAT_INTERVAL": "0.3"},
    )
    row = await wait_for(lambda: db.component("cli.worker"), timeout=30, what="the worker to register")
    assert row["capacity"] == 3
    assert row["runtime"]["type"] == "python"
    assert row["runtime"]["pid"] == worker.pid
    first = row["heartbeat"]

    async def beat_advanced():
        current = await db.component("cli.worker")
        return current["heartbeat"] > first

    await wait_for(beat_advanced, what="a heartbeat from the worker")
    # The registry forgets the worker: its next beat is answered `unknown`, and it registers again.
    await db.execute("DELETE FROM runtime_components WHERE kind = 'worker_pool' AND name = 'cli.worker'")
    again = await wait_for(
        lambda: db.component("cli.worker"), timeout=30, what="the worker to register again"
    )
    assert again["runtime_id"] != row["runtime_id"] and again["status"] == "ready"
    assert await stop_gracefully(worker) == 0, worker.output()
    await wait_for(
        lambda: _status_is(db, "cli.worker", "offline"), what="the worker to deregister on SIGTERM"
    )
    assert await stop_gracefully(consumer) == 0, consumer.output()


async def publish_registrations(nc, names: list[str]) -> list[str]:
    """Registrations straight onto the bus, as workers publish them: `Nats-Msg-Id`, no reply."""
    js = nc.jetstream()
    ids = []
    futures = []
    for name in names:
        command = Command(
            id=uuid.uuid4().hex, type="runtime.register", payload={"name": name, "runtime": "python"}
        )
        ids.append(command.id)
        futures.append(
            await js.publish_async(
                subjects.RUNTIME_REGISTER,
                command.model_dump_json().encode(),
                headers={MSG_ID_HEADER: command.id},
            )
        )
    acks = await asyncio.gather(*futures)
    assert not any(a.duplicate for a in acks)
    return ids


async def assert_applied_exactly_once(db: Db, names: list[str], ids: list[str]) -> None:
    assert await db.value("SELECT count(*) FROM runtime_components") == len(names)
    assert await db.value("SELECT count(DISTINCT name) FROM runtime_components") == len(names)
    assert await db.value("SELECT count(*) FROM processed_commands") == len(ids)
    assert await db.value("SELECT count(*) FROM processed_commands WHERE request_id = ANY(%s)", ids) == len(
        ids
    )
    assert await db.value("SELECT count(*) FROM events WHERE type = 'runtime.registered'") == len(names)
    assert await db.value(
        "SELECT count(DISTINCT entity->>'name') FROM events WHERE type = 'runtime.registered'"
    ) == len(names)
    assert await db.value("SELECT count(*) FROM dead_letters") == 0


async def commands_drained(nc) -> bool:
    info = await nc.jetstream().consumer_info(subjects.COMMANDS_STREAM, "runtime-commands")
    return info.num_pending == 0 and info.num_ack_pending == 0


async def test_consumer_killed_mid_batch_loses_nothing_and_applies_nothing_twice(
    clean: Servers, processes: Processes, db: Db, nc
) -> None:
    names = [f"kill-{i:05d}" for i in range(6000)]
    ids = await publish_registrations(nc, names)
    env = process_env(clean, NOETL_CONSUMER_BATCH_SIZE="50", NOETL_CONSUMER_ACK_WAIT="2")

    first = processes.start(["consumer", "runtime"], env)

    async def some_applied():
        assert first.popen.poll() is None, first.output()
        return await db.value("SELECT count(*) FROM processed_commands") > 0

    await wait_for(some_applied, timeout=60, interval=0.01, what="the first batches")
    first.signal(signal.SIGKILL)
    await asyncio.to_thread(first.wait, 10)
    applied_before_kill = await db.value("SELECT count(*) FROM processed_commands")
    assert 0 < applied_before_kill < len(names), "the kill did not land mid-way; make the work bigger"
    # Whatever committed is consistent: every applied command has its row and its one event.
    assert await db.value("SELECT count(*) FROM runtime_components") == applied_before_kill
    assert await db.value("SELECT count(*) FROM events") == applied_before_kill

    second = processes.start(["consumer", "runtime"], env)

    async def all_applied():
        assert second.popen.poll() is None, second.output()
        return await db.value("SELECT count(*) FROM processed_commands") == len(
            ids
        ) and await commands_drained(nc)

    await wait_for(all_applied, timeout=90, interval=0.2, what="every command applied after the restart")
    await assert_applied_exactly_once(db, names, ids)
    assert await stop_gracefully(second) == 0


@pytest.fixture
async def appliers(db: Db) -> AsyncIterator[Db]:
    """Test instrumentation: which process (by `application_name`) recorded each command."""
    await db.execute("CREATE TABLE IF NOT EXISTS test_appliers (app text NOT NULL)")
    await db.execute("TRUNCATE test_appliers")
    await db.execute(
        """
        CREATE OR REPLACE FUNCTION test_record_applier() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            INSERT INTO test_appliers VALUES (current_setting('application_name'));
            RETURN NULL;
        END $$
        """
    )
    await db.execute(
        "CREATE TRIGGER test_record_applier AFTER INSERT ON processed_commands "
        "FOR EACH ROW EXECUTE FUNCTION test_record_applier()"
    )
    try:
        yield db
    finally:
        await db.execute("DROP TRIGGER IF EXISTS test_record_applier ON processed_commands")
        await db.execute("DROP FUNCTION IF EXISTS test_record_applier()")
        await db.execute("DROP TABLE IF EXISTS test_appliers")


async def test_two_consumer_processes_share_the_work(
    clean: Servers, processes: Processes, appliers: Db, nc
) -> None:
    db = appliers
    consumers = [
        processes.start(
            ["consumer", "runtime"],
            process_env(clean, NOETL_CONSUMER_BATCH_SIZE="20", PGAPPNAME=f"consumer-{i}"),
        )
        for i in range(2)
    ]
    for proc in consumers:
        await wait_consumer_process(clean, proc)

    async def both_pulling():
        info = await nc.jetstream().consumer_info(subjects.COMMANDS_STREAM, "runtime-commands")
        return info.num_waiting >= 2

    await wait_for(both_pulling, what="both processes pulling from the one durable")
    names = [f"share-{i:05d}" for i in range(3000)]
    ids = await publish_registrations(nc, names)

    async def all_applied():
        for proc in consumers:
            assert proc.popen.poll() is None, proc.output()
        done = await db.value("SELECT count(*) FROM processed_commands") == len(ids)
        return done and await commands_drained(nc)

    await wait_for(all_applied, timeout=90, interval=0.2, what="every command applied")
    await assert_applied_exactly_once(db, names, ids)
    shares = {
        r["app"]: r["n"] for r in await db.all("SELECT app, count(*) AS n FROM test_appliers GROUP BY app")
    }
    assert set(shares) == {"consumer-0", "consumer-1"}, shares
    assert sum(shares.values()) == len(ids)
    for proc in consumers:
        assert await stop_gracefully(proc) == 0, proc.output()


async def test_a_second_consumer_takes_over_when_one_is_killed(
    clean: Servers, processes: Processes, db: Db, nc
) -> None:
    env = process_env(clean, NOETL_CONSUMER_BATCH_SIZE="50", NOETL_CONSUMER_ACK_WAIT="2")
    survivor = processes.start(["consumer", "runtime"], env)
    victim = processes.start(["consumer", "runtime"], env)
    for proc in (survivor, victim):
        await wait_consumer_process(clean, proc)
    names = [f"takeover-{i:05d}" for i in range(4000)]
    ids = await publish_registrations(nc, names)

    async def some_applied():
        return await db.value("SELECT count(*) FROM processed_commands") > 0

    await wait_for(some_applied, interval=0.01, what="work to start")
    victim.signal(signal.SIGKILL)

    async def all_applied():
        assert survivor.popen.poll() is None, survivor.output()
        return await db.value("SELECT count(*) FROM processed_commands") == len(
            ids
        ) and await commands_drained(nc)

    await wait_for(all_applied, timeout=90, interval=0.2, what="the survivor to finish the work")
    await assert_applied_exactly_once(db, names, ids)
