"""Streams and durable consumers, declared here and reconciled at every start-up.

`STREAMS` says what each stream is; how many replicas each has is the deployment's choice
(`NOETL_STREAM_REPLICAS`, carried by `Bus.replicas`), applied when a stream or a durable consumer
is declared, and to one that exists with another count: scaled, and logged.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from typing import get_args

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
from nats.js.errors import APIError, BadRequestError, NotFoundError

from noetl.bus import subjects
from noetl.contracts.runtime import ComponentKind
from noetl.problems import Problem

log = logging.getLogger(__name__)

DUPLICATE_WINDOW = 120.0
KEPT = 7 * 24 * 3600.0  # how long a command may wait to be applied, and events stay for replay

STREAMS: tuple[StreamConfig, ...] = (
    # Commands are work: kept on disk until a consumer has applied and acked them. Only the
    # subjects a consumer applies: a command on any other is refused when it is published.
    StreamConfig(
        name=subjects.COMMANDS_STREAM,
        subjects=list(subjects.COMMAND_SUBJECTS),
        retention=RetentionPolicy.WORK_QUEUE,
        storage=StorageType.FILE,
        duplicate_window=DUPLICATE_WINDOW,
        max_age=KEPT,
        discard=DiscardPolicy.NEW,
    ),
    # Heartbeats are soft state: only a component's latest beat matters, and not for long. One
    # subject per component of a kind the registry knows.
    StreamConfig(
        name=subjects.HEARTBEATS_STREAM,
        subjects=[subjects.heartbeats_of(kind) for kind in get_args(ComponentKind)],
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
        max_age=KEPT,
    ),
    # The requests answered 202: one small message per request id, for as long as its command may
    # wait in the commands stream, so that an id never seen can be told from one still in flight.
    StreamConfig(
        name=subjects.ACCEPTED_STREAM,
        subjects=[subjects.ACCEPTED_ALL],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        max_msgs_per_subject=1,
        max_age=KEPT,
        duplicate_window=DUPLICATE_WINDOW,
        allow_direct=True,
    ),
    # Events are the product for subscribers: kept for replay.
    StreamConfig(
        name=subjects.EVENTS_STREAM,
        subjects=[subjects.EVENTS_ALL],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        duplicate_window=DUPLICATE_WINDOW,
        max_age=KEPT,
        max_bytes=1 << 30,
    ),
)


def captured(subject: str) -> bool:
    """Whether some stream takes a message published on `subject`."""
    return any(subjects.matches(p, subject) for config in STREAMS for p in config.subjects or ())


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


def replicated(config: StreamConfig, replicas: int) -> StreamConfig:
    """`config` with `replicas` copies. A memory stream may have them too: its copies are on
    other nodes' memory, so a heartbeat stream survives a node lost."""
    return dataclasses.replace(config, num_replicas=replicas)


class ReplicasRefused(Problem):
    """The server cannot keep the replicas asked for: a single server (not a cluster), or fewer
    nodes up than replicas."""


NOT_CLUSTERED = 10074  # JetStream: replicas > 1 not supported in non-clustered mode
SCALING = 10126  # JetStream: consumer replica count exceeds its stream's (being scaled up)
SCALE_WAIT = 60.0  # a stream scaled up catches its new replicas up in seconds on a loaded machine


async def ensure_streams(js: JetStreamContext, replicas: int) -> None:
    """Declare every stream with `replicas` copies; one that exists otherwise is updated (its
    replicas scaled too: JetStream copies the data to the new peers), and a changed replica count
    is logged, so a deployment never runs on fewer copies than it asked for without saying so."""
    for config in STREAMS:
        wanted = replicated(config, replicas)
        try:
            try:
                await js.add_stream(wanted)
            except BadRequestError:
                await _update_stream(js, wanted)
        except APIError as exc:
            if exc.err_code == NOT_CLUSTERED:
                raise ReplicasRefused(
                    f"NOETL_STREAM_REPLICAS={replicas}, but the NATS server is not a cluster: "
                    "set it to 1, or point NOETL_NATS_URL at a cluster"
                ) from None
            raise


async def _update_stream(js: JetStreamContext, config: StreamConfig) -> None:
    assert config.name is not None
    try:
        had = (await js.stream_info(config.name)).config.num_replicas
    except NotFoundError:  # deleted in between: declare it afresh
        await js.add_stream(config)
        return
    await js.update_stream(config)
    if had != config.num_replicas:
        log.warning("stream %s: replicas %s -> %s", config.name, had, config.num_replicas)


async def ensure_consumer(js: JetStreamContext, stream: str, config: ConsumerConfig, replicas: int) -> None:
    """Declare a durable consumer with `replicas` copies of its state (delivered, acked), so it
    survives the node that leads it. The server creates it, or updates one whose config differs
    (its replicas too, since nats-server 2.10). Right after its stream was scaled up the server
    refuses more replicas than the stream has caught up to: that is waited out."""
    wanted = dataclasses.replace(config, num_replicas=replicas)
    try:
        had = (await js.consumer_info(stream, config.durable_name or "")).config.num_replicas
    except NotFoundError:
        had = None
    deadline = time.monotonic() + SCALE_WAIT
    while True:
        try:
            await js.add_consumer(stream, wanted)
            break
        except APIError as exc:
            if exc.err_code != SCALING or time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.5)
    if had and had != replicas:  # 0: an older declaration that left it to the stream's count
        log.warning("consumer %s on %s: replicas %s -> %s", config.durable_name, stream, had, replicas)
