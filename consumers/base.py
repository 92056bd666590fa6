"""The loop every consumer shares: fetch a batch, apply it in one transaction, then reply and ack.

Delivery is at least once; the effect is exactly once. Messages are acked only after the commit,
and a command's outcome is recorded in the same transaction as its effect, so a redelivered
command is answered from the record instead of being applied again. A batch that fails is retried
one message at a time, so one poison message cannot hold back the rest; a message that cannot be
decoded, that fails for a reason another delivery would meet again, or that still fails on its last
delivery, becomes a dead letter, its request gets its outcome, and the consumer carries on.

A command arrives from the bus as it would from the facade's door: its payload must be JSON the
store can hold (`check_json`, the same limits), its type the one its subject names.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import psycopg
from nats.aio.msg import Msg
from nats.js.api import ConsumerConfig
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool, PoolTimeout
from pydantic import BaseModel, ValidationError

from noetl.bus import subjects
from noetl.bus.connection import Bus
from noetl.bus.envelope import (
    OUTCOMES,
    REPLY_TO_HEADER,
    Command,
    Outcome,
    invalid,
    replayed,
)
from noetl.bus.pull import Puller
from noetl.bus.streams import command_consumer, ensure_consumer, ensure_streams
from noetl.contracts.fields import Unstorable, check_json
from noetl.metrics import APPLY_SECONDS, BATCH_SIZE, count_commands
from noetl.settings import Settings
from noetl.store import commands as command_store
from noetl.store.outbox import NewEvent, add_events, batched

log = logging.getLogger(__name__)

FETCH_TIMEOUT = 1.0
RETRY_DELAY = 1.0

# Failures another delivery may not meet: the store or the bus away, a lock or serialisation
# conflict, a race on a unique key. Anything else would fail the same way every time.
TRANSIENT: tuple[type[BaseException], ...] = (
    psycopg.OperationalError,
    psycopg.InterfaceError,
    psycopg.IntegrityError,
    PoolTimeout,
    TimeoutError,
    OSError,
)


@dataclass(slots=True)
class Delivery:
    """One message, decoded if it could be."""

    msg: Msg
    max_deliver: int
    command: Command | None = None
    error: str | None = None
    refusal: Outcome | None = None  # a command the door would have refused: its outcome
    replayed: bool = False  # answered from the record: applied by an earlier delivery

    def header(self, name: str) -> str | None:
        return (self.msg.headers or {}).get(name)

    @property
    def reply_to(self) -> str | None:
        """Where the sender waits: only ever a reply subject (never one a stream captures)."""
        subject = self.header(REPLY_TO_HEADER)
        return subject if subjects.is_reply(subject) else None

    @property
    def last_attempt(self) -> bool:
        return self.msg.metadata.num_delivered >= self.max_deliver


def decode(msg: Msg, max_deliver: int, max_depth: int) -> Delivery:
    delivery = Delivery(msg, max_deliver)
    try:
        command = delivery.command = Command.model_validate_json(msg.data)
    except ValidationError as exc:
        delivery.error = f"undecodable command envelope: {exc.errors(include_url=False)}"
        return delivery
    if command.type != subjects.command_type(msg.subject):
        delivery.refusal = Outcome.failed(
            command.id, "bad_request", f"a {command.type!r} command on the subject of {msg.subject!r}"
        )
        return delivery
    try:
        check_json(command.payload, max_depth)
    except Unstorable as exc:
        delivery.refusal = refused(command.id, exc)
    return delivery


def refused(request_id: str, exc: Unstorable) -> Outcome:
    """The outcome of a payload the store cannot hold: a 422 shaped as FastAPI shapes one."""
    error = {"type": "value_error", "loc": ["body"], "msg": str(exc), "input": None}
    return Outcome.failed(request_id, "invalid", [error])


async def dead_letter(
    conn: AsyncConnection,
    *,
    consumer: str,
    subject: str,
    reason: str,
    data: bytes,
    headers: dict[str, str] | None = None,
    deliveries: int | None = None,
    announce: bool = True,
) -> int:
    """Keep a message that cannot be applied, with its original bytes, and announce it (unless
    told not to: the announcement of a dead letter must not make another one)."""
    reason = reason[:4000]
    letter_id = await command_store.dead_letter(
        conn,
        subject=subject,
        consumer=consumer,
        reason=reason,
        headers=headers,
        data=data,
        deliveries=deliveries,
    )
    if not announce:
        log.warning("%s: dead letter %s from %s: %s", consumer, letter_id, subject, reason)
        return letter_id
    await add_events(
        conn,
        [
            NewEvent(
                type="system.dead_letter",
                subject=subjects.DEAD_LETTER_EVENT,
                entity={"domain": "system", "consumer": consumer},
                payload={"dead_letter_id": str(letter_id), "subject": subject, "reason": reason},
            )
        ],
    )
    log.warning("%s: dead letter %s from %s: %s", consumer, letter_id, subject, reason)
    return letter_id


async def record_dead_letter(conn: AsyncConnection, consumer: str, delivery: Delivery, reason: str) -> None:
    msg = delivery.msg
    await dead_letter(
        conn,
        consumer=consumer,
        subject=msg.subject,
        reason=reason,
        data=msg.data,
        headers=dict(msg.headers) if msg.headers else None,
        deliveries=msg.metadata.num_delivered,
    )


class BatchConsumer(ABC):
    """A durable pull consumer that hands whole batches to `handle`."""

    stream: str
    durable: str

    def __init__(self, bus: Bus, pool: AsyncConnectionPool, *, batch_size: int) -> None:
        self.bus = bus
        self.pool = pool
        self.batch_size = batch_size
        self._stopping = asyncio.Event()

    @abstractmethod
    def consumer_config(self) -> ConsumerConfig: ...

    @abstractmethod
    async def handle(self, msgs: list[Msg]) -> None: ...

    def stop(self) -> None:
        self._stopping.set()

    async def run(self) -> None:
        """Fetch and handle batches until `stop`; a failing batch is retried, never dropped.

        The next batch is fetched while this one is applied, so the bus and the store work at
        the same time instead of taking turns.
        """
        await ensure_streams(self.bus.js, self.bus.replicas)
        config = self.consumer_config()
        await ensure_consumer(self.bus.js, self.stream, config, self.bus.replicas)
        puller = Puller(self.bus.nc, self.stream, self.durable)
        await puller.start()
        log.info("%s: consuming %s", self.durable, config.filter_subject)
        fetching = asyncio.ensure_future(puller.fetch(self.batch_size, FETCH_TIMEOUT))
        try:
            while not self._stopping.is_set():
                try:
                    msgs = await fetching
                except Exception as exc:  # the bus is away: wait and fetch again
                    log.warning("%s: fetch failed: %r", self.durable, exc)
                    await asyncio.sleep(RETRY_DELAY)
                    await self._redeclare(config)
                    msgs = []
                fetching = asyncio.ensure_future(puller.fetch(self.batch_size, FETCH_TIMEOUT))
                if not msgs:
                    continue
                started = time.perf_counter()
                try:
                    await self.handle(msgs)
                    BATCH_SIZE.labels(self.durable).observe(len(msgs))
                    APPLY_SECONDS.labels(self.durable).observe(time.perf_counter() - started)
                except Exception:  # unacked messages come back after ack_wait
                    log.exception("%s: batch of %d failed; it will be redelivered", self.durable, len(msgs))
                    await asyncio.sleep(RETRY_DELAY)
        finally:
            fetching.cancel()
            await puller.hand_back()

    async def _redeclare(self, config: ConsumerConfig) -> None:
        """A restarted server may have lost a memory stream and its consumers: declare them again."""
        try:
            await ensure_streams(self.bus.js, self.bus.replicas)
            await ensure_consumer(self.bus.js, self.stream, config, self.bus.replicas)
        except Exception as exc:
            log.debug("%s: cannot declare the stream yet: %r", self.durable, exc)

    async def reply(self, answers: list[tuple[str | None, Outcome]]) -> None:
        """Send (reply subject, outcome) answers, one message per subject: the JSON array of its
        outcomes (`OUTCOMES`). A facade waits on one subject for many commands at once."""
        by_subject: dict[str, list[Outcome]] = {}
        for subject, outcome in answers:
            if subjects.is_reply(subject):
                by_subject.setdefault(subject, []).append(outcome)
        for subject, outcomes in by_subject.items():
            await self.bus.nc.publish(subject, OUTCOMES.dump_json(outcomes))


Apply = Callable[[AsyncConnection, list[Command]], Awaitable[list[Outcome]]]
M = TypeVar("M", bound=BaseModel)


def by_type(handlers: dict[str, Apply]) -> Apply:
    """Apply in arrival order, each run of one command type as one batch of its handler."""

    async def apply(conn: AsyncConnection, commands: list[Command]) -> list[Outcome]:
        outcomes: list[Outcome] = []
        for command_type, run in itertools.groupby(commands, key=lambda c: c.type):
            batch = list(run)
            handler = handlers.get(command_type)
            if handler is None:
                outcomes += [
                    Outcome.failed(c.id, "bad_request", f"unknown command type {command_type!r}")
                    for c in batch
                ]
            else:
                outcomes += await handler(conn, batch)
        return outcomes

    return apply


class CommandConsumer(BatchConsumer):
    """Commands with explicit acks and an exactly-once effect through `processed_commands`."""

    stream = subjects.COMMANDS_STREAM

    def __init__(
        self,
        bus: Bus,
        pool: AsyncConnectionPool,
        *,
        durable: str,
        filter_subject: str,
        apply: Apply,
        batch_size: int,
        max_deliver: int,
        ack_wait: float,
        max_json_depth: int,
    ) -> None:
        super().__init__(bus, pool, batch_size=batch_size)
        self.max_json_depth = max_json_depth
        self.durable = durable
        self.filter_subject = filter_subject
        self.apply = apply
        self.max_deliver = max_deliver
        self.ack_wait = ack_wait

    def consumer_config(self) -> ConsumerConfig:
        return command_consumer(
            self.durable, self.filter_subject, max_deliver=self.max_deliver, ack_wait=self.ack_wait
        )

    async def handle(self, msgs: list[Msg]) -> None:
        deliveries = [decode(m, self.max_deliver, self.max_json_depth) for m in msgs]
        try:
            async with self.pool.connection() as conn, conn.transaction():
                outcomes = await self._apply_batch(conn, deliveries)
        except Exception as exc:
            if len(deliveries) == 1:
                await self._failed_alone(deliveries[0], exc)
                return
            log.warning("%s: batch failed (%r); applying one by one", self.durable, exc)
            for delivery in deliveries:
                await self.handle_one(delivery)
            return
        await self._finish(deliveries, outcomes)

    async def handle_one(self, delivery: Delivery) -> None:
        try:
            async with self.pool.connection() as conn, conn.transaction():
                outcomes = await self._apply_batch(conn, [delivery])
        except Exception as exc:
            await self._failed_alone(delivery, exc)
            return
        await self._finish([delivery], outcomes)

    async def _failed_alone(self, delivery: Delivery, exc: Exception) -> None:
        """A command that failed on its own: delivered again while another delivery may succeed,
        else a dead letter whose request ends with the failure (recorded, so that
        `GET /api/requests/{id}` and a redelivery both answer it)."""
        transient = isinstance(exc, TRANSIENT)
        if transient and not delivery.last_attempt:
            log.warning("%s: %s failed (%r); redelivering", self.durable, delivery.msg.subject, exc)
            await delivery.msg.nak(delay=RETRY_DELAY)
            return
        reason = f"failed on last delivery: {exc!r}" if transient else f"failed: {exc!r}"
        command = delivery.command
        failed = None
        if command is not None:
            failed = (
                Outcome.failed(command.id, "unavailable", "the command could not be applied")
                if transient
                else Outcome.failed(command.id, "bad_request", f"the command could not be applied: {exc}")
            )
        async with self.pool.connection() as conn, conn.transaction():
            await record_dead_letter(conn, self.durable, delivery, reason)
            if command is not None and failed is not None:
                await command_store.record(
                    conn, [(command.id, command.type, command.fingerprint, failed.model_dump(mode="json"))]
                )
        if failed is not None:
            await self.reply([(delivery.reply_to, failed)])
        await delivery.msg.ack()
        count_commands(self.durable, [(_type_of(delivery), "dead_letter")])

    async def _apply_batch(self, conn: AsyncConnection, deliveries: list[Delivery]) -> list[Outcome | None]:
        """Outcomes aligned with `deliveries`; None for a dead letter. The batch's events are
        written by one statement."""
        async with batched(conn):
            return await self._apply_each(conn, deliveries)

    async def _apply_each(self, conn: AsyncConnection, deliveries: list[Delivery]) -> list[Outcome | None]:
        outcomes: list[Outcome | None] = [None] * len(deliveries)
        known = await command_store.stored(conn, [d.command.id for d in deliveries if d.command is not None])
        fresh: dict[str, Command] = {}
        applied: dict[str, Outcome] = {}
        for delivery in deliveries:
            command = delivery.command
            if command is None:
                await record_dead_letter(conn, self.durable, delivery, delivery.error or "")
            elif command.id not in known and command.id not in fresh:
                fresh[command.id] = command
                if delivery.refusal is not None:
                    applied[command.id] = delivery.refusal
        to_apply = [c for rid, c in fresh.items() if rid not in applied]
        applied |= dict(zip((c.id for c in to_apply), await self.apply(conn, to_apply), strict=True))
        await command_store.record(
            conn,
            [
                (rid, fresh[rid].type, fresh[rid].fingerprint, o.model_dump(mode="json"))
                for rid, o in applied.items()
            ],
        )
        for i, delivery in enumerate(deliveries):
            command = delivery.command
            if command is None:
                continue
            if command is fresh.get(command.id):
                outcomes[i] = applied[command.id]
            elif command.id in applied:  # the same request id twice in one batch
                delivery.replayed = True
                first = fresh[command.id]
                outcomes[i] = replayed(command, applied[command.id].model_dump(), first.fingerprint)
            else:
                delivery.replayed = True
                row = known[command.id]
                outcomes[i] = replayed(command, row["outcome"], row["fingerprint"])
        return outcomes

    async def _finish(self, deliveries: list[Delivery], outcomes: list[Outcome | None]) -> None:
        await self.reply(
            [(d.reply_to, o) for d, o in zip(deliveries, outcomes, strict=True) if o is not None]
        )
        for delivery in deliveries:
            await delivery.msg.ack()
        count_commands(self.durable, (_counted(d, o) for d, o in zip(deliveries, outcomes, strict=True)))


def _type_of(delivery: Delivery) -> str:
    """A command's type for a label: one its subject names (bounded), whatever the body says."""
    return subjects.command_type(delivery.msg.subject) if delivery.command is not None else "undecodable"


