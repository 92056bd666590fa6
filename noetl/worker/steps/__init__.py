"""Running one step of a job, one module per step type (the broker runs the others: control
steps, loops and sub-playbooks)."""

from __future__ import annotations

import json
from typing import Any

from pydantic import TypeAdapter, ValidationError

from noetl.contracts.jobs import Job
from noetl.playbook.steps import ItemTask, Step, StepType
from noetl.worker.steps import duckdb, http, postgres, python, save, secrets
from noetl.worker.steps.base import Runner, StepFailed, StepRun, Tools, prepare

__all__ = ["Outcome", "StepFailed", "Tools", "run_step"]

RUNNERS: dict[StepType, Runner] = {
    StepType.PYTHON: python.run,
    StepType.HTTP: http.run,
    StepType.POSTGRES: postgres.run,
    StepType.DUCKDB: duckdb.run,
    StepType.SAVE: save.run,
    StepType.SECRETS: secrets.run,
}
_TASK: TypeAdapter[Step] = TypeAdapter(ItemTask)


def task_of(job: Job) -> Step:
    """The job's step model, validated again (a worker trusts no message)."""
    try:
        return _TASK.validate_python(job.task)
    except ValidationError as exc:
        raise StepFailed(
            f"the job's step is not one a worker runs: {exc.errors(include_url=False)[0]['msg']}"
        ) from None


class Outcome:
    """What one attempt came to: its result, what its save saved, and its rendered input."""

    def __init__(self, result: Any, saved: Any, input: dict[str, Any]) -> None:
        self.result = result
        self.saved = saved
        self.input = input


async def run_step(
    job: Job, tools: Tools, max_result_bytes: int, item: tuple[int, Any] | None = None
) -> Outcome:
    """Render the job's step (for one of its loop items, when it has them), run it, then its
    save. Raises StepFailed."""
    step = task_of(job)
    runner = RUNNERS.get(step.type)
    if runner is None:
        raise StepFailed(f"a worker does not run {step.type!r} steps")
    attempt = StepRun(job=job, step=step, tools=tools)
    try:
        await prepare(attempt, item)
        result = await runner(attempt)
        saved = None
        if step.save is not None and step.type != StepType.SAVE:
            try:
                saved = await save.save(attempt, step.save, result)
            except StepFailed as exc:
                raise StepFailed(f"the step ran, but its save failed: {exc}") from None
    except StepFailed as exc:
        raise StepFailed(attempt.redact(str(exc))) from None
    result = attempt.redact(result)
    size = len(json.dumps(result, default=str))
    if size > max_result_bytes:
        raise StepFailed(
            f"the step's result is {size} bytes; at most {max_result_bytes} can be kept "
            "(NOETL_LIMIT_RESULT_BYTES)"
        )
    return Outcome(result, attempt.redact(saved), attempt.redact(attempt.input))
