"""`AckedPublisher`: JetStream publishes whose acks come back on one inbox of our own."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from conftest import Servers, read_stream
from nats.js.errors import APIError, NoStreamResponseError

from noetl.bus import subjects
from noetl.bus.envelope import MSG_ID_HEADER
from noetl.bus.publish import AckedPublisher
from noetl.bus.streams import ensure_streams


@pytest.fixture
async def publisher(clean: Servers, nc) -> AsyncIterator[AckedPublisher]:
    await ensure_streams(nc.jetstream())
    publisher = AckedPublisher(nc)
    await publisher.start()
    yield publisher
    await publisher.stop()


async def test_every_message_is_stored_once_in_order(publisher: AckedPublisher, nc) -> None:
    subject = subjects.runtime_event("worker_pool", "acked", "registered")
    messages = [(subject, f"m{i}".encode(), {MSG_ID_HEADER: f"acked-{i}"}) for i in range(50)]
    await publisher.publish_all(messages, timeout=5)
    await publisher.publish_all(messages[:10], timeout=5)  # a relay's republish after a crash
    stored = await read_stream(nc.jetstream(), subject)
    assert [m.data for m in stored] == [f"m{i}".encode() for i in range(50)]


async def test_a_subject_no_stream_takes_is_refused(publisher: AckedPublisher) -> None:
    with pytest.raises(NoStreamResponseError):
        await publisher.publish_all([("nostream.at.all", b"x", {})], timeout=5)


async def test_a_refused_message_raises_and_the_rest_still_count(publisher: AckedPublisher, nc) -> None:
    subject = subjects.runtime_event("worker_pool", "refused", "registered")
    messages = [
        (subject, b"first", {MSG_ID_HEADER: "refused-1"}),
        (subject, b"wrong", {MSG_ID_HEADER: "refused-2", "Nats-Expected-Stream": "NO_SUCH_STREAM"}),
        (subject, b"third", {MSG_ID_HEADER: "refused-3"}),
    ]
    with pytest.raises(APIError):
        await publisher.publish_all(messages, timeout=5)
    stored = await read_stream(nc.jetstream(), subject)
    assert [m.data for m in stored] == [b"first", b"third"]
    # The publisher keeps working after a refusal.
    await publisher.publish_all([(subject, b"fourth", {MSG_ID_HEADER: "refused-4"})], timeout=5)
    assert [m.data for m in await read_stream(nc.jetstream(), subject)][-1] == b"fourth"
