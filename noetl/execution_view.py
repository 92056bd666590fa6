"""An execution as the CLI shows it: the runs of its steps, read from the events of
`GET /api/executions/{id}`, and a run followed to its end."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from noetl.contracts.execution import TERMINAL

STEP_EVENTS = frozenset({"step_started", "action_started", "action_completed", "action_error", "step_result"})
FINISHING = frozenset({"step_completed", "step_failed"})


@dataclass(frozen=True)
class StepEvent:
    event_id: str
    event_type: str
    step: str
    status: str
    duration: float | None
    timestamp: datetime | None
    worker: str | None


CONTROL_NODES = frozenset({"start", "end", "router"})


def step_event(event: dict[str, Any]) -> StepEvent | None:
    """A step's event, or None for the execution's own events and those of control steps
    (start, end, routers), which do no work to show."""
    event_type = str(event.get("event_type", ""))
    if event_type not in STEP_EVENTS | FINISHING or event.get("node_type") in CONTROL_NODES:
        return None
    if event_type == "action_started" and event.get("current_index") is not None:
        event_type = "item_started"  # a loop's item, not another attempt of the loop step
    stamp = event.get("timestamp")
    duration = event.get("duration")
    return StepEvent(
        event_id=str(event.get("event_id", "")),
        event_type=event_type,
        step=str(event.get("node_name") or "?"),
        status=str(event.get("status") or "").upper(),
        duration=float(duration) if isinstance(duration, int | float) else None,
        timestamp=datetime.fromisoformat(stamp) if isinstance(stamp, str) else None,
        worker=str(event["worker_id"]) if event.get("worker_id") else None,
    )


@dataclass
class StepRun:
    """One run of a step: from its first event to `step_completed` or `step_failed`."""

    step: str
    status: str
    started: datetime | None
    attempts: int = 0
    worker: str | None = None
    duration: float | None = None
    finished_by: str | None = None  # the id of the event that finished it


def step_runs(events: Iterable[dict[str, Any]]) -> list[StepRun]:
    """The runs of the steps, in the order they started (a step reached twice ran twice)."""
    runs: list[StepRun] = []
    open_runs: dict[str, StepRun] = {}
    for raw in events:
        event = step_event(raw)
        if event is None:
            continue
        run = open_runs.get(event.step)
        if run is None:
            run = open_runs[event.step] = StepRun(event.step, event.status, event.timestamp)
            runs.append(run)
        run.status = event.status
        run.worker = event.worker or run.worker
        run.attempts += event.event_type == "action_started"
        if event.event_type in FINISHING:
            run.finished_by = event.event_id
            run.duration = event.duration if event.duration is not None else _seconds(run, event)
            del open_runs[event.step]
    return runs


def _seconds(run: StepRun, event: StepEvent) -> float | None:
    if run.started is None or event.timestamp is None:
        return None
    return (event.timestamp - run.started).total_seconds()


class StillRunning(Exception):
    """The execution had not ended when the wait ran out."""

    def __init__(self, detail: dict[str, Any]) -> None:
        self.detail = detail


def follow(
    fetch: Callable[[], dict[str, Any]],
    on_finished: Callable[[StepRun], None],
    *,
    interval: float = 0.3,
    timeout: float | None = None,
) -> dict[str, Any]:
    """Poll the execution (`fetch`) until it ends; `on_finished` for each step run as it finishes.
    Returns the last detail; `StillRunning` when `timeout` seconds pass first."""
    deadline = None if timeout is None else time.monotonic() + timeout
    told: set[str] = set()
    while True:
        detail = fetch()
        for run in step_runs(detail.get("events", [])):
            if run.finished_by is not None and run.finished_by not in told:
                told.add(run.finished_by)
                on_finished(run)
        if detail.get("status") in TERMINAL:
            return detail
        if deadline is not None and time.monotonic() >= deadline:
            raise StillRunning(detail)
        time.sleep(interval)
