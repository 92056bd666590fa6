"""Where outcomes and failures become HTTP statuses: the one place that knows the mapping."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from noetl.bus.connection import BusUnavailable
from noetl.bus.envelope import ErrorCode, Outcome
from noetl.bus.requests import QueryUnanswered
from noetl.contracts.errors import BadRequest
from noetl.crypto import NotConfigured

BUS_RETRY_AFTER = 2

STATUS: dict[ErrorCode, int] = {
    "bad_request": 400,
    "forbidden": 403,
    "not_found": 404,
    "unknown": 404,
    "conflict": 409,
    "invalid": 422,
    "unavailable": 503,
}


def outcome_status(outcome: Outcome) -> int:
    return STATUS[outcome.error.code] if outcome.error else 200


def outcome_body(outcome: Outcome) -> Any:
    if outcome.error is None:
        return outcome.result
    detail = outcome.error.detail
    if outcome.error.code == "invalid" and not isinstance(detail, list):
        # Every 422 has FastAPI's shape, whatever the consumer that refused it wrote.
        detail = [{"type": "value_error", "loc": ["body"], "msg": str(detail), "input": None}]
    return {"detail": detail}


def outcome_response(outcome: Outcome, headers: dict[str, str] | None = None) -> JSONResponse:
    headers = dict(headers or {})
    if outcome.error and outcome.error.retry_after is not None:
        headers["Retry-After"] = str(outcome.error.retry_after)
    elif outcome.error and outcome.error.code == "unavailable":
        headers["Retry-After"] = str(BUS_RETRY_AFTER)
    return JSONResponse(outcome_body(outcome), status_code=outcome_status(outcome), headers=headers)


def unavailable(detail: str) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=503, headers={"Retry-After": str(BUS_RETRY_AFTER)})


def install(app: FastAPI) -> None:
    @app.exception_handler(BusUnavailable)
    async def _bus_down(_: Request, exc: BusUnavailable) -> JSONResponse:
        return unavailable(str(exc))

    @app.exception_handler(QueryUnanswered)
    async def _no_reader(_: Request, exc: QueryUnanswered) -> JSONResponse:
        return unavailable(f"this cannot be read right now: {exc}")

    @app.exception_handler(NotConfigured)
    async def _no_key(_: Request, exc: NotConfigured) -> JSONResponse:
        return unavailable(str(exc))

    @app.exception_handler(BadRequest)
    async def _bad_request(_: Request, exc: BadRequest) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=400)
