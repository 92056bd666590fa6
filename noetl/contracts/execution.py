"""The execution API's contracts: the request with every alias old clients send, and the answers."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema, field_validator, model_validator

from noetl.contracts.fields import IdStr, JsonObject, OutId

ExecutionType = Literal["playbook", "tool", "model", "workflow"]
LATEST = "latest"
NULLABLE_OBJECT = {"anyOf": [{"type": "object", "additionalProperties": True}, {"type": "null"}]}

EXECUTION_EXAMPLE = {
    "execution_id": "1",
    "id": "1",
    "catalog_id": "1",
    "path": "examples/hello_world",
    "playbook_id": "examples/hello_world",
    "playbook_name": "hello_world",
    "version": "1",
    "type": "playbook",
    "execution_type": "playbook",
    "status": "completed",
    "timestamp": "2026-12-03T07:00:01.250Z",
    "start_time": "2026-12-03T07:00:01Z",
    "end_time": "2026-12-03T07:00:01.250Z",
    "progress": 100,
    "result": {"status": "success", "data": {"message": "Hi there"}},
    "error": None,
}
EVENT_EXAMPLE = {
    "event_id": "12",
    "execution_id": "1",
    "event_type": "step_completed",
    "node_id": "1:greet",
    "node_name": "greet",
    "node_type": "python",
    "status": "COMPLETED",
    "duration": 0.042,
    "timestamp": "2026-12-03T07:00:01.200Z",
    "created_at": "2026-12-03T07:00:01.200Z",
    "context": None,
    "result": {"status": "success", "data": {"message": "Hi there"}},
    "error": None,
    "current_index": None,
    "current_item": None,
    "worker_id": "local@host:4242",
    "parent_event_id": "9",
    "parent_execution_id": None,
    "meta": {"attempt": 1, "job_id": "3"},
}
EVENT_ERROR_EXAMPLE = {
    "node_name": "fetch",
    "error": "HTTP 503 from https://api.example.com/items",
    "created_at": "2026-12-03T07:00:02Z",
}
SUMMARY_EXAMPLE = {
    "execution_id": "1",
    "counts": {"execution_start": 1, "step_started": 3, "step_completed": 3, "execution_complete": 1},
    "skipped": 0,
    "errors": [],
}


class ExecutionStatus(StrEnum):
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


TERMINAL = frozenset({ExecutionStatus.COMPLETED, ExecutionStatus.FAILED, ExecutionStatus.CANCELLED})


class EventStatus(StrEnum):
    """An event's `status`, in NoETL's spelling: that of what the event is about."""

    STARTED = "STARTED"
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"


class ExecutionContext(BaseModel):
    """Where a sub-playbook's execution comes from: its parent execution, event and step."""

    model_config = ConfigDict(
        extra="ignore",
        json_schema_extra={
            "examples": [{"parent_execution_id": "1", "parent_event_id": "9", "parent_step": "teams"}]
        },
    )

    parent_execution_id: IdStr | None = None
    parent_event_id: IdStr | None = None
    parent_step: IdStr | None = None


class ExecutionRequest(BaseModel):
    """Run a playbook of the catalog: by `catalog_id`, or by `path` (`playbook_id` is the
    original's name) and `version` (default `latest`). `parameters` (`input_payload`) override the
    workload's keys, or are deep-merged into it with `merge`."""

    model_config = ConfigDict(
        populate_by_name=True,
        extra="ignore",
        json_schema_extra={
            "examples": [
                {"path": "examples/hello_world", "version": "latest", "parameters": {"message": "Hi there"}},
                {"playbook_id": "examples/hello_world", "input_payload": {"message": "Hi"}, "merge": True},
            ]
        },
    )

    catalog_id: IdStr | None = None
    path: IdStr | None = None
    playbook_id: IdStr | None = None
    version: IdStr = LATEST
    type: ExecutionType = Field("playbook", alias="execution_type")
    # null reads as none (`_null_is_empty`), and the document says so.
    parameters: Annotated[JsonObject, WithJsonSchema(NULLABLE_OBJECT)] = Field(
        default_factory=dict, alias="input_payload"
    )
    # JSON booleans only, as the document says: not 0, not "yes".
    merge: bool = Field(False, strict=True)
    sync_to_postgres: bool = Field(True, strict=True)
    context: ExecutionContext | None = None
    parent_execution_id: IdStr | None = None
    parent_event_id: IdStr | None = None
    parent_step: IdStr | None = None
    metadata: JsonObject | None = None

    @field_validator("parameters", mode="before")
    @classmethod
    def _null_is_empty(cls, value: Any) -> Any:
        return {} if value is None else value

    @field_validator("version")
    @classmethod
    def _version(cls, value: str) -> str:
        value = value.strip()
        if value.lower() == LATEST or not value:
            return LATEST
        if not value.isdigit() or int(value) < 1:
            raise ValueError("must be a positive integer or 'latest'")
        return str(int(value))

    @model_validator(mode="after")
    def _identified(self) -> ExecutionRequest:
        if not (self.catalog_id or self.path or self.playbook_id):
            raise ValueError("one of catalog_id, path or playbook_id is required")
        return self

    def playbook_path(self) -> str | None:
        return self.path or self.playbook_id

    def parent(self) -> ExecutionContext:
        """The parent context, nested or flat (nested wins)."""
        nested = self.context or ExecutionContext()
        return ExecutionContext(
            parent_execution_id=nested.parent_execution_id or self.parent_execution_id,
            parent_event_id=nested.parent_event_id or self.parent_event_id,
            parent_step=nested.parent_step or self.parent_step,
        )


