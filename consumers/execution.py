"""Executions: accept a run (catalog lookup, workload, record and start event in one transaction),
cancel, and the reads."""

from __future__ import annotations

from typing import Any

from psycopg import AsyncConnection

from consumers import broker
from consumers.base import Domain, by_type, dead_letter, each, many
from consumers.batch import batch
from consumers.events import Ref, execution_event
from consumers.queries import NotFound
from noetl.bus import subjects
from noetl.bus.envelope import Command, Outcome
from noetl.contracts.execution import (
    CancelCommand,
    EventError,
    EventsByExecution,
    EventStatus,
    ExecutionDetail,
    ExecutionEvent,
    ExecutionList,
    ExecutionQuery,
    ExecutionRequest,
    ExecutionResponse,
    ExecutionStatus,
    ExecutionSummary,
    Summary,
)
from noetl.contracts.jobs import ChildFinished, DeadJob, StepReport
from noetl.playbook.document import workload
from noetl.store import catalog as catalog_store
from noetl.store import executions as store
from noetl.store.jobs import ExecutionState


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
        state = ExecutionState(
            execution_id=row["execution_id"],
            catalog_id=row["catalog_id"],
            path=row["path"],
            version=row["version"],
            status=row["status"],
            parent_execution_id=row["parent_execution_id"],
            steps=0,
            active=0,
            done=0,
            depth=0,
        )
        first = execution_event(
            Ref(state.execution_id, state.path, state.version, state.parent_execution_id),
            "execution_start",
            EventStatus.STARTED,
            context={"path": row["path"], "version": row["version"], "workload": row["workload"]},
            parent=int(row["parent_event_id"]) if (row["parent_event_id"] or "").isdigit() else None,
            catalog_id=str(row["catalog_id"]),
            request_id=request_id,
        )
        started.append((state, entry["payload"], first))
        outcomes.append(_summary(request_id, row))
    await broker.start(started)
    return outcomes


def _new_execution(request: ExecutionRequest, entry: dict[str, Any]) -> dict[str, Any]:
    parent = request.parent()
    return {
        "catalog_id": entry["catalog_id"],
        "path": entry["path"],
        "version": entry["version"],
        "type": request.type,
        "status": ExecutionStatus.RUNNING,
        "workload": workload(entry["payload"], request.parameters, request.merge),
        "parameters": request.parameters,
        "merge": request.merge,
        "parent_execution_id": parent.parent_execution_id,
        "parent_event_id": parent.parent_event_id,
        "parent_step": parent.parent_step,
        "metadata": request.metadata,
        "depth": 0,
    }


async def cancel(conn: AsyncConnection, request_id: str, request: CancelCommand) -> Outcome:
    """Cancel a live execution; cancelling one that has ended is harmless (its summary)."""
    execution_id = _numeric(request.execution_id)
    if execution_id is not None:
        await broker.cancel(execution_id, request.reason)
    row = await store.get(conn, execution_id) if execution_id is not None else None
    if row is None:
        return Outcome.failed(request_id, "not_found", f"execution not found: {request.execution_id!r}")
    return _summary(request_id, row)


def _summary(request_id: str, row: dict[str, Any]) -> Outcome:
    return Outcome(request_id=request_id, result=ExecutionResponse.from_row(row).model_dump(mode="json"))


async def report(conn: AsyncConnection, reports: list[tuple[str, StepReport]]) -> list[Outcome]:
    """Workers' reports about their jobs, applied through the broker's state machine."""
    kinds = await broker.apply_reports([r for _, r in reports])
    return [
        Outcome(request_id=rid, result={"status": kind})
        for (rid, _), kind in zip(reports, kinds, strict=True)
    ]


async def child_done(conn: AsyncConnection, request_id: str, outcome: ChildFinished) -> Outcome:
    """A child execution's end, sent by the broker to itself through the outbox."""
    return Outcome(request_id=request_id, result={"status": await broker.child_finished(outcome)})


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
        subjects.command_type(subjects.EXECUTION_REPORT): many(StepReport, report),
        subjects.command_type(subjects.EXECUTION_DEAD_JOB): each(DeadJob, dead_job),
        subjects.command_type(subjects.EXECUTION_CHILD_DONE): each(ChildFinished, child_done),
    }
)


def _lock_key(command: Command) -> int:
    """The execution a command locks (0 for none: a run makes a new one, a dead job locks none)."""
    value = command.payload.get("execution_id", command.payload.get("parent_execution_id"))
    return (_numeric(str(value)) if value is not None else None) or 0


async def apply_commands(conn: AsyncConnection, commands: list[Command]) -> list[Outcome]:
    """Apply in execution-id order (stable, so one execution's commands keep their order): every
    copy of this consumer then locks executions in the same order, and two batches never
    deadlock."""
    order = sorted(range(len(commands)), key=lambda i: _lock_key(commands[i]))
    # One batch of broker writes for them all; writes are pipelined, only reads wait.
    async with conn.pipeline(), batch(conn):
        outcomes = await _apply_by_type(conn, [commands[i] for i in order])
    aligned: dict[int, Outcome] = dict(zip(order, outcomes, strict=True))
    return [aligned[i] for i in range(len(commands))]


async def _execution(conn: AsyncConnection, payload: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    raw = str(payload.get("execution_id", ""))
    execution_id = _numeric(raw)
    row = await store.get(conn, execution_id) if execution_id is not None else None
    if row is None:
        raise NotFound(f"execution not found: {raw!r}")
    return row["execution_id"], row


async def _events(conn: AsyncConnection, execution_id: int) -> list[ExecutionEvent]:
    return [ExecutionEvent.from_row(row, execution_id) for row in await store.events(conn, execution_id)]


async def detail(conn: AsyncConnection, payload: dict[str, Any]) -> dict[str, Any]:
    execution_id, row = await _execution(conn, payload)
    summary = ExecutionResponse.from_row(row).model_dump()
    return ExecutionDetail(
        **summary,
        workload=row["workload"],
        parent_execution_id=row["parent_execution_id"],
        parent_event_id=row["parent_event_id"],
        parent_step=row["parent_step"],
        metadata=row["metadata"],
        events=await _events(conn, execution_id),
    ).model_dump(mode="json")


async def events(conn: AsyncConnection, payload: dict[str, Any]) -> dict[str, Any]:
    execution_id, _ = await _execution(conn, payload)
    return EventsByExecution(execution_id=execution_id, events=await _events(conn, execution_id)).model_dump(
        mode="json"
    )


async def summary(conn: AsyncConnection, payload: dict[str, Any]) -> dict[str, Any]:
    """Events by type and the last action errors, as the original's `/api/events/summary`."""
    execution_id, _ = await _execution(conn, payload)
    counts, errors = await store.event_summary(conn, execution_id)
    found = Summary(execution_id=execution_id, counts=counts, errors=[EventError(**e) for e in errors])
    return ExecutionSummary(summary=found).model_dump(mode="json")


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
    subjects.QUERY_EXECUTION_SUMMARY: summary,
}


DOMAIN = Domain(
    durable="execution-commands",
    commands=subjects.EXECUTION_COMMANDS,
    apply=apply_commands,
    queries=QUERIES,
    configure=broker.configure,
)
