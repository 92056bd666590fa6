"""SQL for jobs. Every change is guarded by the job's state: terminal jobs never change again."""

from __future__ import annotations

from typing import Any

from psycopg import AsyncConnection, AsyncCursor
from psycopg.types.json import Jsonb

from noetl.contracts.jobs import StepReport

FINISHED = frozenset({"completed", "failed", "abandoned"})


# Identities are drawn in the order of the sorted SELECT, so ordering by job_id gives the rows
# back in the order they were asked for.
INSERT_MANY = """
WITH added AS (
    INSERT INTO jobs (execution_id, step)
    SELECT u.execution_id, u.step
    FROM ROWS FROM (jsonb_to_recordset(%s::jsonb) AS (execution_id bigint, step text))
         WITH ORDINALITY AS u(execution_id, step, ord)
    ORDER BY u.ord
    RETURNING job_id, dispatched_at
)
SELECT job_id, dispatched_at FROM added ORDER BY job_id
"""


async def add(conn: AsyncConnection, jobs: list[tuple[int, str]]) -> list[dict[str, Any]]:
    """Jobs as (execution_id, step), in one statement; their rows come back in the same order."""
    if not jobs:
        return []
    batch = [{"execution_id": execution_id, "step": step} for execution_id, step in jobs]
    cur = await conn.execute(INSERT_MANY, (Jsonb(batch),))
    return await cur.fetchall()


# The execution and the job, locked together, in one statement: reports about one execution
# apply one at a time, across consumers.
LOCK_WITH_EXECUTION = """
SELECT j.job_id, j.status AS job_status, j.delivery, j.attempt AS job_attempt, j.dispatched_at, e.*
FROM jobs j JOIN executions e ON e.execution_id = j.execution_id
WHERE j.job_id = %s AND j.execution_id = %s
FOR UPDATE OF e, j
"""


async def lock_with_execution(
    conn: AsyncConnection, job_id: int, execution_id: int
) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """(job, execution), or None when the job is not one of that execution's."""
    cur = await conn.execute(LOCK_WITH_EXECUTION, (job_id, execution_id))
    row = await cur.fetchone()
    if row is None:
        return None
    job = {
        "job_id": row.pop("job_id"),
        "status": row.pop("job_status"),
        "delivery": row.pop("delivery"),
        "attempt": row.pop("job_attempt"),
        "dispatched_at": row.pop("dispatched_at"),
    }
    return job, row


async def started(conn: AsyncConnection, job_id: int, *, delivery: int, attempt: int, worker: str) -> None:
    await conn.execute(
        "UPDATE jobs SET status = 'running', delivery = %s, attempt = %s, worker = %s, "
        "started_at = COALESCE(started_at, now()) WHERE job_id = %s",
        (delivery, attempt, worker, job_id),
    )


async def finished(conn: AsyncConnection, job_id: int, *, status: str, report: StepReport) -> None:
    await conn.execute(
        "UPDATE jobs SET status = %s, delivery = %s, attempt = %s, worker = %s, result = %s, error = %s, "
        "started_at = COALESCE(started_at, now()), ended_at = now() WHERE job_id = %s",
        (status, report.delivery, report.attempt, report.worker, Jsonb(report.result), report.error, job_id),
    )


async def abandon_active(conn: AsyncConnection, execution_id: int) -> None:
    """An execution that ended: its queued and running jobs will never count."""
    await conn.execute(
        "UPDATE jobs SET status = 'abandoned', ended_at = now() "
        "WHERE execution_id = %s AND status IN ('queued', 'running')",
        (execution_id,),
    )


async def of_execution(conn: AsyncConnection, execution_id: int) -> AsyncCursor[dict[str, Any]]:
    """Every job of an execution (step, status, result), oldest first. The cursor is returned
    unread so the query can share a pipeline; fetch it after the pipeline syncs."""
    return await conn.execute(
        "SELECT step, status, result FROM jobs WHERE execution_id = %s ORDER BY job_id", (execution_id,)
    )
