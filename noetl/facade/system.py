"""Liveness, readiness, and the outcome of a request whose reply was late."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Request
from fastapi.responses import JSONResponse

from noetl.bus.requests import QueryUnanswered, Requester
from noetl.facade.dispatch import ACCEPTED_RETRY_AFTER
from noetl.facade.errors import outcome_body, outcome_status, unavailable

router = APIRouter(tags=["system"])

RequestId = Annotated[str, Path(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_-]+$")]


@router.get("/health")
@router.get("/api/health", summary="Health (the original's path)")
async def health() -> dict[str, str]:
    """The facade is up (it says nothing of the bus)."""
    return {"status": "ok"}


@router.get("/ready", responses={503: {"description": "The bus is unreachable"}})
async def ready(request: Request) -> JSONResponse:
    if not request.app.state.bus.connected:
        return unavailable("the message bus is not reachable")
    return JSONResponse({"status": "ready", "bus": "connected"})


@router.get(
    "/api/requests/{request_id}",
    tags=["requests"],
    responses={202: {"description": "Not applied yet: ask again after `Retry-After`"}},
)
async def request_outcome(request_id: RequestId, request: Request) -> JSONResponse:
    """The outcome of an accepted command: its HTTP status and body, once applied."""
    requester: Requester = request.app.state.requester
    timeout = request.app.state.settings.api_reply_timeout
    try:
        outcome = await requester.stored_outcome(request_id, timeout)
    except QueryUnanswered:  # no consumer is up to read it: it is not applied yet either
        outcome = None
    if outcome is None:
        return JSONResponse(
            {"request_id": request_id, "state": "pending"},
            status_code=202,
            headers={"Retry-After": str(ACCEPTED_RETRY_AFTER)},
        )
    return JSONResponse(
        {
            "request_id": request_id,
            "state": "done",
            "status_code": outcome_status(outcome),
            "response": outcome_body(outcome),
        }
    )
