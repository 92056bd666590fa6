"""The puller hands back what it was sent but never took, so no consumer after it loses a message.

This matters most on the heartbeat consumer, acked with AckAll: the next consumer's ack of a later
beat would count a beat stuck with the stopped one as done.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import nats
import pytest
from conftest import Servers
from nats.js.api import AckPolicy, ConsumerConfig, StreamConfig

from noetl.bus.pull import Puller

STREAM = "TEST_PULL"
DURABLE = "test-pull"
# Far longer than the test waits: a message that comes back in time was handed back, not timed out.
ACK_WAIT = 60.0


@pytest.fixture
async def all_acked(servers: Servers) -> AsyncIterator[nats.NATS]:
    """A stream with an AckAll durable, as the heartbeats have, removed afterwards."""
    client = await nats.connect(servers.nats_url, connect_timeout=5)
    js = client.jetstream()
    await js.add_stream(StreamConfig(name=STREAM, subjects=["test.pull.>"]))
    await js.add_consumer(
        STREAM, ConsumerConfig(durable_name=DURABLE, ack_policy=AckPolicy.ALL, ack_wait=ACK_WAIT)
    )
    try:
        yield client
    finally:
        await js.delete_stream(STREAM)
        await client.close()


async def test_a_stopped_puller_hands_back_what_came_after_its_last_fetch(
    servers: Servers, all_acked: nats.NATS
) -> None:
    stopping = await nats.connect(servers.nats_url, connect_timeout=5)
    try:
        first = Puller(stopping, STREAM, DURABLE)
        await first.start()
        waiting = asyncio.ensure_future(first.fetch(10, timeout=5.0))  # an empty stream: it lingers
        await asyncio.sleep(0.3)
        waiting.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await waiting
        # The pull request is still open on the server, so this goes to the stopped puller.
        await all_acked.jetstream().publish("test.pull.one", b"one")
        await asyncio.sleep(0.3)
        await first.hand_back()
    finally:
        await stopping.close()

    second = Puller(all_acked, STREAM, DURABLE)
    await second.start()
    try:
        [msg] = await second.fetch(10, timeout=5.0)
        assert msg.data == b"one"
        assert msg.metadata.num_delivered == 2  # sent to the stopped puller first, then handed back
        await all_acked.jetstream().publish("test.pull.two", b"two")
        [later] = await second.fetch(10, timeout=5.0)
        assert later.data == b"two"
    finally:
        await second.hand_back()


async def test_hand_back_after_the_connection_is_gone_is_quiet(
    servers: Servers, all_acked: nats.NATS
) -> None:
    """A closed connection has no interest left to withdraw: nothing to give back, nothing raised."""
    gone = await nats.connect(servers.nats_url, connect_timeout=5)
    puller = Puller(gone, STREAM, DURABLE)
    await puller.start()
    await gone.close()
    await puller.hand_back()
