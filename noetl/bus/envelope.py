"""The three shapes that travel on the bus: a command, its outcome, and an event."""

from __future__ import annotations

import hashlib
import json
import uuid
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, Field, TypeAdapter, ValidationError

from noetl.contracts.fields import StoredText

MSG_ID_HEADER = "Nats-Msg-Id"
REPLY_TO_HEADER = "Noetl-Reply-To"
# A query's result travels as its JSON text, in as many messages as it takes (`max_payload` bounds
# one): each part says its place, and the last one says it ends the answer. A refusal is one
# message without these headers: the `Outcome` with its error.
PART_HEADER = "Noetl-Part"
END_HEADER = "Noetl-End"

ErrorCode = Literal["bad_request", "invalid", "forbidden", "not_found", "unknown", "conflict", "unavailable"]


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_request_id() -> str:
    return uuid.uuid4().hex


def idempotent_request_id(scope: str, key: str) -> str:
    """The request id for an `Idempotency-Key`: the same key on the same operation, the same id."""
    return uuid.uuid5(uuid.NAMESPACE_URL, f"noetl:{scope}:{key}").hex


def fingerprint(payload: dict[str, Any]) -> str:
    """A digest of a command's payload, to tell a retry from a reused idempotency key."""
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


class Command(BaseModel):
    """A request to change state. `id` is the request id and the stream's `Nats-Msg-Id`."""

    id: StoredText = Field(min_length=1, max_length=128)
    type: StoredText
    time: datetime = Field(default_factory=utcnow)
    payload: dict[str, Any] = Field(default_factory=dict)
    fingerprint: str | None = None

    @property
    def idempotent(self) -> bool:
        """Its id comes from a client's `Idempotency-Key`, so the stream may already hold it."""
        return self.fingerprint is not None


class ErrorInfo(BaseModel):
    code: ErrorCode
    detail: Any = None
    retry_after: int | None = None


class Outcome(BaseModel):
    """What a command came to: a result, or an error the facade maps to an HTTP status."""

    request_id: str
    result: dict[str, Any] | None = None
    error: ErrorInfo | None = None

    @classmethod
    def failed(cls, request_id: str, code: ErrorCode, detail: Any, retry_after: int | None = None) -> Outcome:
        return cls(
            request_id=request_id,
            error=ErrorInfo(code=code, detail=detail, retry_after=retry_after),
        )


# A reply message: the outcomes of one consumer batch that named the same reply subject, as a JSON
# array. Each outcome carries its request id; one message per batch costs every side less.
OUTCOMES = TypeAdapter(list[Outcome])


def replayed(command: Command, outcome: dict[str, Any], stored_fingerprint: str | None) -> Outcome:
    """A repeated request id: the recorded outcome, unless its `Idempotency-Key` was reused."""
    if command.fingerprint and stored_fingerprint and command.fingerprint != stored_fingerprint:
        return Outcome.failed(
            command.id, "conflict", "this Idempotency-Key was already used for a different request"
        )
    return Outcome.model_validate({**outcome, "request_id": command.id})


def invalid(request_id: str, exc: ValidationError) -> Outcome:
    """A payload that does not validate: the outcome carries pydantic's errors, like a 422."""
    return Outcome.failed(request_id, "invalid", exc.errors(include_url=False, include_context=False))


class Event(BaseModel):
    """Something that happened. `id` orders events and is their `Nats-Msg-Id` on the stream."""

    id: str
    type: str
    time: datetime
    entity: dict[str, str]
    payload: dict[str, Any] = Field(default_factory=dict)
