"""The execution endpoints, with the old `/api/execute` spelling, and their event streams."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from noetl.bus import subjects
from noetl.bus.envelope import Outcome
from noetl.bus.events import follow
from noetl.contracts.execution import (
    CancelCommand,
    CancelRequest,
    EventsByExecution,
    ExecutionDetail,
    ExecutionList,
    ExecutionRequest,
    ExecutionResponse,
    ExecutionSummary,
)
from noetl.contracts.fields import int64
from noetl.facade.auth import GUARDED
from noetl.facade.dispatch import Bus, Filter, Offset
from noetl.facade.errors import outcome_response
from noetl.facade.limits import StrictJsonRoute
from noetl.facade.responses import AUTH, COMMAND, READ, not_found

router = APIRouter(
    prefix="/api", tags=["executions"], route_class=StrictJsonRoute, dependencies=GUARDED, responses=AUTH
)

RUN = {**COMMAND, **not_found("Catalog entry not found")}
NOT_FOUND = {**READ, **not_found("Execution not found")}
SSE_RESPONSE: dict[int | str, dict[str, Any]] = {200: {"content": {"text/event-stream": {}}}}
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


@router.post("/executions/run", response_model=ExecutionResponse, responses=RUN)
async def run_execution(body: ExecutionRequest, bus: Bus) -> JSONResponse:
    """Start an execution of a catalog entry; it runs on the worker pools of the playbook's
    runtime. The answer is the execution as started (`running`): follow it at
    `/api/executions/{execution_id}` or its event stream."""
    return await bus.command(subjects.EXECUTION_RUN, body.model_dump(mode="json"))


@router.post("/execute", response_model=ExecutionResponse, responses=RUN, summary="Run (old clients)")
async def execute(body: ExecutionRequest, bus: Bus) -> JSONResponse:
    """`POST /api/executions/run` under the original's path."""
    return await run_execution(body, bus)


@router.get("/executions", response_model=ExecutionList, responses=READ)
async def list_executions(
    bus: Bus,
    status: Filter = None,
    path: Filter = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    offset: Offset = 0,
) -> Response:
    """Executions, newest first, optionally of one status or one playbook path."""
    query = {"status": status, "path": path, "limit": limit, "offset": offset}
    return await bus.query(subjects.QUERY_EXECUTIONS, query)


def _not_found(execution_id: str) -> JSONResponse:
    return outcome_response(Outcome.failed("", "not_found", f"execution not found: {execution_id!r}"))


def _stored_id(execution_id: str) -> str | None:
    """An execution id as the store spells it ("007" is 7), or None for one that cannot exist:
    only ASCII digits within int64 can name an execution, so nothing else is looked up."""
    number = int64(execution_id)
    return None if number is None else str(number)


@router.get("/executions/{execution_id}", response_model=ExecutionDetail, responses=NOT_FOUND)
async def get_execution(execution_id: str, bus: Bus) -> Response:
    """An execution with its workload and its events."""
    return await _by_execution(subjects.QUERY_EXECUTION, execution_id, bus)


async def _by_execution(subject: str, execution_id: str, bus: Bus) -> Response:
    stored = _stored_id(execution_id)
    if stored is None:
        return _not_found(execution_id)
    return await bus.query(subject, {"execution_id": stored})


@router.get("/executions/{execution_id}/events", response_model=EventsByExecution, responses=NOT_FOUND)
async def get_execution_events(execution_id: str, bus: Bus) -> Response:
    """An execution's events, oldest first, flat as NoETL's clients read them."""
    return await _by_execution(subjects.QUERY_EXECUTION_EVENTS, execution_id, bus)


@router.get(
    "/events/by-execution/{execution_id}",
    response_model=EventsByExecution,
    responses=NOT_FOUND,
    summary="An execution's events (the original's path)",
)
async def get_events_by_execution(execution_id: str, bus: Bus) -> Response:
    """`GET /api/executions/{execution_id}/events` under the original's path."""
    return await _by_execution(subjects.QUERY_EXECUTION_EVENTS, execution_id, bus)


@router.get("/events/summary/{execution_id}", response_model=ExecutionSummary, responses=NOT_FOUND)
async def get_execution_summary(execution_id: str, bus: Bus) -> Response:
    """An execution's events counted by type, and its last three action errors."""
    return await _by_execution(subjects.QUERY_EXECUTION_SUMMARY, execution_id, bus)


@router.post(
    "/executions/{execution_id}/cancel",
    response_model=ExecutionResponse,
    responses={**COMMAND, **NOT_FOUND},
)
async def cancel_execution(execution_id: str, bus: Bus, body: CancelRequest | None = None) -> JSONResponse:
    """Cancel a running execution: its running steps are stopped on their workers, its
    sub-playbooks cancelled too. An execution that already ended is answered as it is."""
    stored = _stored_id(execution_id)
    if stored is None:
        return _not_found(execution_id)
    command = CancelCommand(execution_id=stored, reason=body.reason if body else None)
    return await bus.command(subjects.EXECUTION_CANCEL, command.model_dump())


def _resume_from(last_event_id: str | None) -> int | None:
    """`Last-Event-ID` is the stream sequence of the last event the client saw; anything but a
    plain int64 is no position, and the stream starts from the beginning."""
    sequence = int64(last_event_id.strip()) if last_event_id else None
    return None if sequence is None else sequence + 1


async def _sse(request: Request, filter_subject: str, start_seq: int | None) -> AsyncIterator[bytes]:
    yield b"retry: 2000\n\n"
    async for item in follow(request.app.state.bus.js, filter_subject, start_seq=start_seq):
        if await request.is_disconnected():
            return
        if item is None:
            yield b": keep-alive\n\n"
            continue
        data = item.event.model_dump_json()
        yield f"id: {item.sequence}\nevent: {item.event.type}\ndata: {data}\n\n".encode()


def _event_stream(request: Request, filter_subject: str, last_event_id: str | None) -> Response:
    request.app.state.bus.require()
    return StreamingResponse(
        _sse(request, filter_subject, _resume_from(last_event_id)),
        media_type="text/event-stream",
        headers=SSE_HEADERS,
    )


@router.get(
    "/executions/{execution_id}/events/stream",
    response_class=StreamingResponse,
    responses={**SSE_RESPONSE, **NOT_FOUND},
)
async def stream_execution_events(
    execution_id: str,
    request: Request,
    bus: Bus,
    last_event_id: Annotated[str | None, Header()] = None,
) -> Response:
    """Server-Sent Events: the execution's stored events, then live ones; resumable."""
    # The stored id, not the one in the URL: "007" finds execution 7, whose events are under "7".
    stored = _stored_id(execution_id)
    if stored is None:
        return _not_found(execution_id)
    found = await bus.query(subjects.QUERY_EXECUTION, {"execution_id": stored})
    if found.status_code != 200:
        return found
    return _event_stream(request, subjects.execution_events(stored), last_event_id)


@router.get(
    "/events/stream",
    response_class=StreamingResponse,
    responses={**SSE_RESPONSE, **READ},
)
async def stream_events(request: Request, last_event_id: Annotated[str | None, Header()] = None) -> Response:
    """Server-Sent Events for every event: runtime, catalog, executions; resumable."""
    return _event_stream(request, subjects.EVENTS_ALL, last_event_id)
