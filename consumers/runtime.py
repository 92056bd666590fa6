"""The runtime registry: register, deregister and heartbeat for every kind of component."""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime
from typing import Any

from nats.aio.msg import Msg
from nats.js.api import ConsumerConfig
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool
from pydantic import TypeAdapter, ValidationError

from consumers.base import RETRY_DELAY, BatchConsumer, Delivery, Domain, by_type, many, record_dead_letter
from consumers.queries import Result, json_list, members
from noetl.bus import subjects
from noetl.bus.connection import Bus
from noetl.bus.envelope import Command, Outcome
from noetl.bus.streams import heartbeat_consumer
from noetl.contracts.fields import check_json
from noetl.contracts.runtime import (
    ComponentInfo,
    ComponentQuery,
    Deregistration,
    Heartbeat,
    HeartbeatCommand,
    HeartbeatResponse,
    MissingUri,
    RegistrationResponse,
    RuntimeRegistration,
)
from noetl.metrics import DEAD_LETTERS, HEARTBEATS
from noetl.settings import Settings
from noetl.store import runtime as store
from noetl.store.outbox import NewEvent, add_events

log = logging.getLogger(__name__)


def event(kind: str, name: str, what: str, **payload: Any) -> NewEvent:
    return NewEvent(
        type=f"runtime.{what}",
        subject=subjects.runtime_event(kind, name, what),
        entity={"domain": "runtime", "kind": kind, "name": name},
        payload=payload,
    )


async def register(conn: AsyncConnection, regs: list[tuple[str, RuntimeRegistration]]) -> list[Outcome]:
    outcomes: list[Outcome] = []
    valid: list[tuple[str, RuntimeRegistration]] = []
    for request_id, reg in regs:
        try:
            reg.require_uri()
        except MissingUri as exc:
            outcomes.append(Outcome.failed(request_id, "bad_request", str(exc)))
            continue
        valid.append((request_id, reg))
    rows = {(r.kind, r.name): r for r in await store.upsert(conn, [reg for _, reg in valid])}
    await add_events(
        conn,
        [
            event(r.kind, r.name, "registered", runtime_id=str(r.runtime_id), created=r.created)
            for r in rows.values()
        ],
    )
    for request_id, reg in valid:
        row = rows[(reg.kind, reg.name)]
        response = RegistrationResponse(
            name=reg.name, runtime_id=row.runtime_id, kind=reg.kind, runtime=reg.runtime
        )
        outcomes.append(Outcome(request_id=request_id, result=response.model_dump(mode="json")))
    return outcomes


async def deregister(conn: AsyncConnection, deregs: list[tuple[str, Deregistration]]) -> list[Outcome]:
    rows = await store.mark_offline(conn, [(d.kind, d.name) for _, d in deregs])
    await add_events(
        conn,
        [event(r["kind"], r["name"], "deregistered", runtime_id=str(r["runtime_id"])) for r in rows],
    )
    return [
        Outcome(
            request_id=request_id,
            result=RegistrationResponse(name=d.name, runtime_id=None, kind=d.kind, runtime=None).model_dump(
                mode="json"
            ),
        )
        for request_id, d in deregs
    ]


apply_commands = by_type(
    {
        subjects.command_type(subjects.RUNTIME_REGISTER): many(RuntimeRegistration, register),
        subjects.command_type(subjects.RUNTIME_DEREGISTER): many(Deregistration, deregister),
    }
)


