"""The writes of one broker transaction, held until its end and made together: ids drawn in one
round trip, every new job in one statement, every event (and every job message for the worker
pools) in one more."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg import AsyncConnection

from consumers.events import cancel_child
from noetl.bus import subjects
from noetl.contracts.jobs import Job, LoopItem
from noetl.store import executions as store
from noetl.store import jobs as job_store
from noetl.store.jobs import NewJob, PendingItem
from noetl.store.outbox import NewEvent, add_events


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
    loop: LoopItem | None = None
    credentials: tuple[str, ...] = ()

    def event(self) -> NewEvent:
        job_id = self.job.job_id
        dispatched_at = self.job.dispatched_at
        assert job_id is not None and isinstance(dispatched_at, datetime)
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
            dispatched_at=dispatched_at,
        )
        return NewEvent(
            type="job.dispatched",
            subject=subjects.job(self.runtime),
            entity={"domain": "job", "execution_id": str(self.execution_id), "job_id": str(job_id)},
            payload=message.model_dump(mode="json"),
        )


class Batch:
    def __init__(self, conn: AsyncConnection) -> None:
        self.conn = conn
        self.jobs: list[NewJob] = []
        self.events: list[NewEvent] = []
        self.dispatches: list[Dispatch] = []
        self.steps: dict[int, int] = {}  # execution id -> steps dispatched in this batch
        self.progress: dict[int, int] = {}

    def add_job(self, job: NewJob) -> NewJob:
        self.jobs.append(job)
        if job.loop is None:
            self.steps[job.execution_id] = self.steps.get(job.execution_id, 0) + 1
        return job

    async def event_id(self, event: NewEvent | int | None) -> int | None:
        """The id of an event of this batch, drawn now if it has none yet."""
        if isinstance(event, NewEvent) and event.id is None:
            (event.id,) = (await job_store.allocate(self.conn, 0, 1))[1]
        return event.id if isinstance(event, NewEvent) else event

    def cancel_child(self, child_execution_id: int, reason: str) -> None:
        self.events.append(cancel_child(child_execution_id, reason))

    async def flush(self) -> None:
        execution_events = [e for e in self.events if e.id is None and e.entity.get("domain") == "execution"]
        if self.jobs or execution_events:
            job_ids, event_ids = await job_store.allocate(self.conn, len(self.jobs), len(execution_events))
            for job, job_id in zip(self.jobs, job_ids, strict=True):
                job.job_id = job_id
            for event, event_id in zip(execution_events, event_ids, strict=True):
                event.id = event_id
        await job_store.insert(self.conn, self.jobs)
        for execution_id in self.steps.keys() | self.progress.keys():
            await store.advance(
                self.conn, execution_id, steps=self.steps.get(execution_id, 0), progress=self.progress.get(execution_id)
            )
        await add_events(self.conn, [*self.events, *(d.event() for d in self.dispatches)])
        self.jobs, self.events, self.dispatches, self.steps, self.progress = [], [], [], {}, {}
