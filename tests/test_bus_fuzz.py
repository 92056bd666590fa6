"""A bus fuzzer: generated messages, from bytes to envelopes that are almost right, published
straight onto every subject the streams accept, with reply-to headers that point anywhere.

Whatever arrives, each command ends once (an outcome recorded, or a dead letter), no durable is left
redelivering, no reply lands on a command subject, and the next good request is answered as usual.
Seeded and bounded: `NOETL_FUZZ_SEED` replays a run, `NOETL_FUZZ_MESSAGES` makes it longer.
"""

from __future__ import annotations

import json
import os
import random
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from conftest import Db, Servers, Stack, StackFactory, wait_for
from helpers_execution import purge_jobs, truncate_domain

from consumers.process import CONSUMER_NAMES
from noetl.bus import subjects
from noetl.bus.envelope import MSG_ID_HEADER, REPLY_TO_HEADER
from noetl.bus.streams import STREAMS

SEED = int(os.environ.get("NOETL_FUZZ_SEED", "20261203"))
MESSAGES = int(os.environ.get("NOETL_FUZZ_MESSAGES", "400"))

PLAYBOOK = "kind: Playbook\nmetadata: {path: fuzz/pb}\nworkflow: [{step: start}]\n"
# A payload each command subject would apply: the fuzzer mutates these.
VALID: dict[str, dict[str, Any]] = {
    subjects.RUNTIME_REGISTER: {"name": "fz", "kind": "worker_pool", "runtime": "python", "capacity": 2},
    subjects.RUNTIME_DEREGISTER: {"name": "fz", "kind": "worker_pool"},
    subjects.CATALOG_REGISTER: {"content": PLAYBOOK},
    subjects.EXECUTION_RUN: {"path": "fuzz/pb", "parameters": {"a": 1}},
    subjects.EXECUTION_CANCEL: {"execution_id": "1", "reason": "fuzz"},
    subjects.EXECUTION_REPORT: {
        "job_id": "1",
        "execution_id": "1",
        "step": "start",
        "kind": "completed",
        "attempt": 1,
        "delivery": 1,
        "worker": "w",
        "result": {"x": 1},
    },
    subjects.EXECUTION_DEAD_JOB: {"subject": "noetl.job.python", "consumer": "c", "reason": "r", "data": ""},
    subjects.EXECUTION_CHILD_DONE: {"child_execution_id": "2", "parent_execution_id": "1", "status": "ok"},
    subjects.CREDENTIALS_REGISTER: {"name": "fz", "type": "generic", "data_encrypted": "not-a-token"},
    subjects.CREDENTIALS_DELETE: {"identifier": "fz"},
}
NASTY: list[Any] = [
    None,
    "",
    " ",
    "x\x00y",
    "\ud800",
    "²",
    "9" * 40,
    -1,
    0,
    2**63,
    -(2**63) - 1,
    1e308,
    1.5,
    True,
    [],
    {},
    [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]],
    "a" * 5000,
    "noetl.cmd.runtime.register",
    "../../etc",
    "日本語.🚀",
]
REPLY_TO = [None, None, subjects.RUNTIME_DEREGISTER, "noetl.evt.x", "_INBOX.fuzz", "bad subj", ""]
RAW: list[bytes] = [b"", b"\xff\xfe\x00", b"null", b"[1,2", b"NaN", b'{"id": 1}', b"1e400", b'"\\ud800"']


def _mutate(rng: random.Random, value: Any) -> Any:
    """One field of a payload replaced, removed or added; or the payload itself replaced."""
    if not isinstance(value, dict) or rng.random() < 0.1:
        return rng.choice(NASTY)
    value = dict(value)
    action = rng.random()
    if action < 0.6 and value:
        value[rng.choice(sorted(value))] = rng.choice(NASTY)
    elif action < 0.8 and value:
        del value[rng.choice(sorted(value))]
    else:
        value[rng.choice(["extra", "name", "kind", "path", "id"])] = rng.choice(NASTY)
    return value


def _is_command(subject: str) -> bool:
    return subject in subjects.COMMAND_SUBJECTS


def _envelope(rng: random.Random, subject: str, payload: Any) -> bytes:
    """An envelope whose parts may be wrong too: id, type, the time it was sent."""
    envelope: dict[str, Any] = {
        "id": uuid.uuid4().hex,
        "type": subjects.command_type(subject) if _is_command(subject) else subjects.HEARTBEAT_TYPE,
        "payload": payload,
    }
    if rng.random() < 0.15:
        envelope[rng.choice(["id", "type"])] = rng.choice(NASTY)
    text = json.dumps(envelope, allow_nan=True)
    return text.encode("utf-8", "surrogatepass")


