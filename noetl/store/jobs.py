"""SQL for jobs: every run of a step (and every loop item) of an execution, written by the broker.

Every change is guarded by the job's state: finished jobs never change again. Ids are drawn before
the rows are written (`allocate`), so the jobs and events of one batch can refer to each other.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from psycopg import AsyncConnection
from psycopg.rows import class_row
from psycopg.types.json import Jsonb

from noetl.contracts.jobs import FINISHED, JobKind, JobStatus, StepReport
from noetl.store.outbox import NewEvent

ALLOCATE = """
SELECT ARRAY(SELECT nextval(pg_get_serial_sequence('jobs', 'job_id'))
             FROM generate_series(1, %s)) AS jobs,
       ARRAY(SELECT nextval(pg_get_serial_sequence('events', 'event_id'))
             FROM generate_series(1, %s)) AS events
"""


async def allocate(conn: AsyncConnection, jobs: int, events: int) -> tuple[list[int], list[int]]:
    """Ids for `jobs` new jobs and `events` new events, in one round trip."""
    cur = await conn.execute(ALLOCATE, (jobs, events))
    row = await cur.fetchone()
    assert row is not None
    return row["jobs"], row["events"]


@dataclass(eq=False, slots=True)
class NewJob:
    """A job the broker made in this transaction; `job_id` is set when ids are drawn. `cause`,
    `loop` and `start_event` may be objects of the same batch."""

    execution_id: int
    step: str
    kind: JobKind
    status: JobStatus
    node_type: str
    cause: NewJob | int | None
    start_event: NewEvent | None = None
    loop: NewJob | int | None = None
    idx: int | None = None
    item: Any = None
    child_execution_id: int | None = None
    total: int | None = None
    context: dict[str, Any] | None = None
    result: Any = None
    credentials: list[str] = field(default_factory=list)
    secret: bool = False
    job_id: int | None = None
    dispatched_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    @property
    def cause_id(self) -> int | None:
        return self.cause.job_id if isinstance(self.cause, NewJob) else self.cause


def _id(ref: NewJob | NewEvent | int | None) -> int | None:
    return ref if ref is None or isinstance(ref, int) else ref.job_id if isinstance(ref, NewJob) else ref.id


_COLUMNS = (
    ("job_id", "bigint"),
    ("execution_id", "bigint"),
    ("step", "text"),
    ("kind", "text"),
    ("status", "text"),
    ("node_type", "text"),
    ("cause_job_id", "bigint"),
    ("start_event_id", "bigint"),
    ("loop_job_id", "bigint"),
    ("idx", "int"),
    ("item", "jsonb"),
    ("child_execution_id", "bigint"),
    ("total", "int"),
    ("context", "jsonb"),
    ("result", "jsonb"),
    ("credentials", "text[]"),
    ("secret", "bool"),
    ("dispatched_at", "timestamptz"),
)
_NAMES = ", ".join(name for name, _ in _COLUMNS)

# Control jobs are done when written, loops and sub-playbooks run from then on; jobs for workers
# start their clock when a worker runs them.
INSERT = f"""
INSERT INTO jobs ({_NAMES}, started_at, ended_at) OVERRIDING SYSTEM VALUE
SELECT {_NAMES},
       CASE WHEN u.status IN ('completed', 'running') THEN now() END,
       CASE WHEN u.status = 'completed' THEN now() END
