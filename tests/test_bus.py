"""The bus: subject tokens made safe from any name, and garbage published straight onto the bus
(a dead-letter row with the original bytes and an event saying so; the consumer keeps serving)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import uuid
from urllib.parse import unquote

import pytest
from conftest import Db, Stack, stream_events, wait_for
from nats.js.errors import NoStreamResponseError

from noetl.bus import subjects
from noetl.bus.envelope import MSG_ID_HEADER, OUTCOMES, REPLY_TO_HEADER, Command, Outcome
from noetl.bus.streams import STREAMS

NAMES = [
    "plain",
    "with.dot",
    "with space",
    "star*",
    "gt>",
    ".leading",
    "trailing.",
    "..",
    "*",
    ">",
    "a.>",
    "%",
    "%2E",
    "with%2Edot",
    "tab\tinside",
    "ünïcödé",
    "日本語",
    "🚀",
    "$JS.API.STREAM.LIST",
    "-_-",
]

# --------------------------------------------------------------------------- tokens


@pytest.mark.parametrize("name", NAMES)
def test_token_is_one_safe_subject_token(name: str) -> None:
    token = subjects.token(name)
    assert token
    assert all(ch.isascii() and (ch.isalnum() or ch in "-_%") for ch in token), token
    for forbidden in (".", "*", ">", " ", "\t", "$"):
        assert forbidden not in token
    assert unquote(token) == name  # reversible, hence two names never share a token


def test_token_keeps_safe_names_readable() -> None:
    assert subjects.token("pool-1_A") == "pool-1_A"
    assert subjects.token("a.b") == "a%2Eb"


def test_token_is_injective() -> None:
    rng = random.Random(1234)
    alphabet = "ab.*> %2E_-é日\t"
    names = {"".join(rng.choice(alphabet) for _ in range(rng.randint(1, 6))) for _ in range(20_000)}
    names |= set(NAMES)
    tokens = {subjects.token(n) for n in names}
    assert len(tokens) == len(names)


@pytest.mark.parametrize("name", NAMES)
def test_subjects_keep_their_shape(name: str) -> None:
    heartbeat = subjects.heartbeat("worker_pool", name)
    assert heartbeat.split(".")[:3] == ["noetl", "hb", "worker_pool"]
    assert len(heartbeat.split(".")) == 4
    event = subjects.runtime_event("broker", name, "registered")
    assert event.split(".") == ["noetl", "evt", "runtime", "broker", subjects.token(name), "registered"]
    reply = subjects.reply(name)
    assert reply.split(".") == ["noetl", "reply", subjects.token(name)]


def test_every_stream_subject_is_owned_by_one_stream() -> None:
    owned = [s for config in STREAMS for s in config.subjects]
    assert set(subjects.COMMAND_SUBJECTS) <= set(owned)
    assert subjects.EVENTS_ALL in owned and subjects.heartbeats_of("worker_pool") in owned
    assert len(owned) == len(set(owned))
    for name in NAMES:
        assert subjects.heartbeat("worker_pool", name).startswith("noetl.hb.")
        assert subjects.runtime_event("worker_pool", name, "online").startswith("noetl.evt.")
        assert not subjects.reply(name).startswith(("noetl.cmd.", "noetl.hb.", "noetl.evt."))


def test_streams_take_only_what_a_consumer_reads() -> None:
    """Exact command subjects, no wildcard that would catch a subject no consumer applies."""
    [commands] = [c for c in STREAMS if c.name == subjects.COMMANDS_STREAM]
    assert commands.subjects == list(subjects.COMMAND_SUBJECTS)
    assert all(subjects.publishable(s) for s in commands.subjects)
    [beats] = [c for c in STREAMS if c.name == subjects.HEARTBEATS_STREAM]
    assert all(s.count(".") == 3 and s.endswith(".*") for s in beats.subjects)


@pytest.mark.parametrize("value", ["", "/", " "])
def test_no_token_is_empty(value: str) -> None:
    """An empty name once made `noetl.evt.catalog..registered`, which no stream takes."""
    assert subjects.token(value)
    assert subjects.publishable(subjects.catalog_event(value.strip().strip("/"), "registered"))
    assert subjects.token("") != subjects.token("%")


async def test_a_wildcard_subscriber_gets_exactly_its_component(stack: Stack, nc) -> None:
    """A core subscriber on one component's heartbeat subject sees its beats and no one else's."""
    received: list[str] = []

    async def on_msg(msg) -> None:
        received.append(json.loads(msg.data)["payload"]["name"])

    await nc.subscribe(subjects.heartbeat("worker_pool", "a"), cb=on_msg)
    for name in ["a", "a.b", "a.*", "a.>", "*", ">"]:
        assert (await stack.client.post("/api/worker/pool/register", json={"name": name})).status_code == 200
        assert (await stack.client.post("/api/worker/pool/heartbeat", json={"name": name})).status_code == 200
    await nc.flush()
    await asyncio.sleep(0.2)
    assert received == ["a"]


# --------------------------------------------------------------------------- garbage on the bus


async def publish_raw(nc, subject: str, data: bytes, reply_to: str | None = None) -> None:
    headers = {MSG_ID_HEADER: uuid.uuid4().hex}
    if reply_to:
        headers[REPLY_TO_HEADER] = reply_to
    ack = await nc.jetstream().publish(subject, data, headers=headers)
    assert not ack.duplicate


async def dead_letters(db: Db, count: int) -> list[dict]:
    async def enough():
        rows = await db.all("SELECT * FROM dead_letters ORDER BY id")
        return rows if len(rows) >= count else None

    rows = await wait_for(enough, what=f"{count} dead letter(s)")
    assert len(rows) == count, rows
    return rows


async def consumer_drained(nc, durable: str, stream: str = subjects.COMMANDS_STREAM) -> None:
    async def drained():
        info = await nc.jetstream().consumer_info(stream, durable)
        return info.num_pending == 0 and info.num_ack_pending == 0

    await wait_for(drained, what=f"{durable} to ack everything")


GARBAGE = {
    "binary": b"\xff\xfe\x00\x01garbage",
    "text": b"hello",
    "empty": b"",
    "json-array": b"[1, 2, 3]",
    "json-not-envelope": b'{"foo": "bar"}',
    "envelope-missing-id": json.dumps({"type": "runtime.register", "payload": {"name": "x"}}).encode(),
    "envelope-payload-not-object": json.dumps(
        {"id": "r1", "type": "runtime.register", "payload": [1]}
    ).encode(),
    "truncated": b'{"id": "r2", "type": "runtime.register", "payload": {"name": "x"',
}


@pytest.mark.parametrize("data", GARBAGE.values(), ids=GARBAGE.keys())
async def test_garbage_command_becomes_a_dead_letter(stack: Stack, db: Db, nc, data: bytes) -> None:
    await publish_raw(nc, subjects.RUNTIME_REGISTER, data)
    [letter] = await dead_letters(db, 1)
    assert letter["subject"] == subjects.RUNTIME_REGISTER
    assert letter["consumer"] == "runtime-commands"
    assert bytes(letter["data"]) == data
    assert letter["reason"]
    assert letter["deliveries"] == 1
    assert letter["headers"][MSG_ID_HEADER]
    await consumer_drained(nc, "runtime-commands")
    assert await db.value("SELECT count(*) FROM runtime_components") == 0
    assert await db.value("SELECT count(*) FROM processed_commands") == 0

    # An event says so, on the events stream.
    event_row = await db.one("SELECT * FROM events WHERE type = 'system.dead_letter'")
    assert event_row["payload"]["dead_letter_id"] == str(letter["id"])
    assert event_row["subject"] == subjects.DEAD_LETTER_EVENT

    async def relayed():
        return await stream_events(nc.jetstream(), subjects.DEAD_LETTER_EVENT)

    [event] = await wait_for(relayed, what="the dead-letter event on the stream")
    assert event["type"] == "system.dead_letter"
    assert event["payload"]["dead_letter_id"] == str(letter["id"])
    assert event["payload"]["subject"] == subjects.RUNTIME_REGISTER

    # And the consumer keeps serving.
    response = await stack.client.post("/api/worker/pool/register", json={"name": "after-garbage"})
    assert response.status_code == 200


@pytest.mark.parametrize(
    ("subject", "data"),
    [
        (subjects.heartbeat("worker_pool", "x"), b"\x00\x01\x02"),
        (subjects.heartbeat("worker_pool", "x"), b'{"id": "hb", "type": "runtime.heartbeat", "payload": {}}'),
        (
            subjects.heartbeat("worker_pool", "x"),
            json.dumps(
                {
                    "id": "hb2",
                    "type": "runtime.heartbeat",
                    "payload": {"name": "x", "kind": "queue", "sent_at": "now"},
                }
            ).encode(),
        ),
        (
            subjects.heartbeat("worker_pool", "x"),
            json.dumps(
                {
                    "id": "hb3",
                    "type": "runtime.heartbeat",
                    "payload": {"name": "someone-else", "sent_at": "2024-01-01T00:00:00Z"},
                }
            ).encode(),
        ),
    ],
    ids=["binary", "empty-payload", "invalid-heartbeat", "another-components-beat"],
)
async def test_garbage_heartbeat_becomes_a_dead_letter(
    stack: Stack, db: Db, nc, subject: str, data: bytes
) -> None:
    await stack.client.post("/api/worker/pool/register", json={"name": "x"})
    await publish_raw(nc, subject, data)
    [letter] = await dead_letters(db, 1)
    assert letter["consumer"] == "runtime-heartbeats"
    assert letter["subject"] == subject
    assert bytes(letter["data"]) == data
    beat = await stack.client.post("/api/worker/pool/heartbeat", json={"name": "x"})
    assert beat.status_code == 200


async def test_garbage_mixed_into_a_batch_loses_nothing(make_stack, db: Db, nc) -> None:
    """Valid commands published around garbage, while the consumer is down so they arrive as one
    batch: every valid one applied once, every bad one dead-lettered once."""
    stack = await make_stack(consumers=False)
    expected = []
    for i in range(40):
        name = f"mixed-{i:02d}"
        expected.append(name)
        command = Command(id=uuid.uuid4().hex, type="runtime.register", payload={"name": name})
        await publish_raw(nc, subjects.RUNTIME_REGISTER, command.model_dump_json().encode())
        if i % 8 == 0:
            await publish_raw(nc, subjects.RUNTIME_REGISTER, f"garbage {i}".encode())
    await stack.start_consumers()
    await consumer_drained(nc, "runtime-commands")
    letters = await dead_letters(db, 5)
    assert sorted(bytes(r["data"]) for r in letters) == sorted(
        f"garbage {i}".encode() for i in range(0, 40, 8)
    )
    rows = await db.all("SELECT name FROM runtime_components ORDER BY name")
    assert [r["name"] for r in rows] == expected
    assert await db.value("SELECT count(*) FROM processed_commands") == 40
    assert await db.value("SELECT count(*) FROM events WHERE type = 'runtime.registered'") == 40
    assert await db.value("SELECT count(*) FROM events WHERE type = 'system.dead_letter'") == 5


async def test_a_batch_answers_each_reply_subject_with_one_message(make_stack, nc) -> None:
    """Commands queued for one batch: every outcome reaches the subject its command named, once,
    and each subject gets one message (a JSON array) per batch instead of one per command."""
    stack = await make_stack(consumers=False)
    inboxes = [nc.new_inbox(), nc.new_inbox()]
    subs = [await nc.subscribe(inbox) for inbox in inboxes]
    sent: dict[str, list[str]] = {inbox: [] for inbox in inboxes}
    for i in range(30):
        inbox = inboxes[i % 2]
        command = Command(id=uuid.uuid4().hex, type="runtime.register", payload={"name": f"batched-{i}"})
        await publish_raw(nc, subjects.RUNTIME_REGISTER, command.model_dump_json().encode(), reply_to=inbox)
        sent[inbox].append(command.id)
    await stack.start_consumers()
    for inbox, sub in zip(inboxes, subs, strict=True):
        answered: list[Outcome] = []
        messages = 0
        while len(answered) < len(sent[inbox]):
            answered += OUTCOMES.validate_json((await sub.next_msg(timeout=15)).data)
            messages += 1
        assert [o.request_id for o in answered] == sent[inbox]
        assert all(o.error is None and o.result["status"] == "ok" for o in answered)
        assert messages < len(sent[inbox])
        with contextlib.suppress(TimeoutError):
            extra = await sub.next_msg(timeout=0.5)
            raise AssertionError(f"answered twice: {extra.data!r}")


async def _outcome(nc, subject: str, command: Command) -> Outcome:
    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox)
    try:
        await publish_raw(nc, subject, command.model_dump_json().encode(), reply_to=inbox)
        msg = await sub.next_msg(timeout=15)
        [outcome] = OUTCOMES.validate_json(msg.data)
        return outcome
    finally:
        await sub.unsubscribe()


async def test_well_formed_envelope_with_invalid_payload_is_answered_not_applied(
    stack: Stack, db: Db, nc
) -> None:
    """Not garbage: the envelope decodes, so the sender gets an `invalid` outcome (recorded)."""
    cases = [
        {"kind": "worker_pool"},
        {"name": "x\x01y"},
        {"name": "ok", "kind": "queue"},
        {"name": "ok", "capacity": -3},
    ]
    for payload in cases:
        command = Command(id=uuid.uuid4().hex, type="runtime.register", payload=payload)
        outcome = await _outcome(nc, subjects.RUNTIME_REGISTER, command)
        assert outcome.request_id == command.id
        assert outcome.error is not None and outcome.error.code == "invalid", outcome
    missing_uri = Command(
        id=uuid.uuid4().hex, type="runtime.register", payload={"name": "b", "kind": "broker"}
    )
    outcome = await _outcome(nc, subjects.RUNTIME_REGISTER, missing_uri)
    assert outcome.error is not None and outcome.error.code == "bad_request"
    assert await db.value("SELECT count(*) FROM runtime_components") == 0
    assert await db.value("SELECT count(*) FROM dead_letters") == 0
    assert await db.value("SELECT count(*) FROM processed_commands") == len(cases) + 1
    # The recorded outcome is what GET /api/requests/{id} reports.
    answer = await stack.client.get(f"/api/requests/{missing_uri.id}")
    assert answer.status_code == 200
    assert answer.json()["status_code"] == 400


@pytest.mark.parametrize(
    "subject",
    ["noetl.cmd.runtime.explode", "noetl.cmd.nothing", "noetl.hb.garbage", "noetl.hb.x.y.z", "noetl.job.a.b"],
)
async def test_a_subject_no_consumer_reads_is_refused_by_the_streams(
    stack: Stack, db: Db, nc, subject
) -> None:
    """It would wait in a work queue that nobody empties: the publisher hears at once."""
    with pytest.raises(NoStreamResponseError):
        await nc.jetstream().publish(subject, b"{}", headers={MSG_ID_HEADER: uuid.uuid4().hex})
    response = await stack.client.post("/api/worker/pool/register", json={"name": "after-unknown"})
    assert response.status_code == 200


async def test_a_command_whose_type_is_not_its_subjects_is_refused(stack: Stack, db: Db, nc) -> None:
    """On the subject of one command, only that command: the type and the subject must agree."""
    for kind in ("runtime.explode", "runtime.deregister", "execution.run"):
        command = Command(id=uuid.uuid4().hex, type=kind, payload={"name": "x"})
        outcome = await _outcome(nc, subjects.RUNTIME_REGISTER, command)
        assert outcome.error is not None and outcome.error.code == "bad_request", outcome
        answer = await stack.client.get(f"/api/requests/{command.id}")
        assert answer.json()["status_code"] == 400
    assert await db.value("SELECT count(*) FROM runtime_components") == 0
    response = await stack.client.post("/api/worker/pool/register", json={"name": "after-unknown"})
    assert response.status_code == 200


async def test_a_worker_publishing_without_reply_subject_is_applied(stack: Stack, db: Db, nc) -> None:
    """Workers publish on the bus with no HTTP and no one waiting for the reply."""
    command = Command(
        id=uuid.uuid4().hex, type="runtime.register", payload={"name": "bus-only", "runtime": "go"}
    )
    await publish_raw(nc, subjects.RUNTIME_REGISTER, command.model_dump_json().encode())
    row = await wait_for(lambda: db.component("bus-only"), what="the bus-only registration")
    assert row["runtime"]["type"] == "go"
    listed = (await stack.client.get("/api/worker/pools")).json()
    assert [i["name"] for i in listed["items"]] == ["bus-only"]