def _heartbeat(rng: random.Random) -> tuple[str, bytes]:
    kind = rng.choice(["worker_pool", "server_api", "broker"])
    name = rng.choice(["fz", "other", "日本語", "with.dot"])
    subject = subjects.heartbeat(kind, name)
    payload = {"kind": kind, "name": name, "sent_at": "2026-01-01T00:00:00Z"}
    if rng.random() < 0.7:
        payload = _mutate(rng, payload)
    return subject, _envelope(rng, subject, payload)


def messages(rng: random.Random, count: int) -> list[tuple[str, bytes, str | None]]:
    """(subject, data, reply-to) for each message of a run."""
    out = []
    for _ in range(count):
        if rng.random() < 0.2:
            subject, data = _heartbeat(rng)
        else:
            subject = rng.choice(sorted(VALID))
            choice = rng.random()
            if choice < 0.15:
                data = rng.choice(RAW)
            elif choice < 0.3:
                data = _envelope(rng, subject, VALID[subject])
            else:
                data = _envelope(rng, subject, _mutate(rng, VALID[subject]))
        reply_to = rng.choice(REPLY_TO)
        out.append((subject, data, reply_to))
    return out


@pytest.fixture
async def every_consumer(make_stack: StackFactory, servers: Servers) -> AsyncIterator[Stack]:
    """A facade and every consumer that applies commands, on empty tables and streams."""
    await truncate_domain(servers.dsn)
    await purge_jobs(servers.nats_url)
    stack = await make_stack(consumers=False)
    await stack.start_consumers([name for name in CONSUMER_NAMES if name != "sweeper"])
    try:
        yield stack
    finally:
        await stack.stop_consumers()
        await purge_jobs(servers.nats_url)


def _request_id(data: bytes) -> str | None:
    try:
        envelope = json.loads(data)
    except ValueError:
        return None
    return envelope.get("id") if isinstance(envelope, dict) and isinstance(envelope.get("id"), str) else None


async def test_whatever_the_bus_carries_each_command_ends_once_and_service_goes_on(
    every_consumer: Stack, db: Db, nc
) -> None:
    stack = every_consumer
    # A reply obeyed on a command subject would be a message there that the fuzzer did not send.
    sent: set[str] = set()
    strays: list[str] = []

    async def on_command(msg) -> None:
        if (msg.headers or {}).get(MSG_ID_HEADER) not in sent:
            strays.append(msg.data.decode("utf-8", "replace")[:200])

    watch = await nc.subscribe(subjects.RUNTIME_DEREGISTER, cb=on_command)
    js = nc.jetstream()
    commands: dict[str, str | None] = {}  # message id -> request id, for each command sent
    rng = random.Random(SEED)
    for subject, data, reply_to in messages(rng, MESSAGES):
        msg_id = uuid.uuid4().hex
        sent.add(msg_id)
        headers = {MSG_ID_HEADER: msg_id} | ({REPLY_TO_HEADER: reply_to} if reply_to else {})
        await js.publish(subject, data, headers=headers)
        if _is_command(subject):
            commands[msg_id] = _request_id(data)

    durables = {
        (config.name, info.name)
        for config in STREAMS
        if config.name in (subjects.COMMANDS_STREAM, subjects.HEARTBEATS_STREAM)
        for info in await js.consumers_info(config.name)
    }

    async def drained() -> bool:
        for stream, durable in durables:
            info = await js.consumer_info(stream, durable)
            if info.num_pending or info.num_ack_pending:
                return False
        return True

    await wait_for(drained, timeout=120, what=f"every durable to settle (seed {SEED})")

    left: list[tuple[str, str | None]] = []

    async def ended() -> bool:
        letters = {r["id"] for r in await db.all("SELECT headers->>'Nats-Msg-Id' AS id FROM dead_letters")}
        recorded = {r["id"] for r in await db.all("SELECT request_id AS id FROM processed_commands")}
        left[:] = [(m, r) for m, r in commands.items() if m not in letters and r not in recorded]
        return not left

    try:
        await wait_for(ended, timeout=60, what=f"each command to end in an outcome or a dead letter ({SEED})")
    finally:
        assert not left, left[:5]
    await watch.unsubscribe()
    # The run covered both ends, and replies that had to be refused.
    assert await db.value("SELECT count(*) FROM dead_letters") > MESSAGES // 20
    assert await db.value("SELECT count(*) FROM processed_commands") > MESSAGES // 20
    assert strays == [], f"a reply went to a command subject (seed {SEED})"

    # Service goes on, for everyone.
    response = await stack.client.post("/api/worker/pool/register", json={"name": "after-fuzz"})
    assert response.status_code == 200, response.text
    listed = await stack.client.get("/api/worker/pools")
    assert listed.status_code == 200
    assert "after-fuzz" in [item["name"] for item in listed.json()["items"]]
    registered = await stack.client.post("/api/catalog/register", json={"content": PLAYBOOK})
    assert registered.status_code == 200, registered.text
