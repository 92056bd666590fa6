"""Executions: accept a run (catalog lookup, workload, record and start event in one transaction),
cancel, and the reads."""

from __future__ import annotations

from typing import Any

from psycopg import AsyncConnection

from consumers import broker
from consumers.base import Domain, by_type, dead_letter, each, many
from consumers.broker import execution_event
from consumers.queries import NotFound
from noetl import playbook
from noetl.bus import subjects
from noetl.bus.envelope import Command, Outcome
from noetl.contracts.execution import (
    CancelCommand,
    ExecutionDetail,
    ExecutionEvent,
    ExecutionList,
    ExecutionQuery,
    ExecutionRequest,
    ExecutionResponse,
)
from noetl.contracts.jobs import DeadJob, StepReport
from noetl.store import catalog as catalog_store
from noetl.store import executions as store
from noetl.store import jobs as job_store
from noetl.store.outbox import add_events

RUNNING = "running"


def _numeric(value: str | None) -> int | None:
    return int(value) if value and value.isdigit() and len(value) < 19 else None


async def _lookup(conn: AsyncConnection, request: ExecutionRequest) -> dict[str, Any] | str:
    """The catalog entry to run, or why none was found."""
    if request.catalog_id:
        catalog_id = _numeric(request.catalog_id)
        row = await catalog_store.by_id(conn, catalog_id) if catalog_id is not None else None
        return row or f"catalog entry not found: catalog_id {request.catalog_id!r}"
    path = request.playbook_path() or ""
    version = None if request.version == "latest" else int(request.version)
    row = await catalog_store.by_path(conn, path.strip("/"), version)
    return row or f"catalog entry not found: path {path!r}, version {request.version}"


def _entry_key(request: ExecutionRequest) -> tuple[str | None, ...]:
    if request.catalog_id:
        return ("catalog_id", request.catalog_id)
    return ("path", (request.playbook_path() or "").strip("/"), request.version)


async def run(conn: AsyncConnection, requests: list[tuple[str, ExecutionRequest]]) -> list[Outcome]:
    """Accept runs: one catalog lookup per distinct playbook, one INSERT for the executions and,
    through the broker, one for their first jobs."""
    outcomes: list[Outcome] = []
    entries: dict[tuple[str | None, ...], dict[str, Any] | str] = {}
    accepted: list[tuple[str, ExecutionRequest, dict[str, Any]]] = []
    for request_id, request in requests:
        key = _entry_key(request)
        if key not in entries:
            entries[key] = await _lookup(conn, request)
        entry = entries[key]
        if isinstance(entry, str):
            outcomes.append(Outcome.failed(request_id, "not_found", entry))
        else:
            accepted.append((request_id, request, entry))
    rows = await store.add(conn, [_new_execution(request, entry) for _, request, entry in accepted])
    started = []
    for (request_id, _, entry), row in zip(accepted, rows, strict=True):
        first = execution_event(
            row, "execution_start", catalog_id=str(row["catalog_id"]), request_id=request_id
        )
        started.append((row, entry["payload"], first))
        outcomes.append(_summary(request_id, row))
    await broker.start(conn, started)
    return outcomes


def _new_execution(request: ExecutionRequest, entry: dict[str, Any]) -> dict[str, Any]:
    parent = request.parent()
    return {
        "catalog_id": entry["catalog_id"],
        "path": entry["path"],
        "version": entry["version"],
        "type": request.type,
        "status": RUNNING,
        "workload": playbook.workload(entry["payload"], request.parameters, request.merge),
        "parameters": request.parameters,
        "merge": request.merge,
        "parent_execution_id": parent.parent_execution_id,
        "parent_event_id": parent.parent_event_id,
        "parent_step": parent.parent_step,
        "metadata": request.metadata,
    }


async def cancel(conn: AsyncConnection, request_id: str, request: CancelCommand) -> Outcome:
    execution_id = _numeric(request.execution_id)
    row = await store.cancel(conn, execution_id) if execution_id is not None else None
    if row is not None:
        await job_store.abandon_active(conn, row["execution_id"])
        await add_events(conn, [execution_event(row, "execution_cancelled", reason=request.reason)])
    elif execution_id is not None:
        row = await store.get(conn, execution_id)  # already ended: cancelling again is harmless
    if row is None:
        return Outcome.failed(request_id, "not_found", f"execution not found: {request.execution_id!r}")
    return _summary(request_id, row)


