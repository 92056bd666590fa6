"""The writes of one broker transaction (one consumer batch of commands), held until its end and
made together: ids drawn in one round trip, every new job in one statement, every execution's
counts in one, every event (and every job message for the worker pools) in one more.

The batch also keeps one broker per execution it touches, so that several commands about one
execution in a batch see each other's effects.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from contextvars import ContextVar
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from psycopg import AsyncConnection

from consumers.events import cancel_child
from noetl.bus import subjects
from noetl.contracts.jobs import Job, LoopItems
from noetl.store import jobs as job_store
from noetl.store.jobs import JobState, JobUpdate, NewJob, PendingItem
from noetl.store.outbox import NewEvent, add_events

if TYPE_CHECKING:
    from consumers.broker import Broker


@dataclass(slots=True)
class Dispatch:
    """A job message for the worker pools of `runtime`, written once the job has its id."""

    job: NewJob | PendingItem
    execution_id: int
    step: str
    task: dict[str, Any]
    context: dict[str, Any]
    runtime: str
    payload: dict[str, Any] | None = None
    loop: LoopItems | None = None
    credentials: tuple[str, ...] = ()

    def event(self) -> NewEvent:
        job_id = self.job.job_id
        assert job_id is not None
        message = Job(
            job_id=str(job_id),
            execution_id=str(self.execution_id),
            step=self.step,
            task=self.task,
            context=self.context,
            payload=self.payload,
            loop=self.loop,
            credentials=list(self.credentials),
            runtime=self.runtime,
            dispatched_at=self.job.dispatched_at,
        )
        return NewEvent(
            type="job.dispatched",
            subject=subjects.job(self.runtime),
            entity={"domain": "job", "execution_id": str(self.execution_id), "job_id": str(job_id)},
            payload=message.model_dump(mode="json"),
        )


_CURRENT: ContextVar[Batch | None] = ContextVar("noetl_broker_batch", default=None)


class Batch:
    def __init__(self, conn: AsyncConnection) -> None:
        self.conn = conn
        self.jobs: list[NewJob] = []
        self.events: list[NewEvent] = []
        self.dispatches: list[Dispatch] = []
        self.brokers: dict[int, Broker] = {}
        self.updates: dict[int, JobUpdate] = {}
        self.seen: dict[int, JobState] = {}  # jobs as this batch has left them, not yet written

    def update(self, job: JobState, update: JobUpdate) -> None:
        """A job's start or end, written with the batch (before anything that reads jobs back)."""
        earlier = self.updates.get(update.job_id)
        self.updates[update.job_id] = update if earlier is None else earlier.merge(update)
        self.seen[job.job_id] = replace(
            job,
            status=update.status,
            delivery=update.delivery or job.delivery,
            attempt=update.attempt or job.attempt,
            started_at=job.started_at or update.started_at,
        )

    def update_loop(self, loop_id: int, update: JobUpdate) -> None:
        """A loop's end (nothing in this batch reads the loop's job again)."""
        self.updates[loop_id] = update

    async def write_updates(self) -> None:
        updates, self.updates = list(self.updates.values()), {}
        await job_store.update(self.conn, updates)

    @classmethod
    def current(cls) -> Batch:
        batch = _CURRENT.get()
        assert batch is not None, "the broker runs inside `batch(conn)`"
        return batch

    def add_job(self, job: NewJob) -> NewJob:
        self.jobs.append(job)
        return job

    def cancel_child(self, child_execution_id: int, reason: str) -> None:
        self.events.append(cancel_child(child_execution_id, reason))

    async def event_id(self, event: NewEvent | int | None) -> int | None:
        """The id of an event of this batch, drawn now if it has none yet."""
        if isinstance(event, NewEvent) and event.id is None:
            (event.id,) = (await job_store.allocate(self.conn, 0, 1))[1]
        return event.id if isinstance(event, NewEvent) else event

    async def flush(self) -> None:
        """What every broker held back, then the batch's writes (none of them reads anything
        back, so they share the caller's pipeline)."""
        settled: set[int] = set()
        while len(settled) < len(self.brokers):  # a broker may start children, with brokers of their own
            for execution_id, broker in list(self.brokers.items()):
                if execution_id not in settled:
                    settled.add(execution_id)
                    await self.write_updates()  # what a broker's finish reads back (loop items)
                    await broker.finish()
        await self.write_updates()
        execution_events = [e for e in self.events if e.id is None and e.entity.get("domain") == "execution"]
        if self.jobs or execution_events:
            job_ids, event_ids = await job_store.allocate(self.conn, len(self.jobs), len(execution_events))
            for job, job_id in zip(self.jobs, job_ids, strict=True):
                job.job_id = job_id
            for event, event_id in zip(execution_events, event_ids, strict=True):
                event.id = event_id
        await job_store.insert(self.conn, self.jobs)
        await job_store.advance(self.conn, [b.counts() for b in self.brokers.values()])
        await add_events(self.conn, [*self.events, *(d.event() for d in self.dispatches)])
        self.jobs, self.events, self.dispatches, self.brokers = [], [], [], {}


@asynccontextmanager
async def batch(conn: AsyncConnection) -> AsyncIterator[Batch]:
    """A batch for the block: its brokers' writes are made when it ends without error."""
    current = Batch(conn)
    token = _CURRENT.set(current)
    try:
        yield current
        await current.flush()
    finally:
        _CURRENT.reset(token)
