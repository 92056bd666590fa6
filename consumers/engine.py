"""What the broker and its helpers (loops, children) share: the engine's limits, the error that
fails an execution, an arrival at a step, each step type's kind of job, and the clock."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from noetl.contracts.jobs import JobKind
from noetl.playbook.steps import CONTROL_TYPES, WORKER_TYPES, StepType
from noetl.settings import Settings
from noetl.store.jobs import NewJob
from noetl.store.outbox import NewEvent


class ExecutionFailed(Exception):
    """The playbook cannot go on; the message names the step and says why."""


@dataclass(frozen=True, slots=True)
class EngineLimits:
    steps: int = 10_000
    items: int = 100_000
    nesting: int = 16

    @classmethod
    def of(cls, settings: Settings) -> EngineLimits:
        return cls(
            settings.limit_steps_per_execution, settings.limit_loop_items, settings.limit_playbook_nesting
        )


LIMITS = EngineLimits()


def configure(settings: Settings) -> None:
    global LIMITS
    LIMITS = EngineLimits.of(settings)


def limits() -> EngineLimits:
    return LIMITS


@dataclass(slots=True)
class Arrival:
    """A transition taken: into `step`, with its payload, because `cause` (a job) ended, as
    `event` said."""

    step: str
    payload: dict[str, Any] | None
    cause: NewJob | int | None
    event: NewEvent | int | None


KIND = {
    StepType.ITERATOR: JobKind.LOOP,
    StepType.PLAYBOOK: JobKind.PLAYBOOK,
    **{t: JobKind.CONTROL for t in CONTROL_TYPES},
    **{t: JobKind.ACTION for t in WORKER_TYPES},
}


def now() -> datetime:
    return datetime.now(UTC)


def seconds_between(start: datetime | None, end: datetime | None) -> float | None:
    return None if start is None or end is None else round((end - start).total_seconds(), 6)
