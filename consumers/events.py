"""An execution's events in NoETL's vocabulary and with its fields, and the commands an execution
sends itself through the outbox (a child's outcome to its parent, a cancel to a child).

Every event's payload holds the fields NoETL's clients read (`node_id`, `node_name`, `node_type`,
`status`, `duration`, `context`, `result`, `error`, `current_index`, `current_item`,
`worker_id`, `parent_event_id`, `parent_execution_id`) and `meta` for the rest.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from noetl.bus import subjects
from noetl.contracts.execution import CancelCommand, EventStatus
from noetl.contracts.jobs import ChildFinished
from noetl.store.outbox import NewEvent

PLAYBOOK_NODE = "playbook"


@dataclass(frozen=True, slots=True)
class Ref:
    """What names an execution in its events."""

    execution_id: int
    path: str
    version: int
    parent_execution_id: str | None = None

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[-1]


def execution_event(
    ref: Ref,
    event_type: str,
    status: EventStatus,
    *,
    step: str | None = None,
    node_type: str = PLAYBOOK_NODE,
    index: int | None = None,
    item: Any = None,
    context: Any = None,
    result: Any = None,
    error: str | None = None,
    duration: float | None = None,
    worker: str | None = None,
    parent: NewEvent | int | None = None,
    time: datetime | None = None,
    **meta: Any,
) -> NewEvent:
    """One event of an execution: about a step when `step` is given, else about the execution."""
    execution_id = str(ref.execution_id)
    node_id = execution_id if step is None else f"{execution_id}:{step}"
    if index is not None:
        node_id += f":{index}"
    payload = {
        "node_id": node_id,
        "node_name": step if step is not None else ref.name,
        "node_type": node_type,
        "status": status,
        "duration": duration,
        "context": context,
        "result": result,
        "error": error,
        "current_index": index,
        "current_item": item,
        "worker_id": worker,
        "parent_event_id": None,
        "parent_execution_id": ref.parent_execution_id,
        "meta": {"path": ref.path, "version": ref.version, **meta},
    }
    event = NewEvent(
        type=event_type,
        subject=subjects.execution_event(execution_id, event_type),
        entity={"domain": "execution", "execution_id": execution_id},
        payload=payload,
        parent=parent,
    )
    if time is not None:
        event.time = time
    return event


def _command(subject: str, payload: dict[str, Any]) -> NewEvent:
    """A command the relay publishes like an event: its envelope (id, type, time, payload) is a
    command's, and its id (the event's) makes it apply once."""
    return NewEvent(
        type=subjects.command_type(subject),
        subject=subject,
        entity={"domain": "command"},
        payload=payload,
    )


def child_outcome(outcome: ChildFinished) -> NewEvent:
    return _command(subjects.EXECUTION_CHILD_DONE, outcome.model_dump(mode="json"))


def cancel_child(child_execution_id: int, reason: str) -> NewEvent:
    return _command(
        subjects.EXECUTION_CANCEL,
        CancelCommand(execution_id=str(child_execution_id), reason=reason).model_dump(),
    )