FROM jsonb_to_recordset(%s::jsonb) AS u({", ".join(f"{n} {t}" for n, t in _COLUMNS)})
"""


async def insert(conn: AsyncConnection, jobs: list[NewJob]) -> None:
    """Write jobs whose ids are drawn (nothing is read back: it can share a pipeline)."""
    if not jobs:
        return
    rows = [
        {
            "job_id": job.job_id,
            "execution_id": job.execution_id,
            "step": job.step,
            "kind": job.kind,
            "status": job.status,
            "node_type": job.node_type,
            "cause_job_id": job.cause_id,
            "start_event_id": _id(job.start_event),
            "loop_job_id": _id(job.loop),
            "idx": job.idx,
            "item": job.item,
            "child_execution_id": job.child_execution_id,
            "total": job.total,
            "context": job.context,
            "result": job.result,
            "credentials": job.credentials,
            "secret": job.secret,
            "dispatched_at": job.dispatched_at.isoformat(),
        }
        for job in jobs
    ]
    await conn.execute(INSERT, (Jsonb(rows),))


@dataclass(frozen=True, slots=True)
class ExecutionState:
    """What the broker reads of a locked execution (its workload only when it needs a context),
    with the counts it keeps on the row."""

    execution_id: int
    catalog_id: int
    path: str
    version: int
    status: str
    parent_execution_id: str | None
    steps: int
    active: int
    done: int
    depth: int


@dataclass(frozen=True, slots=True)
class JobState:
    job_id: int
    execution_id: int
    step: str
    kind: JobKind
    status: JobStatus
    node_type: str | None
    delivery: int
    attempt: int
    cause_job_id: int | None
    start_event_id: int | None
    loop_job_id: int | None
    idx: int | None
    item: Any
    child_execution_id: int | None
    started_at: datetime | None
    dispatched_at: datetime


# Executions are locked in id order, then their jobs: every consumer takes locks in one order,
# so two batches never deadlock.
LOCK_EXECUTIONS = """
SELECT execution_id, catalog_id, path, version, status, parent_execution_id, steps, active, done, depth
FROM executions WHERE execution_id = ANY(%s) ORDER BY execution_id FOR UPDATE
"""
_JOB_COLUMNS = """job_id, execution_id, step, kind, status, node_type, delivery, attempt, cause_job_id,
       start_event_id, loop_job_id, idx, item, child_execution_id, started_at, dispatched_at"""
LOCK_JOBS = f"SELECT {_JOB_COLUMNS} FROM jobs WHERE job_id = ANY(%s) ORDER BY job_id FOR UPDATE"
LOCK_WAITING = (
    f"SELECT {_JOB_COLUMNS} FROM jobs WHERE child_execution_id = ANY(%s) ORDER BY job_id FOR UPDATE"
)


async def lock_executions(conn: AsyncConnection, execution_ids: list[int]) -> dict[int, ExecutionState]:
    """The executions, locked: an execution's commands apply one at a time, across consumers."""
    cur = conn.cursor(row_factory=class_row(ExecutionState))
    await cur.execute(LOCK_EXECUTIONS, (sorted(set(execution_ids)),))
    return {row.execution_id: row for row in await cur.fetchall()}


async def lock_jobs(conn: AsyncConnection, job_ids: list[int]) -> dict[int, JobState]:
    """Jobs, locked (after their executions)."""
    cur = conn.cursor(row_factory=class_row(JobState))
    await cur.execute(LOCK_JOBS, (sorted(set(job_ids)),))
    return {row.job_id: row for row in await cur.fetchall()}


async def lock_waiting(conn: AsyncConnection, child_execution_ids: list[int]) -> dict[int, JobState]:
    """The jobs (playbook steps, or loop items) that wait for these child executions, by child."""
    cur = conn.cursor(row_factory=class_row(JobState))
    await cur.execute(LOCK_WAITING, (sorted(set(child_execution_ids)),))
    return {row.child_execution_id: row for row in await cur.fetchall() if row.child_execution_id}


ADVANCE = """
UPDATE executions e
SET steps = u.steps, active = u.active, done = u.done, progress = COALESCE(u.progress, e.progress),
    updated_at = now()
FROM jsonb_to_recordset(%s::jsonb) AS u(execution_id bigint, steps int, active int, done int, progress int)
WHERE e.execution_id = u.execution_id
"""


async def advance(conn: AsyncConnection, counts: list[dict[str, Any]]) -> None:
    """Write the broker's counts of each execution (`execution_id`, `steps`, `active`, `done`,
    `progress`)."""
    if counts:
        await conn.execute(ADVANCE, (Jsonb(counts),))


