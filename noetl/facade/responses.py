"""The statuses each kind of operation can answer, with their bodies, for the OpenAPI document.

A route names the kinds it is (`COMMAND`, `READ`, ...) and adds its own (a 404, say); the document
then lists every status the facade can give, each with its body's schema.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

ISSUE_EXAMPLE = {
    "type": "missing",
    "loc": ["body", "name"],
    "msg": "Field required",
    "input": {"runtime": "python"},
}
ACCEPTED_EXAMPLE = {"status": "accepted", "request_id": "r-5f0c2e9a4b1d4c7e"}
UNKNOWN_EXAMPLE = {"detail": {"status": "unknown", "name": "pool-a"}}


class Detail(BaseModel):
    """Every error but a 422: what went wrong, in words."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"detail": "execution not found: '42'"}]})

    detail: str


class ValidationIssue(BaseModel):
    """One problem: its kind, where it is (`loc`), in words (`msg`), and what was sent there
    (left out where it may be a secret)."""

    model_config = ConfigDict(json_schema_extra={"examples": [ISSUE_EXAMPLE]})

    type: str
    loc: list[str | int]
    msg: str
    input: Any = None
    ctx: dict[str, Any] | None = None


class ValidationDetail(BaseModel):
    """A 422, as FastAPI shapes it, whether the facade or a consumer found the problem."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"detail": [ISSUE_EXAMPLE]}]})

    detail: list[ValidationIssue]


class Accepted(BaseModel):
    """A 202: the command is stored and will be applied; its outcome is at `Location`."""

    model_config = ConfigDict(json_schema_extra={"examples": [ACCEPTED_EXAMPLE]})

    status: Literal["accepted"]
    request_id: str


class Unknown(BaseModel):
    """The component the registry does not know."""

    model_config = ConfigDict(json_schema_extra={"examples": [UNKNOWN_EXAMPLE["detail"]]})

    status: Literal["unknown"]
    name: str


class UnknownComponent(BaseModel):
    """A heartbeat of a component the registry does not know: register again."""

    model_config = ConfigDict(json_schema_extra={"examples": [UNKNOWN_EXAMPLE]})

    detail: Unknown


class RequestOutcome(BaseModel):
    """An applied command: the status and the body its request would have been answered with."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "request_id": "r-5f0c2e9a4b1d4c7e",
                    "state": "done",
                    "status_code": 200,
                    "response": {
                        "status": "ok",
                        "name": "pool-a",
                        "runtime_id": "1",
                        "kind": "worker_pool",
                        "runtime": "python",
                    },
                }
            ]
        }
    )

    request_id: str
    state: Literal["done"] = "done"
    status_code: int
    response: Any


class RequestPending(BaseModel):
    """An accepted command not applied yet."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"request_id": "r-5f0c2e9a4b1d4c7e", "state": "pending"}]}
    )

    request_id: str
    state: Literal["pending"] = "pending"


Responses = dict[int | str, dict[str, Any]]


def _answer(description: str, model: type[BaseModel] = Detail, example: Any = None) -> dict[str, Any]:
    """A documented answer: its body's model, and an example body (by default, `description`)."""
    body = {"detail": description} if example is None else example
    return {"model": model, "description": description, "content": {"application/json": {"example": body}}}


AUTH: Responses = {
    401: {
        **_answer("No bearer token, or one that is not known (when tokens are configured)"),
        "headers": {"WWW-Authenticate": {"description": "`Bearer`", "schema": {"type": "string"}}},
    },
    403: _answer("The token's role may not do this"),
}
"""A guarded route (`noetl.facade.auth`): every route but `/health` and `/ready`."""

UNAVAILABLE: Responses = {
    503: _answer("The bus, or every consumer that could answer, is unreachable; retry after `Retry-After`")
}
INVALID: Responses = {
    422: _answer("The request does not validate", ValidationDetail, {"detail": [ISSUE_EXAMPLE]})
}
READ: Responses = {**INVALID, **UNAVAILABLE}
"""A read: its parameters may not validate, and its consumers may be away."""

BODY: Responses = {413: _answer("The body is larger than `NOETL_API_MAX_BODY_BYTES`")}

COMMAND: Responses = {
    202: _answer("Accepted; the outcome is late: GET the `Location`", Accepted, ACCEPTED_EXAMPLE),
    400: _answer("The command cannot be applied: it would fail the same way again"),
    409: _answer("This Idempotency-Key was used for a different request"),
    **BODY,
    **READ,
}
"""A command: a body, an outcome that may be late, an Idempotency-Key that may be reused."""


BEAT: Responses = {
    202: _answer("Taken, but not answered in time (a beat keeps no outcome)", Accepted, ACCEPTED_EXAMPLE),
    404: _answer(
        "Unknown component: register again (`Retry-After` says when)", UnknownComponent, UNKNOWN_EXAMPLE
    ),
    **BODY,
    **READ,
}
"""A heartbeat: a command with no outcome kept and no Idempotency-Key."""


def not_found(description: str, model: type[BaseModel] = Detail) -> Responses:
    return {404: _answer(description, model)}


def bad_request(description: str) -> Responses:
    return {400: _answer(description)}
