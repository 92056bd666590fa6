"""Commands and queries from a route: the request id, `Idempotency-Key`, publish, wait, respond."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import StringConstraints, TypeAdapter, ValidationError

from noetl.bus import subjects
from noetl.bus.envelope import (
    Command,
    fingerprint,
    idempotent_request_id,
    new_request_id,
)
from noetl.bus.requests import Answer, Late, Requester
from noetl.contracts.fields import INT64_MAX, NO_NUL_PATTERN
from noetl.facade.errors import outcome_response
from noetl.metrics import LATE_REPLIES
from noetl.settings import Settings

REQUEST_ID_HEADER = "X-Request-ID"
JSON = "application/json"
STREAM_AFTER_BYTES = 4 * 1024 * 1024
ACCEPTED_RETRY_AFTER = 1
IDEMPOTENCY_KEY = "Idempotency-Key"
_IDEMPOTENCY_KEY = TypeAdapter(Annotated[str, StringConstraints(max_length=255)])

# Query parameters of the reads. Text is compared with stored text, which cannot hold NUL; numbers
# go to PostgreSQL as bigint: each is refused here (422), not in the store.
Filter = Annotated[str | None, Query(pattern=NO_NUL_PATTERN)]
Limit = Annotated[int | None, Query(ge=1, le=INT64_MAX, description="at most this many; all when absent")]
Offset = Annotated[int, Query(ge=0, le=INT64_MAX, description="skip this many first")]


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
        recorded: bool = True,
    ) -> JSONResponse:
        """Publish a command and answer with its outcome, or 202 when the outcome is late, also
        when the command's fate is unknown (it may be stored: the requester settles it). 503 only
        when it surely was not published (`NotPublished`): then a retry cannot double it.
        `fingerprinted` stands for the payload in the `Idempotency-Key` check when the payload
        differs at every sending (it holds a freshly sealed secret). A `recorded` command's
        outcome can be fetched later (`Location`), so its id is noted."""
        command = self._command(
            subject, payload, command_type or subjects.command_type(subject), fingerprinted
        )
        outcome = await self.requester.send(
            subject, command, self.settings.api_reply_timeout, recorded=recorded
        )
        headers = {REQUEST_ID_HEADER: command.id}
        if isinstance(outcome, Late):
            LATE_REPLIES.labels(command.type).inc()
            return accepted(command.id, headers, location=recorded)
        return outcome_response(outcome, headers)

    async def query(self, subject: str, payload: dict[str, Any]) -> Response:
        """A read: its result as the consumer wrote it, or the mapped refusal. A result that is
        whole within `STREAM_AFTER_BYTES` is answered with its length; a larger one is passed on
        part by part as it comes, so the facade never holds all of it."""
        answer = await self.requester.ask(subject, payload, self.settings.api_reply_timeout)
        if answer.error is not None:
            return outcome_response(answer.error)
        head = [part async for part in answer.parts(up_to=STREAM_AFTER_BYTES)]
        if answer.complete:
            return Response(b"".join(head), media_type=JSON)
        return StreamingResponse(_chain(head, answer), media_type=JSON)


async def _chain(head: list[bytes], answer: Answer) -> AsyncIterator[bytes]:
    try:
        for part in head:
            yield part
        async for part in answer.parts():
            yield part
    finally:
        answer.close()


def accepted(request_id: str, headers: dict[str, str], *, location: bool = True) -> JSONResponse:
    """202: the command is stored, or may be and is being published until it is; its outcome is
    late (at `Location`, unless it keeps none)."""
    extra = {"Location": f"/api/requests/{request_id}"} if location else {}
    return JSONResponse(
        {"status": "accepted", "request_id": request_id},
        status_code=202,
        headers={**headers, **extra, "Retry-After": str(ACCEPTED_RETRY_AFTER)},
    )


async def get_dispatcher(request: Request) -> Dispatcher:
    """Async, so FastAPI calls it in the event loop (a class or plain function would go through
    its thread pool)."""
    return Dispatcher(request)


Bus = Annotated[Dispatcher, Depends(get_dispatcher)]
