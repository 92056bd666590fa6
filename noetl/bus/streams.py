"""Streams and durable consumers, declared here and reconciled at every start-up."""

from __future__ import annotations

from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.errors import BadRequestError

from noetl.bus import subjects

DUPLICATE_WINDOW = 120.0

STREAMS: tuple[StreamConfig, ...] = (
    # Commands are work: kept on disk until a consumer has applied and acked them.
    StreamConfig(
        name=subjects.COMMANDS_STREAM,
        subjects=[subjects.COMMANDS_ALL],
        retention=RetentionPolicy.WORK_QUEUE,
        storage=StorageType.FILE,
        duplicate_window=DUPLICATE_WINDOW,
        max_age=7 * 24 * 3600,
        discard=DiscardPolicy.NEW,
    ),
    # Heartbeats are soft state: only a component's latest beat matters, and not for long.
    StreamConfig(
        name=subjects.HEARTBEATS_STREAM,
        subjects=[subjects.HEARTBEATS_ALL],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.MEMORY,
        max_msgs_per_subject=1,
        max_age=120.0,
        duplicate_window=10.0,
    ),
    # Jobs are work for the pools of one runtime: kept until a worker has run and acked them.
    StreamConfig(
        name=subjects.JOBS_STREAM,
        subjects=[subjects.JOBS_ALL],
        retention=RetentionPolicy.WORK_QUEUE,
        storage=StorageType.FILE,
        duplicate_window=DUPLICATE_WINDOW,
        max_age=7 * 24 * 3600,
    ),
    # Events are the product for subscribers: kept for replay.
    StreamConfig(
        name=subjects.EVENTS_STREAM,
        subjects=[subjects.EVENTS_ALL],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        duplicate_window=DUPLICATE_WINDOW,
        max_age=7 * 24 * 3600,
        max_bytes=1 << 30,
    ),
)


def command_consumer(
    durable: str, filter_subject: str, *, max_deliver: int, ack_wait: float
) -> ConsumerConfig:
    """A command consumer: explicit acks after commit, bounded redelivery."""
    return ConsumerConfig(
        durable_name=durable,
        filter_subject=filter_subject,
        ack_policy=AckPolicy.EXPLICIT,
        deliver_policy=DeliverPolicy.ALL,
        max_deliver=max_deliver,
        ack_wait=ack_wait,
        max_ack_pending=20_000,
    )


def heartbeat_consumer(durable: str, *, ack_wait: float) -> ConsumerConfig:
    """Heartbeats are acked once per batch (AckAll): a lost beat is replaced by the next one.

    A new durable starts from what the stream holds (the latest beat of each component, at most
    two minutes old), so beats sent before the first consumer started are not lost.
    """
    return ConsumerConfig(
        durable_name=durable,
        filter_subject=subjects.HEARTBEATS_ALL,
        ack_policy=AckPolicy.ALL,
        deliver_policy=DeliverPolicy.ALL,
        max_deliver=3,
        ack_wait=ack_wait,
        max_ack_pending=50_000,
    )


def job_consumer(runtime: str, *, lease: float, max_deliver: int) -> ConsumerConfig:
    """The pools of one runtime share this durable; its ack wait is the job's lease."""
    return ConsumerConfig(
        durable_name=f"jobs-{subjects.token(runtime)}",
        filter_subject=subjects.job(runtime),
        ack_policy=AckPolicy.EXPLICIT,
        deliver_policy=DeliverPolicy.ALL,
        max_deliver=max_deliver,
        ack_wait=lease,
        max_ack_pending=10_000,
    )


async def ensure_streams(js: JetStreamContext) -> None:
    for config in STREAMS:
        try:
            await js.add_stream(config)
        except BadRequestError:
            await js.update_stream(config)


async def ensure_consumer(js: JetStreamContext, stream: str, config: ConsumerConfig) -> None:
    await js.add_consumer(stream, config)
