"""NoETL on a NATS cluster: replicated streams and durables, a comma-separated server list, and
(`test_cluster_kill.py`) a node lost under load.

A 3-node nats-server cluster on loopback (`noetl.embedded.EmbeddedNatsCluster`), one per module.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import nats
import pytest
from conftest import Servers
from nats.js import JetStreamContext
from pydantic import ValidationError

from noetl.bus import subjects
from noetl.bus.connection import Bus
from noetl.bus.streams import (
    STREAMS,
    ReplicasRefused,
    command_consumer,
    ensure_consumer,
    ensure_streams,
    heartbeat_consumer,
    job_consumer,
)
from noetl.embedded import EmbeddedNatsCluster, free_port
from noetl.reach import connect_nats
from noetl.settings import Settings

COMMANDS = command_consumer("c-test", subjects.RUNTIME_REGISTER, max_deliver=5, ack_wait=5)
DURABLES = (
    (subjects.COMMANDS_STREAM, COMMANDS),
    (subjects.HEARTBEATS_STREAM, heartbeat_consumer("hb-test", ack_wait=5)),
    (subjects.JOBS_STREAM, job_consumer("python", lease=30, max_deliver=5)),
)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedNatsCluster]:
    nodes = EmbeddedNatsCluster(Path(tmp_path_factory.mktemp("cluster")))
    nodes.start()
    try:
        yield nodes
    finally:
        nodes.stop()


@pytest.fixture
async def js(cluster: EmbeddedNatsCluster) -> AsyncIterator[JetStreamContext]:
    """A client of the cluster with no stream in it."""
    nc = await nats.connect(Settings(nats_url=cluster.url).nats_servers, connect_timeout=5)
    jetstream = nc.jetstream()
    for config in STREAMS:
        try:
            await jetstream.delete_stream(config.name or "")
        except nats.js.errors.NotFoundError:
            pass
    try:
        yield jetstream
    finally:
        await nc.close()


async def replicas_of(js: JetStreamContext) -> dict[str, int | None]:
    found: dict[str, int | None] = {}
    for config in STREAMS:
        assert config.name is not None
        found[config.name] = (await js.stream_info(config.name)).config.num_replicas
    for stream, consumer in DURABLES:
        info = await js.consumer_info(stream, consumer.durable_name or "")
        found[f"{stream}/{consumer.durable_name}"] = info.config.num_replicas
    return found


async def test_every_stream_and_durable_has_the_replicas_asked_for(js: JetStreamContext) -> None:
    await ensure_streams(js, 3)
    for stream, consumer in DURABLES:
        await ensure_consumer(js, stream, consumer, 3)
    assert set((await replicas_of(js)).values()) == {3}
    # The memory stream too: its copies are in the other nodes' memory.
    beats = await js.stream_info(subjects.HEARTBEATS_STREAM)
    assert beats.config.storage == "memory"
    assert beats.cluster is not None and len(beats.cluster.replicas or []) == 2
    # Declaring again (every process does at start-up) changes nothing.
    await ensure_streams(js, 3)
    assert set((await replicas_of(js)).values()) == {3}


async def test_fewer_replicas_than_asked_are_scaled_up_and_said(
    js: JetStreamContext, caplog: pytest.LogCaptureFixture
) -> None:
    """A deployment that grows from one replica to three: the streams and durables declared
    before are updated, not silently left with one copy."""
    await ensure_streams(js, 1)
    for stream, consumer in DURABLES:
        await ensure_consumer(js, stream, consumer, 1)
    assert set((await replicas_of(js)).values()) == {1}
    with caplog.at_level(logging.WARNING, logger="noetl.bus.streams"):
        await ensure_streams(js, 3)
        for stream, consumer in DURABLES:
            await ensure_consumer(js, stream, consumer, 3)
    assert set((await replicas_of(js)).values()) == {3}
    said = caplog.text
    for config in STREAMS:
        assert f"stream {config.name}: replicas 1 -> 3" in said
    for stream, consumer in DURABLES:
        assert f"consumer {consumer.durable_name} on {stream}: replicas 1 -> 3" in said


async def test_replicas_on_a_single_server_are_refused_in_words(servers: Servers) -> None:
    nc = await nats.connect(servers.nats_url, connect_timeout=5)
    try:
        with pytest.raises(ReplicasRefused, match=r"NOETL_STREAM_REPLICAS=3.*not a cluster"):
            await ensure_streams(nc.jetstream(), 3)
    finally:
        await nc.close()


def test_nats_url_names_one_server_or_a_list() -> None:
    assert Settings(nats_url="nats://a:4222").nats_servers == ["nats://a:4222"]
    spaced = Settings(nats_url=" nats://a:4222, nats://b:4222 ,nats://c:4222,")
    assert spaced.nats_servers == ["nats://a:4222", "nats://b:4222", "nats://c:4222"]
    with pytest.raises(ValidationError, match="no NATS server"):
        Settings(nats_url=" , ")


async def test_every_client_starts_with_any_server_of_the_list_up(cluster: EmbeddedNatsCluster) -> None:
    """The first servers listed are down (nothing listens there): the long-lived connection and
    the one-shot probe both go on to one that is up."""
    down = f"nats://127.0.0.1:{free_port()},nats://127.0.0.1:{free_port()}"
    url = f"{down},{cluster.nodes[2].url}"
    bus = Bus(url, "test-list", replicas=3)
    assert bus.servers[-1] == cluster.nodes[2].url
    await bus.start(wait=True, timeout=20)
    try:
        assert bus.connected
        assert bus.nc.connected_url is not None and bus.nc.connected_url.port == cluster.nodes[2].port
        # The server tells the client of its peers: it can reconnect to any of them.
        assert len(bus.nc.servers) >= 3
    finally:
        await bus.close()
    probe = await connect_nats(url, timeout=2)
    try:
        assert probe.is_connected
    finally:
        await probe.close()


async def test_a_client_reconnects_to_another_node(cluster: EmbeddedNatsCluster) -> None:
    """The node a client is connected to goes away: it carries on with another of the list."""
    bus = Bus(cluster.url, "test-reconnect", replicas=3)
    await bus.start(wait=True, timeout=20)
    try:
        assert bus.nc.connected_url is not None
        [node] = [n for n in cluster.nodes if n.port == bus.nc.connected_url.port]
        await asyncio.to_thread(node.kill)
        try:
            deadline = asyncio.get_running_loop().time() + 20
            while not (bus.connected and bus.nc.connected_url.port != node.port):
                assert asyncio.get_running_loop().time() < deadline, "no reconnect to another node"
                await asyncio.sleep(0.05)
            await bus.nc.flush(timeout=5)
        finally:
            await asyncio.to_thread(cluster.restart, node)
            await asyncio.to_thread(cluster.wait_healthy)
    finally:
        await bus.close()