class ExecutionResponse(BaseModel):
    """An execution: its playbook, its `status` (`running`, `completed`, `failed`,
    `cancelled`), and once it ended its `result` or `error`."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                EXECUTION_EXAMPLE,
                {**EXECUTION_EXAMPLE, "status": "running", "end_time": None, "progress": 0, "result": None},
            ]
        }
    )

    execution_id: OutId
    id: OutId
    catalog_id: OutId
    path: str
    playbook_id: str
    playbook_name: str
    version: str
    type: ExecutionType
    execution_type: ExecutionType
    status: str
    timestamp: datetime
    start_time: datetime
    end_time: datetime | None = None
    progress: int = 0
    result: Any = None
    error: str | None = None

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> ExecutionResponse:
        path = row["path"]
        return cls(
            execution_id=row["execution_id"],
            id=row["execution_id"],
            catalog_id=row["catalog_id"],
            path=path,
            playbook_id=path,
            playbook_name=path.rsplit("/", 1)[-1],
            version=str(row["version"]),
            type=row["type"],
            execution_type=row["type"],
            status=row["status"],
            timestamp=row["updated_at"],
            start_time=row["start_time"],
            end_time=row["end_time"],
            progress=row["progress"],
            result=row["result"],
            error=row["error"],
        )


class ExecutionEvent(BaseModel):
    """An execution's event as NoETL's clients read it. `node_name` is the step (or the playbook
    for the execution's own events), `duration` is in seconds, `timestamp` and `created_at` are
    the time it happened; `meta` holds the rest (attempt, job id, path, version)."""

    model_config = ConfigDict(json_schema_extra={"examples": [EVENT_EXAMPLE]})

    event_id: OutId
    execution_id: OutId
    event_type: str
    node_id: str | None = None
    node_name: str | None = None
    node_type: str | None = None
    status: str | None = None
    duration: float | None = None
    timestamp: datetime
    created_at: datetime
    context: Any = None
    result: Any = None
    error: str | None = None
    current_index: int | None = None
    current_item: Any = None
    worker_id: str | None = None
    parent_event_id: str | None = None
    parent_execution_id: str | None = None
    meta: dict[str, Any] | None = None

    @classmethod
    def from_row(cls, row: dict[str, Any], execution_id: int) -> ExecutionEvent:
        payload = row["payload"]
        fields = {name: payload.get(name) for name in cls.model_fields if name in payload}
        return cls(
            **fields,
            event_id=row["event_id"],
            execution_id=execution_id,
            event_type=row["type"],
            timestamp=row["created_at"],
            created_at=row["created_at"],
        )


class EventsByExecution(BaseModel):
    """An execution's events, oldest first."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"execution_id": "1", "events": [EVENT_EXAMPLE]}]}
    )

    execution_id: OutId
    events: list[ExecutionEvent]


class EventError(BaseModel):
    """An action's error: the step it failed in, and when."""

    model_config = ConfigDict(json_schema_extra={"examples": [EVENT_ERROR_EXAMPLE]})

    node_name: str | None
    error: str | None
    created_at: datetime


class Summary(BaseModel):
    """An execution's events counted by type, with its last action errors."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [SUMMARY_EXAMPLE, {**SUMMARY_EXAMPLE, "errors": [EVENT_ERROR_EXAMPLE]}]
        }
    )

    execution_id: OutId
    counts: dict[str, int] = Field(description="events by type")
    skipped: int = 0
    errors: list[EventError] = Field(description="the last three action errors, newest first")


class ExecutionSummary(BaseModel):
    """`GET /api/events/summary/{execution_id}`, in the original's envelope."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"status": "ok", "summary": SUMMARY_EXAMPLE}]})

    status: Literal["ok"] = "ok"
    summary: Summary


class ExecutionDetail(ExecutionResponse):
    """An execution with its workload, its parent (a sub-playbook's) and its events."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    **EXECUTION_EXAMPLE,
                    "workload": {"message": "Hi there"},
                    "parent_execution_id": None,
                    "parent_event_id": None,
                    "parent_step": None,
                    "metadata": None,
                    "events": [EVENT_EXAMPLE],
                }
            ]
        }
    )

    workload: dict[str, Any]
    parent_execution_id: str | None = None
    parent_event_id: str | None = None
    parent_step: str | None = None
    metadata: dict[str, Any] | None = None
    events: list[ExecutionEvent] = Field(default_factory=list)


class ExecutionList(BaseModel):
    """Executions, newest first, a page at a time."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"items": [EXECUTION_EXAMPLE], "count": 1, "limit": 50, "offset": 0}]}
    )

    items: list[ExecutionResponse]
    count: int
    limit: int
    offset: int


class ExecutionQuery(BaseModel):
    status: str | None = None
    path: str | None = None
    limit: int = Field(50, ge=1, le=1000)
    offset: int = Field(0, ge=0)


class CancelRequest(BaseModel):
    """Why the execution is cancelled (optional): recorded in its `execution_cancelled` event."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"reason": "no longer needed"}, {}]})

    reason: str | None = Field(None, max_length=1000)


class CancelCommand(BaseModel):
    execution_id: IdStr
    reason: str | None = None