@dataclass(slots=True)
class JobUpdate:
    """What becomes of a job in a batch: a start told, or its end (`ended`). Several updates
    of one job in one batch fold into one (`merge`), since one UPDATE changes a row once."""

    job_id: int
    status: JobStatus
    ended: bool = False
    delivery: int | None = None
    attempt: int | None = None
    worker: str | None = None
    result: Any = None
    error: str | None = None
    started_at: datetime | None = None
    ended_at: datetime | None = None

    @classmethod
    def of(cls, job_id: int, status: JobStatus, report: StepReport | None = None, **fields: Any) -> JobUpdate:
        if report is not None:
            fields.update(
                delivery=report.delivery,
                attempt=report.attempt,
                worker=report.worker,
                started_at=report.started_at,
                ended_at=report.ended_at,
            )
        return cls(job_id, status, ended=status in FINISHED, **fields)

    def merge(self, later: JobUpdate) -> JobUpdate:
        return JobUpdate(
            job_id=self.job_id,
            status=later.status,
            ended=later.ended,
            delivery=later.delivery or self.delivery,
            attempt=later.attempt or self.attempt,
            worker=later.worker or self.worker,
            result=later.result,
            error=later.error,
            started_at=self.started_at or later.started_at,
            ended_at=later.ended_at,
        )

    def row(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id,
            "status": self.status,
            "ended": self.ended,
            "delivery": self.delivery,
            "attempt": self.attempt,
            "worker": self.worker,
            "result": self.result,
            "error": self.error,
            "started_at": self.started_at.isoformat() if self.started_at else None,
            "ended_at": self.ended_at.isoformat() if self.ended_at else None,
        }


UPDATE_JOBS = """
UPDATE jobs j SET
    status = u.status,
    delivery = COALESCE(u.delivery, j.delivery),
    attempt = COALESCE(u.attempt, j.attempt),
    worker = COALESCE(u.worker, j.worker),
    result = CASE WHEN u.ended THEN u.result ELSE j.result END,
    error = CASE WHEN u.ended THEN u.error ELSE j.error END,
    started_at = COALESCE(j.started_at, u.started_at, now()),
    ended_at = CASE WHEN u.ended THEN COALESCE(u.ended_at, now()) ELSE j.ended_at END
FROM jsonb_to_recordset(%s::jsonb) AS u(
    job_id bigint, status text, ended bool, delivery int, attempt int, worker text, result jsonb, error text,
    started_at timestamptz, ended_at timestamptz)
WHERE j.job_id = u.job_id
"""


async def update(conn: AsyncConnection, updates: list[JobUpdate]) -> None:
    """Write a batch's job updates (one per job) in one statement."""
    if updates:
        await conn.execute(UPDATE_JOBS, (Jsonb([u.row() for u in updates]),))


async def abandon_active(conn: AsyncConnection, execution_id: int) -> list[int]:
    """An execution that ended: its live and pending jobs will never count. Returns the child
    executions that were still being waited for."""
    cur = await conn.execute(
        "UPDATE jobs SET status = 'abandoned', ended_at = now() "
        "WHERE execution_id = %s AND status IN ('pending', 'queued', 'running') RETURNING child_execution_id",
        (execution_id,),
    )
    return [row["child_execution_id"] for row in await cur.fetchall() if row["child_execution_id"]]


# ----------------------------------------------------------------------------- what the broker reads


CONTEXTS = """
SELECT e.execution_id, e.workload,
       COALESCE((SELECT jsonb_object_agg(r.step, r.result) FROM (
           SELECT DISTINCT ON (step) step, result FROM jobs j
           WHERE j.execution_id = e.execution_id AND j.loop_job_id IS NULL AND j.status = 'completed'
           ORDER BY step, job_id DESC) r), '{}'::jsonb) AS results
FROM executions e WHERE e.execution_id = ANY(%s)
"""


async def contexts(
    conn: AsyncConnection, execution_ids: list[int]
) -> dict[int, tuple[dict[str, Any], dict[str, Any]]]:
    """For each execution: its workload, and each step's result from its latest completed run."""
    cur = await conn.execute(CONTEXTS, (execution_ids,))
    return {row["execution_id"]: (row["workload"], row["results"]) for row in await cur.fetchall()}


