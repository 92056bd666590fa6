"""Jobs (one run of a step, or of one loop item) and the reports a worker sends back about them."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any, Literal

from pydantic import Base64Bytes, BaseModel, Field

from noetl.contracts.fields import RowId, UtcDatetime


class JobStatus(StrEnum):
    PENDING = "pending"  # a loop item not dispatched yet
    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    ABANDONED = "abandoned"  # its execution ended first


ACTIVE = frozenset({JobStatus.QUEUED, JobStatus.RUNNING})
FINISHED = frozenset({JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.ABANDONED})


class JobKind(StrEnum):
    ACTION = "action"  # run by a worker pool
    CONTROL = "control"  # start, end, routers: done when entered
    LOOP = "loop"  # an iterator: done when its items are
    PLAYBOOK = "playbook"  # a sub-playbook: done when its child execution is


# "exhausted": the job's last delivery, not run because every earlier one died with its worker.
ReportKind = Literal["started", "attempt_failed", "completed", "failed", "exhausted"]


class LoopItems(BaseModel):
    """A loop's items that one job runs, side by side (a bounded batch of them: a loop's items
    never travel in one message); each is bound under the loop's `element`, with `_loop`."""

    step: str
    element: str
    first: int = Field(ge=0, description="the index of the first of `items`")
    items: list[Any]
    count: int = Field(description="items in the whole loop")
    chunked: bool = False
    enumerate: bool = False

    def each(self) -> list[tuple[int, Any]]:
        return list(enumerate(self.items, start=self.first))


class ItemOutcome(BaseModel):
    """How one item of a loop job went."""

    index: int
    attempts: int = Field(ge=1)
    started_at: UtcDatetime
    ended_at: UtcDatetime
    result: Any = None
    saved: Any = None
    error: str | None = None

    @property
    def duration(self) -> float:
        return round((self.ended_at - self.started_at).total_seconds(), 6)


class Job(BaseModel):
    """A job as a worker pool receives it: the step (a model of `noetl.playbook.steps`, dumped),
    the part of the execution's context its templates read, and the transition's payload."""

    job_id: str
    execution_id: str
    step: str
    task: dict[str, Any]
    context: dict[str, Any]
    payload: dict[str, Any] | None = None
    loop: LoopItems | None = None
    credentials: list[str] = Field(default_factory=list)
    runtime: str
    dispatched_at: datetime


ATTEMPTS_MAX = 2**31 - 1  # attempts and deliveries are stored as integer


class StepReport(BaseModel):
    """What a worker says about a job. `delivery` tells a live attempt from a dead one's late word;
    the times are the worker's, when the attempt began and ended."""

    job_id: RowId
    execution_id: RowId
    step: str
    kind: ReportKind
    attempt: int = Field(ge=1, le=ATTEMPTS_MAX)
    delivery: int = Field(ge=1, le=ATTEMPTS_MAX)
    worker: str
    started_at: UtcDatetime | None = None
    ended_at: UtcDatetime | None = None
    input: Any = None
    result: Any = None
    error: str | None = None
    saved: Any = None
    items: list[ItemOutcome] | None = None  # a loop job's: each item's outcome

    def request_id(self) -> str:
        return f"job-{self.job_id}-{self.delivery}-{self.attempt}-{self.kind}"

    @property
    def duration(self) -> float | None:
        if self.started_at is None or self.ended_at is None:
            return None
        return round((self.ended_at - self.started_at).total_seconds(), 6)


class DeadJob(BaseModel):
    """A job message a worker could not decode: kept as a dead letter."""

    subject: str
    consumer: str
    reason: str
    data: Base64Bytes = Field(description="the original bytes, base64")
    deliveries: int | None = None


class ChildFinished(BaseModel):
    """A child execution ended: the command that hands its outcome to the step waiting for it."""

    child_execution_id: RowId
    parent_execution_id: RowId
    status: str
    result: Any = None
    error: str | None = None
