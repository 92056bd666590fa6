"""Jobs (one step of one execution) and the reports a worker sends back about them."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import Base64Bytes, BaseModel, Field

# "exhausted": the job's last delivery, not run because every earlier one died with its worker.
ReportKind = Literal["started", "attempt_failed", "completed", "failed", "exhausted"]


class Job(BaseModel):
    job_id: str
    execution_id: str
    step: str
    definition: dict[str, Any]
    context: dict[str, Any]
    runtime: str
    dispatched_at: datetime


class StepReport(BaseModel):
    """What a worker says about a job. `delivery` tells a live attempt from a dead one's late word."""

    job_id: str
    execution_id: str
    step: str
    kind: ReportKind
    attempt: int = Field(ge=1)
    delivery: int = Field(ge=1)
    worker: str
    result: Any = None
    error: str | None = None

    def request_id(self) -> str:
        return f"job-{self.job_id}-{self.delivery}-{self.attempt}-{self.kind}"


class DeadJob(BaseModel):
    """A job message a worker could not decode: kept as a dead letter."""

    subject: str
    consumer: str
    reason: str
    data: Base64Bytes = Field(description="the original bytes, base64")
    deliveries: int | None = None
