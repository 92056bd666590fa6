"""The runtime registry's contracts: what clients send, what the bus carries, what clients get."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema, field_validator

from noetl.bus.envelope import Command
from noetl.contracts.errors import BadRequest
from noetl.contracts.fields import JsonObject, Limit, Name, Offset, OutId, StrippedStr, Text, UtcDatetime

ComponentKind = Literal["worker_pool", "broker", "server_api", "scheduler", "monitor"]
KINDS_WITH_URI: frozenset[str] = frozenset({"server_api", "broker"})

OFFLINE = "offline"
READY = "ready"


class MissingUri(BadRequest):
    """`uri` is required for this kind: a 400, not a 422, as the original API answered."""


class RuntimeRegistration(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="ignore")

    name: Name
    kind: ComponentKind = Field("worker_pool", alias="component_type")
    runtime: StrippedStr | None = None
    uri: StrippedStr | None = Field(None, alias="base_url")
    status: StrippedStr = Field(READY, max_length=64)
    # JSON integers only, as the document says: not `true`, not `"8"`, not `8.0`.
    capacity: int | None = Field(None, ge=0, le=2**31 - 1, strict=True)
    labels: JsonObject | None = None
    pid: int | None = Field(None, ge=0, le=2**31 - 1, strict=True)
    hostname: StrippedStr | None = None
    meta: JsonObject | None = None

    @field_validator("status")
    @classmethod
    def _lowercase_status(cls, value: str) -> str:
        if not value:
            raise ValueError("must not be empty")
        return value.lower()

    def require_uri(self) -> None:
        if self.kind in KINDS_WITH_URI and not self.uri:
            raise MissingUri(f"uri (or base_url) is required for kind {self.kind}")

    def runtime_metadata(self) -> dict[str, Any]:
        """The stored metadata: `{"type": runtime, "pid", "hostname", ...meta}`."""
        return {
            "type": self.runtime,
            "pid": self.pid,
            "hostname": self.hostname,
            **(self.meta or {}),
        }

    def as_payload(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


def _ignored(kind: str) -> WithJsonSchema:
    return WithJsonSchema({"description": f"ignored: the component is a {kind}"})


class WorkerPoolRegistration(RuntimeRegistration):
    """The worker-pool variant: whatever `kind` says, it is a worker pool."""

    kind: Annotated[ComponentKind, _ignored("worker_pool")] = Field("worker_pool", alias="component_type")

    @field_validator("kind", mode="before")
    @classmethod
    def _worker_pool(cls, _: Any) -> str:
        return "worker_pool"


class BrokerRegistration(RuntimeRegistration):
    # The default too: a field validator does not run on a default value.
    kind: Annotated[ComponentKind, _ignored("broker")] = Field("broker", alias="component_type")

    @field_validator("kind", mode="before")
    @classmethod
    def _broker(cls, _: Any) -> str:
        return "broker"


class Deregistration(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="ignore")

    name: Name
    kind: ComponentKind = Field("worker_pool", alias="component_type")


class NamedDeregistration(BaseModel):
    """`{"name"}` for the kind-specific deregister endpoints."""

    model_config = ConfigDict(extra="ignore")

    name: Name


class HeartbeatRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    name: Name | None = None
    registration: JsonObject | None = None


class Heartbeat(BaseModel):
    """A heartbeat as the bus carries it, from a worker or through the facade."""

    kind: ComponentKind = "worker_pool"
    name: Name
    sent_at: UtcDatetime
    registration: JsonObject | None = None

    def recreation(self) -> RuntimeRegistration | None:
        """The registration to recreate an unknown component from, if `registration` allows."""
        data = self.registration or {}
        if not data.get("name") or not data.get("runtime"):
            return None
        uri = data.get("uri") or data.get("endpoint") or data.get("base_url")
        try:
            return RuntimeRegistration.model_validate(
                {
                    **data,
                    "kind": self.kind,
                    "name": self.name,
                    "runtime": str(data["runtime"]).strip().lower(),
                    "uri": uri,
                }
            )
        except ValueError:
            return None


class HeartbeatCommand(Command):
    """A heartbeat's envelope, validated in one pass: the consumer's hot path."""

    payload: Heartbeat


class RegistrationResponse(BaseModel):
    status: str = "ok"
    name: str
    runtime_id: OutId | None
    kind: ComponentKind
    runtime: str | None


class HeartbeatResponse(BaseModel):
    status: Literal["ok", "recreated"]
    name: str | None
    runtime_id: OutId | None
    runtime: str | None = None

    def as_body(self) -> dict[str, Any]:
        body = self.model_dump(mode="json")
        if self.status != "recreated":
            body.pop("runtime")
        return body


class ComponentInfo(BaseModel):
    name: str
    runtime: dict[str, Any] | None
    status: str
    capacity: int | None
    labels: dict[str, Any] | None
    heartbeat: datetime | None
    created_at: datetime
    updated_at: datetime


class ComponentQuery(BaseModel):
    kind: ComponentKind = "worker_pool"
    runtime: Text | None = None
    status: Text | None = None
    limit: Limit = None
    offset: Offset = 0


class ListResponse(BaseModel):
    items: list[ComponentInfo]
    count: int
    runtime: str | None = None
    status: str | None = None
    error: str | None = None
