"""Following the events stream: from the start, from a sequence, from a time, or only new ones.

An ordered, ephemeral JetStream consumer gives the stored events first and then the live ones, in
stream order, with no gap between the two. The stream sequence is what a reader resumes from
(SSE's `Last-Event-ID`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime

from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy

from noetl.bus import subjects
from noetl.bus.envelope import Event


@dataclass(frozen=True, slots=True)
class StreamEvent:
    sequence: int
    event: Event


def _start(start_seq: int | None, start_time: datetime | None, new_only: bool) -> ConsumerConfig:
    if start_seq is not None:
        return ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=max(start_seq, 1))
    if start_time is not None:
        return ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_TIME, opt_start_time=start_time)
    return ConsumerConfig(deliver_policy=DeliverPolicy.NEW if new_only else DeliverPolicy.ALL)


async def follow(
    js: JetStreamContext,
    filter_subject: str = subjects.EVENTS_ALL,
    *,
    start_seq: int | None = None,
    start_time: datetime | None = None,
    new_only: bool = False,
    idle: float = 15.0,
) -> AsyncIterator[StreamEvent | None]:
    """Events matching `filter_subject`, in order; None after `idle` seconds without one."""
    sub = await js.subscribe(
        filter_subject,
        stream=subjects.EVENTS_STREAM,
        ordered_consumer=True,
        config=_start(start_seq, start_time, new_only),
    )
    try:
        while True:
            try:
                msg = await sub.next_msg(timeout=idle)
            except TimeoutError:
                yield None
                continue
            try:
                event = Event.model_validate_json(msg.data)
            except ValueError:
                continue
            yield StreamEvent(msg.metadata.sequence.stream, event)
    finally:
        await sub.unsubscribe()
