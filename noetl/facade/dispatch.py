"""Commands and queries from a route: the request id, `Idempotency-Key`, publish, wait, respond."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import StringConstraints, TypeAdapter, ValidationError

from noetl.bus import subjects
from noetl.bus.envelope import (
    Command,
    fingerprint,
    idempotent_request_id,
    new_request_id,
)
from noetl.bus.requests import Requester
from noetl.facade.errors import outcome_response
from noetl.settings import Settings

REQUEST_ID_HEADER = "X-Request-ID"
ACCEPTED_RETRY_AFTER = 1
IDEMPOTENCY_KEY = "Idempotency-Key"
_IDEMPOTENCY_KEY = TypeAdapter(Annotated[str, StringConstraints(max_length=255)])


def idempotency_key(request: Request) -> str | None:
    """The `Idempotency-Key` header, read by hand: declared as a FastAPI `Header` parameter it
    cost a tenth of the facade's in-process time per request (measured). A key that is too long
    is refused with the 422 FastAPI would give."""
    key = request.headers.get(IDEMPOTENCY_KEY)
    if key is None:
        return None
    try:
        return _IDEMPOTENCY_KEY.validate_python(key)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        raise RequestValidationError(
            [{**e, "loc": ("header", IDEMPOTENCY_KEY.lower())} for e in errors]
        ) from exc


def document_idempotency_key(app: FastAPI) -> None:
    """Name the header in the OpenAPI document of every command (the operations that document
    the 409 of a reused key), as a declared parameter would have."""
    build = app.openapi
    parameter = {
        "name": IDEMPOTENCY_KEY.lower(),
        "in": "header",
        "required": False,
        "schema": {**_IDEMPOTENCY_KEY.json_schema(), "title": IDEMPOTENCY_KEY},
    }

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            for operations in build()["paths"].values():
                for operation in operations.values():
                    if "409" in operation.get("responses", {}):
                        operation.setdefault("parameters", []).append(parameter)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


class Dispatcher:
    def __init__(self, request: Request) -> None:
        self.requester: Requester = request.app.state.requester
        self.settings: Settings = request.app.state.settings
        self.scope = f"{request.method} {request.scope['path']}"
        self.idempotency_key = idempotency_key(request)

    def _command(
        self,
        subject: str,
        payload: dict[str, Any],
        command_type: str,
        fingerprinted: dict[str, Any] | None = None,
    ) -> Command:
        if self.idempotency_key:
            return Command(
                id=idempotent_request_id(self.scope, self.idempotency_key),
                type=command_type,
                payload=payload,
                fingerprint=fingerprint(payload if fingerprinted is None else fingerprinted),
            )
        return Command(id=new_request_id(), type=command_type, payload=payload)

    async def command(
        self,
        subject: str,
        payload: dict[str, Any],
        command_type: str | None = None,
        *,
        fingerprinted: dict[str, Any] | None = None,
    ) -> JSONResponse:
        """Publish a command and answer with its outcome, or 202 when the outcome is late.
        `fingerprinted` stands for the payload in the `Idempotency-Key` check when the payload
        differs at every sending (it holds a freshly sealed secret)."""
        command = self._command(
            subject, payload, command_type or subjects.command_type(subject), fingerprinted
        )
        outcome = await self.requester.send(subject, command, self.settings.api_reply_timeout)
        headers = {REQUEST_ID_HEADER: command.id}
        if outcome is None:
            return accepted(command.id, headers)
        return outcome_response(outcome, headers)

    async def query(self, subject: str, payload: dict[str, Any]) -> JSONResponse:
        outcome = await self.requester.query(subject, payload, self.settings.api_reply_timeout)
        return outcome_response(outcome)


def accepted(request_id: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(
        {"status": "accepted", "request_id": request_id},
        status_code=202,
        headers={
            **(headers or {}),
            "Location": f"/api/requests/{request_id}",
            "Retry-After": str(ACCEPTED_RETRY_AFTER),
        },
    )


async def get_dispatcher(request: Request) -> Dispatcher:
    """Async, so FastAPI calls it in the event loop (a class or plain function would go through
    its thread pool)."""
    return Dispatcher(request)


Bus = Annotated[Dispatcher, Depends(get_dispatcher)]
