"""`type: python`: the step's code in a sandbox child process, `main` called as NoETL did."""

from __future__ import annotations

from typing import Any

from noetl.playbook.steps import PythonStep
from noetl.worker.sandbox import CodeFailed
from noetl.worker.steps.base import StepFailed, StepRun


def failure(result: Any) -> str | None:
    """A result that says it failed (`{"status": "error", ...}`), and why."""
    if isinstance(result, dict) and result.get("status") == "error":
        return str(result.get("error") or result.get("message") or result.get("data") or "error")
    return None


async def run(run: StepRun) -> Any:
    step = run.step
    assert isinstance(step, PythonStep)
    # The worker's environment stays out of what the code is handed (`os.environ` is there).
    context = {name: value for name, value in run.scope.items() if name != "env"}
    try:
        result = await run.tools.sandboxes.run(step.name, step.code, run.input, context, run.timeout)
    except CodeFailed as exc:
        raise StepFailed(str(exc)) from None
    if (why := failure(result)) is not None:
        raise StepFailed(why)
    return result
