"""`Idempotency-Key`: the same key gives the same outcome and one effect; a reused key is a 409.

Also the consumer's side of exactly-once: a command redelivered (same request id, a new stream
message) is answered from `processed_commands`, never applied again.
"""

from __future__ import annotations

import asyncio
import json
import uuid

from conftest import Db, Stack, StackFactory, wait_for

from noetl.bus import subjects
from noetl.bus.envelope import MSG_ID_HEADER, OUTCOMES, REPLY_TO_HEADER, Command, Outcome, fingerprint


def key() -> str:
    return f"key-{uuid.uuid4().hex}"


async def test_same_key_twice_one_effect_same_response(stack: Stack, db: Db) -> None:
    body = {"name": "idem-pool", "runtime": "python", "capacity": 2}
    headers = {"Idempotency-Key": key()}
    first = await stack.client.post("/api/worker/pool/register", json=body, headers=headers)
    second = await stack.client.post("/api/worker/pool/register", json=body, headers=headers)
    assert first.status_code == second.status_code == 200
    assert first.json() == second.json()
    assert first.json()["name"] == "idem-pool"
    assert first.headers["X-Request-ID"] == second.headers["X-Request-ID"]

    request_id = first.headers["X-Request-ID"]
    assert await db.value("SELECT count(*) FROM processed_commands WHERE request_id = %s", request_id) == 1
    assert await db.value("SELECT count(*) FROM processed_commands") == 1
    assert await db.events_for("idem-pool") == ["runtime.registered"]
    assert await db.value("SELECT count(*) FROM runtime_components") == 1


async def test_same_key_concurrently_one_effect(stack: Stack, db: Db) -> None:
    body = {"name": "idem-concurrent", "runtime": "python"}
    headers = {"Idempotency-Key": key()}
    responses = await asyncio.gather(
        *[stack.client.post("/api/worker/pool/register", json=body, headers=headers) for _ in range(8)]
    )
    assert {r.status_code for r in responses} == {200}
    assert len({json.dumps(r.json(), sort_keys=True) for r in responses}) == 1
    assert await db.events_for("idem-concurrent") == ["runtime.registered"]
    assert await db.value("SELECT count(*) FROM processed_commands") == 1


async def test_idempotent_deregister_after_reregistration_is_not_reapplied(stack: Stack, db: Db) -> None:
    """A retried deregister must not mark offline a pool that registered again in between."""
    await stack.client.post("/api/worker/pool/register", json={"name": "idem-dereg", "runtime": "python"})
    headers = {"Idempotency-Key": key()}
    first = await stack.client.request(
        "DELETE", "/api/worker/pool/deregister", json={"name": "idem-dereg"}, headers=headers
    )
    assert first.status_code == 200
    again = await stack.client.post(
        "/api/worker/pool/register", json={"name": "idem-dereg", "runtime": "python"}
    )
    assert again.status_code == 200
    retry = await stack.client.request(
        "DELETE", "/api/worker/pool/deregister", json={"name": "idem-dereg"}, headers=headers
    )
    assert retry.status_code == 200
    assert retry.json() == first.json()
    assert (await db.component("idem-dereg"))["status"] == "ready"
    assert await db.events_for("idem-dereg") == [
        "runtime.registered",
        "runtime.deregistered",
        "runtime.registered",
    ]


async def test_same_key_different_body_is_409(stack: Stack, db: Db) -> None:
    headers = {"Idempotency-Key": key()}
    first = await stack.client.post(
        "/api/worker/pool/register", json={"name": "idem-a", "runtime": "python"}, headers=headers
    )
    assert first.status_code == 200
    other = await stack.client.post(
        "/api/worker/pool/register", json={"name": "idem-b", "runtime": "python"}, headers=headers
    )
    assert other.status_code == 409, other.text
    assert "detail" in other.json()
    assert await db.component("idem-b") is None
    assert await db.events_for("idem-b") == []
    # The key still answers its own request with the original outcome.
    again = await stack.client.post(
        "/api/worker/pool/register", json={"name": "idem-a", "runtime": "python"}, headers=headers
    )
    assert again.status_code == 200
    assert again.json() == first.json()


