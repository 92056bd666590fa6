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


POOL_EXAMPLE = {
    "name": "pool-a",
    "runtime": "python",
    "capacity": 8,
    "labels": {"zone": "eu-1"},
    "pid": 4242,
    "hostname": "worker-host-1",
}
BROKER_EXAMPLE = {"name": "broker-1", "runtime": "python", "uri": "http://10.0.0.5:8084"}
COMPONENT_EXAMPLE = {
    "name": "pool-a",
    "runtime": {"type": "python", "pid": 4242, "hostname": "worker-host-1"},
    "status": "ready",
    "capacity": 8,
    "labels": {"zone": "eu-1"},
    "heartbeat": "2026-12-03T07:00:05Z",
    "created_at": "2026-12-03T07:00:00Z",
    "updated_at": "2026-12-03T07:00:05Z",
}


class RuntimeRegistration(BaseModel):
    """A component's registration, an upsert by kind and name: a known one is updated and keeps
    its `runtime_id`. `component_type` and `base_url` are the original's names of `kind` and
    `uri`; `uri` is required for a `server_api` and a `broker`."""

    model_config = ConfigDict(
        populate_by_name=True,
        extra="ignore",
        json_schema_extra={
            "examples": [{**BROKER_EXAMPLE, "kind": "broker"}, {**POOL_EXAMPLE, "kind": "worker_pool"}]
        },
    )

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

    model_config = ConfigDict(json_schema_extra={"examples": [POOL_EXAMPLE, {"name": "pool-b"}]})

    kind: Annotated[ComponentKind, _ignored("worker_pool")] = Field("worker_pool", alias="component_type")

    @field_validator("kind", mode="before")
    @classmethod
    def _worker_pool(cls, _: Any) -> str:
        return "worker_pool"


class BrokerRegistration(RuntimeRegistration):
    """The broker variant: whatever `kind` says, it is a broker; `uri` (or `base_url`) is required."""

    model_config = ConfigDict(json_schema_extra={"examples": [BROKER_EXAMPLE]})

    # The default too: a field validator does not run on a default value.
    kind: Annotated[ComponentKind, _ignored("broker")] = Field("broker", alias="component_type")

    @field_validator("kind", mode="before")
    @classmethod
    def _broker(cls, _: Any) -> str:
        return "broker"


class Deregistration(BaseModel):
    """A component to mark offline, by kind and name (`component_type` is the original's `kind`)."""

    model_config = ConfigDict(
        populate_by_name=True,
        extra="ignore",
        json_schema_extra={"examples": [{"name": "pool-a", "kind": "worker_pool"}]},
    )

    name: Name
    kind: ComponentKind = Field("worker_pool", alias="component_type")


class NamedDeregistration(BaseModel):
    """`{"name"}` for the kind-specific deregister endpoints."""

    model_config = ConfigDict(extra="ignore", json_schema_extra={"examples": [{"name": "pool-a"}]})

    name: Name


class HeartbeatRequest(BaseModel):
    """A beat through the API. Without `name`, the facade's `NOETL_WORKER_POOL_NAME`; with
    `registration`, an unknown component is registered again from it when
    `NOETL_AUTO_RECREATE_RUNTIME` is on."""

    model_config = ConfigDict(
        extra="ignore",
        json_schema_extra={
            "examples": [
                {"name": "pool-a"},
                {"name": "pool-a", "registration": {"name": "pool-a", "runtime": "python", "capacity": 8}},
            ]
        },
    )

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
    """The component as registered; a deregistration answers `runtime_id` and `runtime` null."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "status": "ok",
                    "name": "pool-a",
                    "runtime_id": "1",
                    "kind": "worker_pool",
                    "runtime": "python",
                },
            ]
        }
    )

    status: str = "ok"
    name: str
    runtime_id: OutId | None
    kind: ComponentKind
    runtime: str | None


class HeartbeatResponse(BaseModel):
    """The beat is recorded (`ok`), or the unknown component was registered again from it
    (`recreated`, with its runtime)."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"status": "ok", "name": "pool-a", "runtime_id": "1"},
                {"status": "recreated", "name": "pool-a", "runtime_id": "2", "runtime": "python"},
            ]
        }
    )

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
    """A registered component: `runtime` holds its runtime type, pid, hostname and other metadata;
    `status` is `ready`, or `offline` after a deregistration or a silence."""

    model_config = ConfigDict(json_schema_extra={"examples": [COMPONENT_EXAMPLE]})

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
    """Components of one kind, ordered by name, with the filters that chose them."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"items": [COMPONENT_EXAMPLE], "count": 1, "runtime": "python", "status": None, "error": None}
            ]
        }
    )

    items: list[ComponentInfo]
    count: int
    runtime: str | None = None
    status: str | None = None
    error: str | None = None
