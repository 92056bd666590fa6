"""A playbook's steps as typed models, one per step type, built once when a playbook is registered.

What NoETL playbooks write in many spellings arrives here in one: the step's input is `input`
(from `input`, `payload`, `with`, `args`, `params` and `data`, later spellings winning), code and
SQL are plain text (`code_b64`, `command_b64`, `sql` decoded or renamed), `auth` holds what
`credential(s)` said, and a workbook step is already the task it names. Workers receive these
models (dumped) in their jobs and validate them again.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


class StepType(StrEnum):
    PYTHON = "python"
    HTTP = "http"
    POSTGRES = "postgres"
    DUCKDB = "duckdb"
    SAVE = "save"
    SECRETS = "secrets"
    PLAYBOOK = "playbook"
    ITERATOR = "iterator"
    START = "start"
    END = "end"
    ROUTER = "router"


# Run by a worker pool; the broker runs the others (sub-playbooks, loops, control steps).
WORKER_TYPES = frozenset(
    {StepType.PYTHON, StepType.HTTP, StepType.POSTGRES, StepType.DUCKDB, StepType.SAVE, StepType.SECRETS}
)
CONTROL_TYPES = frozenset({StepType.START, StepType.END, StepType.ROUTER})


class Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


# --------------------------------------------------------------------------- transitions


class Next(Model):
    """One target: taken when `when` renders truthy (or has none); `payload` overrides the
    target's own input keys."""

    step: str
    when: str | bool | None = None
    payload: dict[str, Any] | None = None


class Branch(Model):
    """`{when, then: [...], else: [...]}`: `then` when the condition holds, `else` otherwise."""

    when: str | bool
    then: tuple[Next, ...] = ()
    otherwise: tuple[Next, ...] = ()


class Otherwise(Model):
    """A lone `{else: [...]}` item: taken, like items without `when`, when no condition held."""

    otherwise: tuple[Next, ...]


Transition = Next | Branch | Otherwise


# --------------------------------------------------------------------------- parts of a step


class Retry(Model):
    max_attempts: int = Field(1, ge=1, le=100)
    delay: float = Field(0.0, ge=0, le=3600)
    backoff: float = Field(1.0, ge=1, le=10, description="each delay is the previous one times this")

    def delay_before(self, attempt: int) -> float:
        """The wait before `attempt` (2, 3, ...)."""
        return self.delay * self.backoff ** max(0, attempt - 2)


SaveKind = Literal["event", "postgres", "python", "duckdb", "http"]


class Save(Model):
    """Where a step's result goes after it ran: the event log, a table, a script, an endpoint."""

    storage: SaveKind = "event"
    data: Any = None  # default: the step's result
    table: str | None = None
    mode: Literal["insert", "upsert"] = "insert"
    key: tuple[str, ...] = ()
    statement: str | None = None
    params: dict[str, Any] | None = None
    auth: Any = None
    code: str | None = None  # python storage
    commands: str | None = None  # duckdb storage
    database: str | None = None  # duckdb storage
    endpoint: str | None = None  # http storage
    method: str = "POST"
    headers: dict[str, Any] | None = None


class Step(Model):
    """What every step has."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    desc: str | None = None
    next: tuple[Transition, ...] = ()
    input: dict[str, Any] | str = Field(default_factory=dict)  # a str is one template of a mapping
    auth: Any = None
    save: Save | None = None
    retry: Retry = Retry()
    timeout: float | None = Field(None, gt=0)
    result: Any = None
    task: str | None = None  # the workbook task this step runs, if it is a workbook step

    @property
    def worker(self) -> bool:
        return self.type in WORKER_TYPES

    def templates(self) -> list[Any]:
        """Everything in this step that a worker renders (its input and action fields)."""
        return [self.input, self.auth, self.save.model_dump() if self.save else None]


class ControlStep(Step):
    """`start`, `end` and routers: evaluated by the broker; `result` is the step's result."""

    type: Literal[StepType.START, StepType.END, StepType.ROUTER]


class PythonStep(Step):
    type: Literal[StepType.PYTHON]
    code: str
    wants_context: bool = False  # main() takes `context`, `**kwargs` or `input_data`, or reads `context`


class HttpStep(Step):
    type: Literal[StepType.HTTP]
    method: str = "GET"
    url: str
    headers: dict[str, Any] | None = None
    params: dict[str, Any] | None = None
    body: Any = None  # an explicit JSON body (`json`); otherwise the input, for methods with a body
    raise_for_status: bool = True

    @field_validator("method")
    @classmethod
    def _upper(cls, value: str) -> str:
        return value.strip().upper()

    def templates(self) -> list[Any]:
        return [*super().templates(), self.url, self.headers, self.params, self.body]


class SqlStep(Step):
    command: str

    def templates(self) -> list[Any]:
        return [*super().templates(), self.command]


class PostgresStep(SqlStep):
    type: Literal[StepType.POSTGRES]


class DuckdbStep(SqlStep):
    type: Literal[StepType.DUCKDB]
    database: str | None = None


class SaveStep(Step):
    """A step that only saves: its `save` is what it does."""

    type: Literal[StepType.SAVE]


class SecretsStep(Step):
    type: Literal[StepType.SECRETS]
    provider: str = "credential"
    secret_name: str
    field: str | None = None
    project_id: str | None = None

    def templates(self) -> list[Any]:
        return [*super().templates(), self.secret_name, self.provider, self.field]


class PlaybookStep(Step):
    """A sub-playbook: a child execution whose result becomes this step's."""

    type: Literal[StepType.PLAYBOOK]
    path: str
    version: int | Literal["latest"] = "latest"
    return_step: str | None = None


# Steps an iterator may run per item.
ItemTask = Annotated[
    PythonStep | HttpStep | PostgresStep | DuckdbStep | SaveStep | SecretsStep | PlaybookStep,
    Field(discriminator="type"),
]


class IteratorStep(Step):
    """A loop over a collection: each item runs `task`, results aggregated in item order."""

    type: Literal[StepType.ITERATOR]
    collection: Any
    element: str
    item: ItemTask = Field(description="the task run per item")
    mode: Literal["sequential", "async"] = "sequential"
    concurrency: int | None = Field(None, ge=1, le=10_000)
    where: str | None = None
    order_by: str | None = None
    limit: int | None = Field(None, ge=0)
    chunk: int | None = Field(None, ge=1)
    enumerate: bool = False

    @property
    def in_flight(self) -> int:
        """Items running at once: `concurrency` when async (default 8), else one."""
        return (self.concurrency or 8) if self.mode == "async" else 1

    def templates(self) -> list[Any]:
        return [*super().templates(), self.collection, self.where, self.order_by]


AnyStep = Annotated[
    ControlStep
    | PythonStep
    | HttpStep
    | PostgresStep
    | DuckdbStep
    | SaveStep
    | SecretsStep
    | PlaybookStep
    | IteratorStep,
    Field(discriminator="type"),
]