async def step_result(conn: AsyncConnection, execution_id: int, step: str) -> Any:
    """A step's result from its latest completed run (None if it has none)."""
    cur = await conn.execute(
        "SELECT result FROM jobs WHERE execution_id = %s AND step = %s AND loop_job_id IS NULL "
        "AND status = 'completed' ORDER BY job_id DESC LIMIT 1",
        (execution_id, step),
    )
    row = await cur.fetchone()
    return None if row is None else row["result"]


async def latest_runs(conn: AsyncConnection, execution_id: int, steps: list[str]) -> dict[str, int]:
    """The latest run (job id) of each of `steps` that has run."""
    cur = await conn.execute(
        "SELECT step, max(job_id) AS job_id FROM jobs "
        "WHERE execution_id = %s AND loop_job_id IS NULL AND step = ANY(%s) GROUP BY step",
        (execution_id, steps),
    )
    return {row["step"]: row["job_id"] for row in await cur.fetchall()}


ANCESTOR = """
WITH RECURSIVE up(job_id, cause_job_id) AS (
    SELECT job_id, cause_job_id FROM jobs WHERE job_id = %(from)s
    UNION ALL
    SELECT j.job_id, j.cause_job_id FROM jobs j JOIN up ON j.job_id = up.cause_job_id
    WHERE up.cause_job_id >= %(ancestor)s
)
SELECT EXISTS (SELECT 1 FROM up WHERE job_id = %(ancestor)s) AS found
"""


async def is_ancestor(conn: AsyncConnection, ancestor: int, of: int) -> bool:
    """Whether job `ancestor` led to job `of` (ids only grow along what caused what, so the walk
    up stops below `ancestor`)."""
    cur = await conn.execute(ANCESTOR, {"from": of, "ancestor": ancestor})
    row = await cur.fetchone()
    return bool(row and row["found"])


# ----------------------------------------------------------------------------- loops


@dataclass(frozen=True, slots=True)
class LoopState:
    job_id: int
    step: str
    cause_job_id: int | None
    start_event_id: int | None
    started_at: datetime | None
    done: int
    total: int
    context: dict[str, Any] | None


async def items_done(conn: AsyncConnection, loop_job_id: int, count: int) -> LoopState:
    """Count `count` more finished items of a loop (none: just read it)."""
    cur = conn.cursor(row_factory=class_row(LoopState))
    await cur.execute(
        "UPDATE jobs SET done = done + %s WHERE job_id = %s "
        "RETURNING job_id, step, cause_job_id, start_event_id, started_at, done, total, context",
        (count, loop_job_id),
    )
    row = await cur.fetchone()
    assert row is not None
    return row


@dataclass(frozen=True, slots=True)
class PendingItem:
    job_id: int
    idx: int
    item: Any
    credentials: list[str]
    dispatched_at: datetime


# A child waits running; an action waits queued for a worker.
DISPATCH_ITEMS = """
UPDATE jobs SET status = CASE WHEN kind = 'playbook' THEN 'running' ELSE 'queued' END, dispatched_at = now()
WHERE job_id = ANY(ARRAY(
    SELECT job_id FROM jobs WHERE loop_job_id = %s AND status = 'pending' ORDER BY idx LIMIT %s
))
RETURNING job_id, idx, item, credentials, dispatched_at
"""


async def dispatch_items(conn: AsyncConnection, loop_job_id: int, count: int) -> list[PendingItem]:
    """The loop's next `count` pending items, now queued, in item order."""
    cur = conn.cursor(row_factory=class_row(PendingItem))
    await cur.execute(DISPATCH_ITEMS, (loop_job_id, count))
    return sorted(await cur.fetchall(), key=lambda item: item.idx)


async def waits_for(conn: AsyncConnection, job_id: int, child_execution_id: int) -> None:
    await conn.execute(
        "UPDATE jobs SET child_execution_id = %s WHERE job_id = %s", (child_execution_id, job_id)
    )


async def item_results(conn: AsyncConnection, loop_job_id: int) -> list[Any]:
    """A finished loop's item results, in item order (each of its jobs holds a list of them)."""
    cur = await conn.execute(
        "SELECT result FROM jobs WHERE loop_job_id = %s AND idx IS NOT NULL ORDER BY idx", (loop_job_id,)
    )
    return [result for row in await cur.fetchall() for result in (row["result"] or [])]
