"""`AckedPublisher`: JetStream publishes whose acks come back on one inbox of our own."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from conftest import Servers, read_stream
from nats.errors import MaxPayloadError
from nats.js.errors import APIError, NoStreamResponseError

from noetl.bus import subjects
from noetl.bus.envelope import MSG_ID_HEADER
from noetl.bus.publish import AckedPublisher
from noetl.bus.streams import ensure_streams


@pytest.fixture
async def publisher(clean: Servers, nc) -> AsyncIterator[AckedPublisher]:
    await ensure_streams(nc.jetstream(), 1)
    publisher = AckedPublisher(nc)
    await publisher.start()
    yield publisher
    await publisher.stop()


async def test_every_message_is_stored_once_in_order(publisher: AckedPublisher, nc) -> None:
    subject = subjects.runtime_event("worker_pool", "acked", "registered")
    messages = [(subject, f"m{i}".encode(), {MSG_ID_HEADER: f"acked-{i}"}) for i in range(50)]
    assert await publisher.publish_each(messages, timeout=5) == [None] * 50
    assert await publisher.publish_each(messages[:10], timeout=5) == [None] * 10  # a republish after a crash
    stored = await read_stream(nc.jetstream(), subject)
    assert [m.data for m in stored] == [f"m{i}".encode() for i in range(50)]


async def test_a_subject_no_stream_takes_is_refused(publisher: AckedPublisher) -> None:
    [fate] = await publisher.publish_each([("nostream.at.all", b"x", {})], timeout=5)
    assert isinstance(fate, NoStreamResponseError)


async def test_each_message_has_its_own_fate(publisher: AckedPublisher, nc) -> None:
    """A refusal among others: the others are stored, and the caller hears which one failed and
    why (so it publishes nothing again)."""
    subject = subjects.runtime_event("worker_pool", "refused", "registered")
    messages = [
        (subject, b"first", {MSG_ID_HEADER: "refused-1"}),
        (subject, b"wrong", {MSG_ID_HEADER: "refused-2", "Nats-Expected-Stream": "NO_SUCH_STREAM"}),
        (subject, b"x" * (nc.max_payload + 1), {MSG_ID_HEADER: "refused-3"}),
        (subject, b"fourth", {MSG_ID_HEADER: "refused-4"}),
    ]
    first, wrong, too_large, fourth = await publisher.publish_each(messages, timeout=5)
    assert first is None and fourth is None
    assert isinstance(wrong, APIError) and wrong.code == 400
    assert isinstance(too_large, MaxPayloadError)
    stored = await read_stream(nc.jetstream(), subject)
    assert [m.data for m in stored] == [b"first", b"fourth"]
    # The publisher keeps working after a refusal.
    assert await publisher.publish_each([(subject, b"fifth", {MSG_ID_HEADER: "refused-5"})], timeout=5) == [
        None
    ]
    assert [m.data for m in await read_stream(nc.jetstream(), subject)][-1] == b"fifth"


async def test_a_missing_ack_is_a_timeout(publisher: AckedPublisher, nc) -> None:
    """A message no one acks (a core subject without a stream, whose subscriber never answers)."""
    await nc.subscribe("silent.subject")
    [fate] = await publisher.publish_each([("silent.subject", b"x", {})], timeout=0.2)
    assert isinstance(fate, TimeoutError)