async def test_same_key_on_another_endpoint_is_independent(stack: Stack, db: Db) -> None:
    shared = key()
    reg = await stack.client.post(
        "/api/worker/pool/register",
        json={"name": "idem-scope", "runtime": "python"},
        headers={"Idempotency-Key": shared},
    )
    dereg = await stack.client.request(
        "DELETE",
        "/api/worker/pool/deregister",
        json={"name": "idem-scope"},
        headers={"Idempotency-Key": shared},
    )
    assert reg.status_code == dereg.status_code == 200
    assert dereg.json()["runtime_id"] is None
    assert (await db.component("idem-scope"))["status"] == "offline"


async def test_different_keys_apply_twice(stack: Stack, db: Db) -> None:
    body = {"name": "idem-two-keys", "runtime": "python"}
    for _ in range(2):
        r = await stack.client.post(
            "/api/worker/pool/register", json=body, headers={"Idempotency-Key": key()}
        )
        assert r.status_code == 200
    assert await db.events_for("idem-two-keys") == ["runtime.registered", "runtime.registered"]
    assert await db.value("SELECT count(*) FROM processed_commands") == 2


async def test_late_idempotent_retry_gets_the_outcome(make_stack: StackFactory, db: Db) -> None:
    """First try times out (202, consumers down); the retry after they return gets the 200."""
    stack = await make_stack(consumers=False, api_reply_timeout=0.5)
    headers = {"Idempotency-Key": key()}
    body = {"name": "idem-late", "runtime": "python"}
    first = await stack.client.post("/api/worker/pool/register", json=body, headers=headers)
    assert first.status_code == 202
    request_id = first.json()["request_id"]
    await stack.start_consumers()
    await wait_for(lambda: db.component("idem-late"), what="the accepted registration")
    retry = await stack.client.post("/api/worker/pool/register", json=body, headers=headers)
    assert retry.status_code == 200
    assert retry.headers["X-Request-ID"] == request_id
    assert retry.json()["name"] == "idem-late"
    assert await db.events_for("idem-late") == ["runtime.registered"]


async def _send_raw(stack: Stack, nc, command: Command, msg_id: str) -> Outcome:
    """Publish a command straight onto the stream and wait for the consumer's reply."""
    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox)
    try:
        js = nc.jetstream()
        await js.publish(
            subjects.RUNTIME_REGISTER,
            command.model_dump_json().encode(),
            headers={MSG_ID_HEADER: msg_id, REPLY_TO_HEADER: inbox},
        )
        msg = await sub.next_msg(timeout=15)
        [outcome] = OUTCOMES.validate_json(msg.data)
        return outcome
    finally:
        await sub.unsubscribe()


async def test_redelivered_command_is_answered_from_the_record(stack: Stack, db: Db, nc) -> None:
    """The same request id arriving again as a new stream message (past the duplicate window,
    or a redelivery after a crash) is not applied again: the stored outcome is the answer."""
    payload = {"name": "idem-raw", "kind": "worker_pool", "runtime": "python", "status": "ready"}
    command = Command(
        id=uuid.uuid4().hex, type="runtime.register", payload=payload, fingerprint=fingerprint(payload)
    )
    first = await _send_raw(stack, nc, command, msg_id=uuid.uuid4().hex)
    second = await _send_raw(stack, nc, command, msg_id=uuid.uuid4().hex)
    assert first.error is None and first.result is not None
    assert second.model_dump() == first.model_dump()
    assert await db.events_for("idem-raw") == ["runtime.registered"]

    changed = {**payload, "name": "idem-raw-other"}
    reused = Command(
        id=command.id, type="runtime.register", payload=changed, fingerprint=fingerprint(changed)
    )
    conflict = await _send_raw(stack, nc, reused, msg_id=uuid.uuid4().hex)
    assert conflict.error is not None and conflict.error.code == "conflict"
    assert await db.component("idem-raw-other") is None
    assert await db.value("SELECT count(*) FROM processed_commands") == 1


async def test_heartbeat_with_a_repeated_key_answers_each_time(stack: Stack, db: Db) -> None:
    """Beats keep no outcome to replay; a repeated one is harmless, so the key does not hold it."""
    registered = await stack.client.post("/api/worker/pool/register", json={"name": "idem-hb"})
    headers = {"Idempotency-Key": key()}
    for _ in range(2):
        beat = await stack.client.post(
            "/api/worker/pool/heartbeat", json={"name": "idem-hb"}, headers=headers
        )
        assert beat.status_code == 200, beat.text
        assert beat.json() == {
            "status": "ok",
            "name": "idem-hb",
            "runtime_id": registered.json()["runtime_id"],
        }
    assert await db.events_for("idem-hb") == ["runtime.registered"]
