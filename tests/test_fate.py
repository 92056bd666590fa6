"""A command's fate, said in the answer: 503 (at once) only when it surely reached no stream; 202
with its request id whenever it may have been stored, and then it is applied exactly once.

An ack that never comes is provoked for real: nats-server is stopped (SIGSTOP) while the facade
publishes, and continued (SIGCONT) once the answer is in. A publish no stream takes: the node
that leads the commands stream of a 3-node cluster is killed, and until a new leader is elected
JetStream answers "no responders".
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import nats
import pytest
from conftest import ConsumerTask, Db, Servers, facade, wait_for
from nats.js.errors import NoStreamResponseError

from noetl.bus import subjects
from noetl.bus.envelope import MSG_ID_HEADER, idempotent_request_id
from noetl.bus.requests import PUBLISH_ACK_TIMEOUT
from noetl.embedded import EmbeddedNats, EmbeddedNatsCluster

REPLY_TIMEOUT = 0.5


@contextlib.contextmanager
def paused(server: EmbeddedNats) -> Iterator[None]:
    """nats-server takes nothing off its sockets while paused: every publish waits unacked."""
    assert server.proc is not None
    os.kill(server.proc.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(server.proc.pid, signal.SIGCONT)


async def outcome_of(client: httpx.AsyncClient, request_id: str) -> dict | None:
    response = await client.get(f"/api/requests/{request_id}")
    assert response.status_code in (200, 202), response.text
    return response.json() if response.status_code == 200 else None


async def test_a_publish_whose_ack_never_comes_is_202_and_applied_once(
    own_nats: EmbeddedNats, clean: Servers, db: Db
) -> None:
    settings = clean.settings(nats_url=own_nats.url, api_reply_timeout=REPLY_TIMEOUT)
    consumers = ConsumerTask(["runtime"], settings)
    await consumers.start()
    try:
        async with facade(settings) as (app, client), facade(settings) as (_, other):
            warm = await client.post("/api/worker/pool/register", json={"name": "before"})
            assert warm.status_code == 200
            answers = {}
            with paused(own_nats):
                for name, headers in (("fresh", {}), ("keyed", {"Idempotency-Key": "fate-1"})):
                    started = time.monotonic()
                    response = await client.post(
                        "/api/worker/pool/register", json={"name": name}, headers=headers
                    )
                    took = time.monotonic() - started
                    # Never a 503: the command went out, and may be stored.
                    assert response.status_code == 202, response.text
                    request_id = response.json()["request_id"]
                    assert response.json() == {"status": "accepted", "request_id": request_id}
                    assert response.headers["Location"] == f"/api/requests/{request_id}"
                    assert took < REPLY_TIMEOUT + 2 * PUBLISH_ACK_TIMEOUT + 2, took
                    answers[name] = request_id
                    # Asked for by id while its fate is unknown: in flight, not "never seen".
                    pending = await client.get(f"/api/requests/{request_id}")
                    assert pending.status_code == 202, pending.text
                    assert pending.json() == {"request_id": request_id, "state": "pending"}
                assert app.state.requester._unsettled == set(answers.values())
            for name, request_id in answers.items():
                done = await wait_for(
                    lambda rid=request_id: outcome_of(client, rid), what=f"{name} applied after SIGCONT"
                )
                assert done["status_code"] == 200 and done["response"]["name"] == name

            # Settled: published until acked and noted, so any facade can answer for it.
            await wait_for(lambda: _empty(app.state.requester._unsettled), what="the requests to be settled")
            for request_id in answers.values():
                assert (await outcome_of(other, request_id))["status_code"] == 200
            # Applied exactly once, although published more than once.
            for name, request_id in answers.items():
                rows = await db.value(
                    "SELECT count(*) FROM processed_commands WHERE request_id = %s", request_id
                )
                assert rows == 1, name
                assert await db.events_for(name) == ["runtime.registered"]
            again = await client.post(
                "/api/worker/pool/register", json={"name": "keyed"}, headers={"Idempotency-Key": "fate-1"}
            )
            assert again.status_code == 200 and again.headers["X-Request-ID"] == answers["keyed"]
            assert await db.events_for("keyed") == ["runtime.registered"]
    finally:
        await consumers.stop()


async def _empty(items: set[str]) -> bool:
    return not items


# --------------------------------------------------------------------------- no stream takes it


@pytest.fixture
def cluster(scratch_dir: Path) -> Iterator[EmbeddedNatsCluster]:
    nodes = EmbeddedNatsCluster(scratch_dir / "cluster")
    nodes.start()
    try:
        yield nodes
    finally:
        nodes.stop()


async def commands_leader(js) -> str | None:
    try:
        info = await js.stream_info(subjects.COMMANDS_STREAM)
    except Exception:  # no leader to answer yet
        return None
    return info.cluster.leader if info.cluster else None


async def test_a_publish_no_stream_takes_is_503_at_once_and_never_applied(
    cluster: EmbeddedNatsCluster, clean: Servers, db: Db
) -> None:
    settings = clean.settings(nats_url=cluster.url, stream_replicas=3, api_reply_timeout=REPLY_TIMEOUT)
    consumers = ConsumerTask(["runtime"], settings)
    await consumers.start()
    first = await nats.connect(cluster.url.split(","), connect_timeout=5)
    leader = await wait_for(lambda: commands_leader(first.jetstream()), what="a commands leader")
    await first.close()
    # The facade and this test talk to a node that stays up.
    survivor = next(n for n in cluster.nodes if n.server_name != leader)
    nc = await nats.connect(survivor.url, connect_timeout=5)
    js = nc.jetstream()
    try:
        async with facade(settings.model_copy(update={"nats_url": survivor.url})) as (_, client):

            async def registers(name: str) -> bool:
                r = await client.post("/api/worker/pool/register", json={"name": name})
                return r.status_code == 200

            await wait_for(lambda: registers("warm"), what="the cluster to apply a first command")
            lost = cluster.node(leader)
            await asyncio.to_thread(lost.kill)

            async def no_responders() -> str | None:
                try:
                    await js.publish(
                        subjects.RUNTIME_REGISTER, b"{}", timeout=0.5, headers={MSG_ID_HEADER: "p"}
                    )
                except NoStreamResponseError:
                    return "no stream"
                except nats.errors.TimeoutError:
                    return None  # the survivors have not yet seen the leader go
                return "acked"  # a new leader already: quicker than this test

            if await wait_for(no_responders, what="publishes to miss the lost leader") == "acked":
                pytest.skip("the new leader was elected before the publish could miss it")
            started = time.monotonic()
            refused = await client.post(
                "/api/worker/pool/register", json={"name": "refused"}, headers={"Idempotency-Key": "fate-2"}
            )
            took = time.monotonic() - started
            assert refused.status_code == 503, refused.text
            assert int(refused.headers["Retry-After"]) >= 1
            assert took < 2.5, took  # at once: no reply timeout, no ack timeout waited for
            request_id = idempotent_request_id("POST /api/worker/pool/register", "fate-2")

            # A new leader: everything sent now is applied, and the 503 never is.
            await wait_for(lambda: commands_leader(js), timeout=60, what="a new commands leader")

            await wait_for(
                lambda: registers("after"), timeout=60, interval=0.5, what="registrations after the election"
            )
            assert await db.component("refused") is None
            assert (
                await db.value("SELECT count(*) FROM processed_commands WHERE request_id = %s", request_id)
                == 0
            )
            await asyncio.to_thread(cluster.restart, lost)
    finally:
        await nc.close()
        await consumers.stop()
