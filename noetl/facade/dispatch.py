"""Commands and queries from a route: the request id, `Idempotency-Key`, publish, wait, respond."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, Header, Request
from fastapi.responses import JSONResponse

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


class Dispatcher:
    def __init__(self, request: Request, idempotency_key: str | None) -> None:
        self.requester: Requester = request.app.state.requester
        self.settings: Settings = request.app.state.settings
        self.scope = f"{request.method} {request.scope['path']}"
        self.idempotency_key = idempotency_key

    def _command(self, subject: str, payload: dict[str, Any], command_type: str) -> Command:
        if self.idempotency_key:
            return Command(
                id=idempotent_request_id(self.scope, self.idempotency_key),
                type=command_type,
                payload=payload,
                fingerprint=fingerprint(payload),
            )
        return Command(id=new_request_id(), type=command_type, payload=payload)

    async def command(
        self, subject: str, payload: dict[str, Any], command_type: str | None = None
    ) -> JSONResponse:
        """Publish a command and answer with its outcome, or 202 when the outcome is late."""
        command = self._command(subject, payload, command_type or subjects.command_type(subject))
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


async def get_dispatcher(
    request: Request,
    idempotency_key: Annotated[str | None, Header(max_length=255)] = None,
) -> Dispatcher:
    return Dispatcher(request, idempotency_key)


Bus = Annotated[Dispatcher, Depends(get_dispatcher)]