def _summary(request_id: str, row: dict[str, Any]) -> Outcome:
    return Outcome(request_id=request_id, result=ExecutionResponse.from_row(row).model_dump(mode="json"))


async def report(conn: AsyncConnection, request_id: str, step_report: StepReport) -> Outcome:
    """A worker's report about a job, applied through the broker's state machine."""
    return Outcome(request_id=request_id, result={"status": await broker.apply_report(conn, step_report)})


async def dead_job(conn: AsyncConnection, request_id: str, dead: DeadJob) -> Outcome:
    """A job message a worker could not decode, kept with its original bytes."""
    letter_id = await dead_letter(
        conn,
        consumer=dead.consumer,
        subject=dead.subject,
        reason=dead.reason,
        data=dead.data,
        deliveries=dead.deliveries,
    )
    return Outcome(request_id=request_id, result={"dead_letter_id": str(letter_id)})


_apply_by_type = by_type(
    {
        subjects.command_type(subjects.EXECUTION_RUN): many(ExecutionRequest, run),
        subjects.command_type(subjects.EXECUTION_CANCEL): each(CancelCommand, cancel),
        subjects.command_type(subjects.EXECUTION_REPORT): each(StepReport, report),
        subjects.command_type(subjects.EXECUTION_DEAD_JOB): each(DeadJob, dead_job),
    }
)


def _lock_key(command: Command) -> int:
    """The execution a command locks (0 for none: a run makes a new one, a dead job locks none)."""
    value = command.payload.get("execution_id")
    return (_numeric(str(value)) if value is not None else None) or 0


async def apply_commands(conn: AsyncConnection, commands: list[Command]) -> list[Outcome]:
    """Apply in execution-id order (stable, so one execution's commands keep their order): every
    copy of this consumer then locks executions in the same order, and two batches never
    deadlock."""
    order = sorted(range(len(commands)), key=lambda i: _lock_key(commands[i]))
    outcomes = await _apply_by_type(conn, [commands[i] for i in order])
    aligned: dict[int, Outcome] = dict(zip(order, outcomes, strict=True))
    return [aligned[i] for i in range(len(commands))]


def _event(row: dict[str, Any], execution_id: int) -> ExecutionEvent:
    return ExecutionEvent(
        event_id=row["event_id"],
        execution_id=execution_id,
        event_type=row["type"],
        timestamp=row["created_at"],
        payload=row["payload"],
    )


async def _execution(conn: AsyncConnection, payload: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    raw = str(payload.get("execution_id", ""))
    execution_id = _numeric(raw)
    row = await store.get(conn, execution_id) if execution_id is not None else None
    if row is None:
        raise NotFound(f"execution not found: {raw!r}")
    return row["execution_id"], row


async def detail(conn: AsyncConnection, payload: dict[str, Any]) -> dict[str, Any]:
    execution_id, row = await _execution(conn, payload)
    events = [_event(e, execution_id) for e in await store.events(conn, execution_id)]
    summary = ExecutionResponse.from_row(row).model_dump()
    return ExecutionDetail(
        **summary,
        workload=row["workload"],
        parent_execution_id=row["parent_execution_id"],
        parent_event_id=row["parent_event_id"],
        parent_step=row["parent_step"],
        metadata=row["metadata"],
        events=events,
    ).model_dump(mode="json")


async def events(conn: AsyncConnection, payload: dict[str, Any]) -> dict[str, Any]:
    execution_id, _ = await _execution(conn, payload)
    rows = await store.events(conn, execution_id)
    return {
        "execution_id": str(execution_id),
        "events": [_event(e, execution_id).model_dump(mode="json") for e in rows],
    }


async def listing(conn: AsyncConnection, payload: dict[str, Any]) -> dict[str, Any]:
    query = ExecutionQuery.model_validate(payload)
    rows = await store.page(
        conn, status=query.status, path=query.path, limit=query.limit, offset=query.offset
    )
    items = [ExecutionResponse.from_row(r) for r in rows]
    return ExecutionList(items=items, count=len(items), limit=query.limit, offset=query.offset).model_dump(
        mode="json"
    )


QUERIES = {
    subjects.QUERY_EXECUTIONS: listing,
    subjects.QUERY_EXECUTION: detail,
    subjects.QUERY_EXECUTION_EVENTS: events,
}


DOMAIN = Domain(
    durable="execution-commands", commands=subjects.EXECUTION_COMMANDS, apply=apply_commands, queries=QUERIES
)