def _counted(delivery: Delivery, outcome: Outcome | None) -> tuple[str, str]:
    if outcome is None:
        return _type_of(delivery), "dead_letter"
    if delivery.replayed:
        return _type_of(delivery), "replayed"
    return _type_of(delivery), "failed" if outcome.error else "applied"


def many(
    model: type[M], apply_valid: Callable[[AsyncConnection, list[tuple[str, M]]], Awaitable[list[Outcome]]]
) -> Apply:
    """A handler that validates each command's payload as `model` and applies the valid ones
    together, as (request id, payload) pairs; an invalid payload's outcome is a 422."""

    async def apply(conn: AsyncConnection, commands: list[Command]) -> list[Outcome]:
        outcomes: dict[str, Outcome] = {}
        valid: list[tuple[str, M]] = []
        for command in commands:
            try:
                valid.append((command.id, model.model_validate(command.payload)))
            except ValidationError as exc:
                outcomes[command.id] = invalid(command.id, exc)
        for outcome in await apply_valid(conn, valid):
            outcomes[outcome.request_id] = outcome
        return [outcomes[c.id] for c in commands]

    return apply


def each(model: type[M], apply_one: Callable[[AsyncConnection, str, M], Awaitable[Outcome]]) -> Apply:
    """A handler that validates each command's payload as `model` and applies it on its own."""

    async def apply_valid(conn: AsyncConnection, valid: list[tuple[str, M]]) -> list[Outcome]:
        return [await apply_one(conn, request_id, payload) for request_id, payload in valid]

    return many(model, apply_valid)


@dataclass(frozen=True, slots=True)
class Domain:
    """A command domain: its durable consumer, the subjects it applies, and the reads it serves."""

    durable: str
    commands: str
    apply: Apply
    queries: dict[str, Any]
    configure: Callable[[Settings], None] | None = None  # the domain's own settings, set at start

    def consumer(self, bus: Bus, pool: AsyncConnectionPool, settings: Settings) -> CommandConsumer:
        return CommandConsumer(
            bus,
            pool,
            durable=self.durable,
            filter_subject=self.commands,
            apply=self.apply,
            batch_size=settings.consumer_batch_size,
            max_deliver=settings.consumer_max_deliver,
            ack_wait=settings.consumer_ack_wait,
            max_json_depth=settings.limit_json_depth,
        )
