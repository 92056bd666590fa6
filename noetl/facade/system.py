"""Liveness, readiness, and the outcome of a request whose reply was late."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Request
from fastapi.responses import JSONResponse

from noetl.bus.requests import QueryUnanswered, Requester
from noetl.facade.auth import GUARDED
from noetl.facade.dispatch import ACCEPTED_RETRY_AFTER
from noetl.facade.errors import outcome_body, outcome_status, unavailable
from noetl.facade.limits import StrictJsonRoute
from noetl.facade.responses import AUTH, READ, UNAVAILABLE, Detail, RequestOutcome, RequestPending, not_found

router = APIRouter(tags=["system"], route_class=StrictJsonRoute)

RequestId = Annotated[str, Path(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_-]+$")]


@router.get("/health")
@router.get("/api/health", summary="Health (the original's path)")
async def health() -> dict[str, str]:
    """The facade is up (it says nothing of the bus)."""
    return {"status": "ok"}


@router.get("/ready", responses=UNAVAILABLE)
async def ready(request: Request) -> JSONResponse:
    """The facade is connected to the bus and can take requests (503 while it is not)."""
    if not request.app.state.bus.connected:
        return unavailable("the message bus is not reachable")
    return JSONResponse({"status": "ready", "bus": "connected"})


@router.get(
    "/api/requests/{request_id}",
    tags=["requests"],
    response_model=RequestOutcome,
    dependencies=GUARDED,
    responses={
        **AUTH,
        202: {"model": RequestPending, "description": "Not applied yet: ask again after `Retry-After`"},
        **not_found("No request with this id was ever accepted", Detail),
        **READ,
    },
)
async def request_outcome(request_id: RequestId, request: Request) -> JSONResponse:
    """The outcome of an accepted command: its HTTP status and body, once applied.

    The facade notes every request it answers 202 (`noetl.req.<id>`): an id with no outcome and no
    such note was never accepted, and is 404. A command dead-lettered by its consumer has its
    failure recorded as its outcome, so every accepted request ends."""
    requester: Requester = request.app.state.requester
    try:
        outcome = await requester.stored_outcome(request_id, request.app.state.settings.api_reply_timeout)
    except QueryUnanswered:  # no consumer is up to read it: if it was accepted, it is not applied yet
        outcome, readable = None, False
    else:
        readable = True
    if outcome is not None:
        done = RequestOutcome(
            request_id=request_id, status_code=outcome_status(outcome), response=outcome_body(outcome)
        )
        return JSONResponse(done.model_dump())
    if await requester.was_accepted(request_id):
        return JSONResponse(
            RequestPending(request_id=request_id).model_dump(),
            status_code=202,
            headers={"Retry-After": str(ACCEPTED_RETRY_AFTER)},
        )
    if not readable:
        return unavailable("the outcomes of requests cannot be read right now")
    return JSONResponse({"detail": f"no request {request_id!r} was ever accepted"}, status_code=404)
