"""The execution endpoints, with the old `/api/execute` spelling, and their event streams."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Body, Header, Query, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from noetl.bus import subjects
from noetl.bus.events import follow
from noetl.contracts.execution import (
    CancelCommand,
    EventsByExecution,
    ExecutionDetail,
    ExecutionList,
    ExecutionRequest,
    ExecutionResponse,
    ExecutionSummary,
)
from noetl.facade.dispatch import Bus
from noetl.facade.runtime import COMMAND_ERRORS

router = APIRouter(prefix="/api", tags=["executions"])

RUN_ERRORS: dict[int | str, dict[str, Any]] = {
    **COMMAND_ERRORS,
    404: {"description": "Catalog entry not found"},
}
NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"description": "Execution not found"}}
SSE_RESPONSE: dict[int | str, dict[str, Any]] = {200: {"content": {"text/event-stream": {}}}}
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


@router.post("/executions/run", response_model=ExecutionResponse, responses=RUN_ERRORS)
async def run_execution(body: ExecutionRequest, bus: Bus) -> JSONResponse:
    return await bus.command(subjects.EXECUTION_RUN, body.model_dump(mode="json"))


@router.post("/execute", response_model=ExecutionResponse, responses=RUN_ERRORS, summary="Run (old clients)")
async def execute(body: ExecutionRequest, bus: Bus) -> JSONResponse:
    return await run_execution(body, bus)


@router.get("/executions", response_model=ExecutionList)
async def list_executions(
    bus: Bus,
    status: str | None = None,
    path: str | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> JSONResponse:
    query = {"status": status, "path": path, "limit": limit, "offset": offset}
    return await bus.query(subjects.QUERY_EXECUTIONS, query)


@router.get("/executions/{execution_id}", response_model=ExecutionDetail, responses=NOT_FOUND)
async def get_execution(execution_id: str, bus: Bus) -> JSONResponse:
    return await bus.query(subjects.QUERY_EXECUTION, {"execution_id": execution_id})


@router.get("/executions/{execution_id}/events", response_model=EventsByExecution, responses=NOT_FOUND)
async def get_execution_events(execution_id: str, bus: Bus) -> JSONResponse:
    return await bus.query(subjects.QUERY_EXECUTION_EVENTS, {"execution_id": execution_id})


@router.get(
    "/events/by-execution/{execution_id}",
    response_model=EventsByExecution,
    responses=NOT_FOUND,
    summary="An execution's events (the original's path)",
)
async def get_events_by_execution(execution_id: str, bus: Bus) -> JSONResponse:
    return await bus.query(subjects.QUERY_EXECUTION_EVENTS, {"execution_id": execution_id})


@router.get("/events/summary/{execution_id}", response_model=ExecutionSummary, responses=NOT_FOUND)
async def get_execution_summary(execution_id: str, bus: Bus) -> JSONResponse:
    """An execution's events counted by type, and its last three action errors."""
    return await bus.query(subjects.QUERY_EXECUTION_SUMMARY, {"execution_id": execution_id})


@router.post(
    "/executions/{execution_id}/cancel",
    response_model=ExecutionResponse,
    responses={**COMMAND_ERRORS, **NOT_FOUND},
)
async def cancel_execution(
    execution_id: str, bus: Bus, reason: Annotated[str | None, Body(embed=True, max_length=1000)] = None
) -> JSONResponse:
    command = CancelCommand(execution_id=execution_id, reason=reason)
    return await bus.command(subjects.EXECUTION_CANCEL, command.model_dump())


def _resume_from(last_event_id: str | None) -> int | None:
    """`Last-Event-ID` is the stream sequence of the last event the client saw."""
    if last_event_id and last_event_id.strip().isdigit():
        return int(last_event_id) + 1
    return None


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
    found = await bus.query(subjects.QUERY_EXECUTION, {"execution_id": execution_id})
    if found.status_code != 200:
        return found
    # The stored id, not the one in the URL: "007" finds execution 7, whose events are under "7".
    canonical = str(json.loads(found.body)["execution_id"])
    return _event_stream(request, subjects.execution_events(canonical), last_event_id)


@router.get(
    "/events/stream",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}}},
)
async def stream_events(request: Request, last_event_id: Annotated[str | None, Header()] = None) -> Response:
    """Server-Sent Events for every event: runtime, catalog, executions; resumable."""
    return _event_stream(request, subjects.EVENTS_ALL, last_event_id)
