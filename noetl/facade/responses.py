"""The statuses each kind of operation can answer, with their bodies, for the OpenAPI document.

A route names the kinds it is (`COMMAND`, `READ`, ...) and adds its own (a 404, say); the document
then lists every status the facade can give, each with its body's schema.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel


class Detail(BaseModel):
    """Every error but a 422: what went wrong, in words."""

    detail: str


class ValidationIssue(BaseModel):
    type: str
    loc: list[str | int]
    msg: str
    input: Any = None
    ctx: dict[str, Any] | None = None


class ValidationDetail(BaseModel):
    """A 422, as FastAPI shapes it, whether the facade or a consumer found the problem."""

    detail: list[ValidationIssue]


class Accepted(BaseModel):
    status: Literal["accepted"]
    request_id: str


class Unknown(BaseModel):
    status: Literal["unknown"]
    name: str


class UnknownComponent(BaseModel):
    """A heartbeat of a component the registry does not know: register again."""

    detail: Unknown


class RequestOutcome(BaseModel):
    """An applied command: the status and the body its request would have been answered with."""

    request_id: str
    state: Literal["done"] = "done"
    status_code: int
    response: Any


class RequestPending(BaseModel):
    request_id: str
    state: Literal["pending"] = "pending"


Responses = dict[int | str, dict[str, Any]]


def _error(description: str, model: type[BaseModel] = Detail) -> dict[str, Any]:
    return {"model": model, "description": description}


AUTH: Responses = {
    401: {
        **_error("No bearer token, or one that is not known (when tokens are configured)"),
        "headers": {"WWW-Authenticate": {"description": "`Bearer`", "schema": {"type": "string"}}},
    },
    403: _error("The token's role may not do this"),
}
"""A guarded route (`noetl.facade.auth`): every route but `/health` and `/ready`."""

UNAVAILABLE: Responses = {
    503: _error("The bus, or every consumer that could answer, is unreachable; retry after `Retry-After`")
}
INVALID: Responses = {422: _error("The request does not validate", ValidationDetail)}
READ: Responses = {**INVALID, **UNAVAILABLE}
"""A read: its parameters may not validate, and its consumers may be away."""

BODY: Responses = {413: _error("The body is larger than `NOETL_API_MAX_BODY_BYTES`")}

COMMAND: Responses = {
    202: {"model": Accepted, "description": "Accepted; the outcome is late: GET the `Location`"},
    400: _error("The command cannot be applied: it would fail the same way again"),
    409: _error("This Idempotency-Key was used for a different request"),
    **BODY,
    **READ,
}
"""A command: a body, an outcome that may be late, an Idempotency-Key that may be reused."""


BEAT: Responses = {
    202: {"model": Accepted, "description": "Taken, but not answered in time (a beat keeps no outcome)"},
    404: _error("Unknown component: register again (`Retry-After` says when)", UnknownComponent),
    **BODY,
    **READ,
}
"""A heartbeat: a command with no outcome kept and no Idempotency-Key."""


def not_found(description: str, model: type[BaseModel] = Detail) -> Responses:
    return {404: _error(description, model)}


def bad_request(description: str) -> Responses:
    return {400: _error(description)}