class HeartbeatConsumer(BatchConsumer):
    """Beats collapse to one update per component per batch, and are acked once per batch. A beat
    is taken only on its component's own subject: what a publisher may send there is all it can
    touch.

    A batch is decoded while the one before it is still in the database, so the consumer's CPU
    and the database work at the same time; batches are still acked in order.
    """

    stream = subjects.HEARTBEATS_STREAM
    durable = "runtime-heartbeats"

    def __init__(self, bus: Bus, pool: AsyncConnectionPool, settings: Settings) -> None:
        super().__init__(bus, pool, batch_size=settings.consumer_batch_size * 8)
        self.settings = settings
        self._applying: asyncio.Future[None] | None = None

    def consumer_config(self) -> ConsumerConfig:
        return heartbeat_consumer(self.durable, ack_wait=self.settings.consumer_ack_wait)

    async def run(self) -> None:
        try:
            await super().run()
        finally:
            if self._applying is not None:
                await self._applying

    async def handle(self, msgs: list[Msg]) -> None:
        beats: list[tuple[Delivery, Heartbeat]] = []
        bad: list[tuple[Delivery, str]] = []
        for msg in msgs:
            delivery = Delivery(msg, max_deliver=1)
            try:
                command = HeartbeatCommand.model_validate_json(msg.data)
                if command.payload.registration is not None:
                    check_json(command.payload.registration, self.settings.limit_json_depth)
            except ValueError as exc:  # pydantic's ValidationError, or what `check_json` refuses
                reason = exc.errors(include_url=False) if isinstance(exc, ValidationError) else exc
                bad.append((delivery, f"invalid heartbeat: {reason}"))
                continue
            hb = command.payload
            if msg.subject != subjects.heartbeat(hb.kind, hb.name):
                # A beat counts for the component whose subject it came on, and for no other.
                bad.append((delivery, f"a beat of {hb.kind} {hb.name!r} on the subject of another"))
                continue
            delivery.command = command
            beats.append((delivery, hb))
        previous = self._applying
        self._applying = asyncio.ensure_future(self._apply(beats, bad, msgs[-1], previous))
        if previous is not None:  # shielded: a stop ends the batches in flight, it does not abandon them
            await asyncio.shield(previous)

    async def _apply(
        self,
        beats: list[tuple[Delivery, Heartbeat]],
        bad: list[tuple[Delivery, str]],
        last: Msg,
        previous: asyncio.Future[None] | None,
    ) -> None:
        """Store one decoded batch, answer the beats that need it, and ack after `previous` has."""
        try:
            beaten, recreated = await self._store(beats, bad)
        except Exception:  # unacked beats come back after ack_wait, unless a later batch's ack covers them
            log.exception("%s: batch of %d beats failed", self.durable, len(beats) + len(bad))
            await asyncio.sleep(RETRY_DELAY)
            return
        HEARTBEATS.inc(len(beats))
        if bad:
            DEAD_LETTERS.labels(self.durable).inc(len(bad))
        answers = []
        for delivery, hb in beats:
            key = (hb.kind, hb.name)
            still_unknown = key in beaten and beaten[key].unknown and key not in recreated
            # A beat that names no reply subject (a worker's) hears back only when it is unknown.
            if delivery.reply_to or still_unknown:
                subject = delivery.reply_to or subjects.heartbeat_unknown(hb.kind, hb.name)
                answers.append((subject, self._answer(delivery.command, hb, beaten, recreated)))
        await self.reply(answers)
        if previous is not None:
            await previous
        await last.ack()

    async def _store(
        self, beats: list[tuple[Delivery, Heartbeat]], bad: list[tuple[Delivery, str]]
    ) -> tuple[dict[tuple[str, str], store.Beaten], dict[tuple[str, str], tuple[int, str | None]]]:
        """One transaction: the dead letters, one update per component (its latest beat, and an
        answer if any of its beats waits for one), recreations and `online` events."""
        latest: dict[tuple[str, str], tuple[datetime, bool]] = {}
        for delivery, hb in beats:
            key = (hb.kind, hb.name)
            sent_at, answer = latest.get(key, (hb.sent_at, False))
            latest[key] = (max(sent_at, hb.sent_at), answer or delivery.reply_to is not None)
        async with self.pool.connection() as conn, conn.transaction():
            for delivery, reason in bad:
                await record_dead_letter(conn, self.durable, delivery, reason)
            told = await store.beat(conn, latest, self.settings.runtime_offline_seconds) if latest else []
            beaten = {(b.kind, b.name): b for b in told}
            unknown = [hb for _, hb in beats if (b := beaten.get((hb.kind, hb.name))) and b.unknown]
            recreated = await self._recreate(conn, unknown)
            online = [
                event(b.kind, b.name, "online", runtime_id=str(b.runtime_id)) for b in told if b.came_back
            ]
            await add_events(conn, online)
        return beaten, recreated

    async def _recreate(
        self, conn: AsyncConnection, unknown: list[Heartbeat]
    ) -> dict[tuple[str, str], tuple[int, str | None]]:
        """Auto-recreation: an unknown component whose beat carries its registration."""
        if not self.settings.auto_recreate_runtime:
            return {}
        regs = {(hb.kind, hb.name): reg for hb in unknown if (reg := hb.recreation()) is not None}
        if not regs:
            return {}
        rows = await store.upsert(conn, list(regs.values()))
        await add_events(
            conn, [event(r.kind, r.name, "recreated", runtime_id=str(r.runtime_id)) for r in rows]
        )
        return {(r.kind, r.name): (r.runtime_id, regs[(r.kind, r.name)].runtime) for r in rows}

    def _answer(
        self,
        command: Command | None,
        hb: Heartbeat,
        beaten: dict[tuple[str, str], store.Beaten],
        recreated: dict[tuple[str, str], tuple[int, str | None]],
    ) -> Outcome:
        assert command is not None
        key = (hb.kind, hb.name)
        if not beaten[key].unknown:
            response = HeartbeatResponse(status="ok", name=hb.name, runtime_id=beaten[key].runtime_id)
        elif key in recreated:
            runtime_id, runtime = recreated[key]
            response = HeartbeatResponse(
                status="recreated", name=hb.name, runtime_id=runtime_id, runtime=runtime
            )
        else:
            return Outcome.failed(
                command.id,
                "unknown",
                {"status": "unknown", "name": hb.name},
                retry_after=self.settings.heartbeat_retry_after,
            )
        return Outcome(request_id=command.id, result=response.as_body())


COMPONENTS = TypeAdapter(list[ComponentInfo])


async def list_components(conn: AsyncConnection, payload: dict[str, Any]) -> Result:
    """`ListResponse`, written a page at a time: a registry of any size fits no one message."""
    query = ComponentQuery.model_validate(payload)

    def tail(count: int) -> dict[str, Any]:
        return {"count": count, "runtime": query.runtime, "status": query.status, "error": None}

    return json_list("items", store.list_components(conn, query), members(COMPONENTS), tail)


QUERIES = {subjects.QUERY_RUNTIME_COMPONENTS: list_components}


DOMAIN = Domain(
    durable="runtime-commands", commands=subjects.RUNTIME_COMMANDS, apply=apply_commands, queries=QUERIES
)
