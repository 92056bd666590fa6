"""SQL for jobs. Every change is guarded by the job's state: terminal jobs never change again."""

from __future__ import annotations

from typing import Any

from psycopg import AsyncConnection
from psycopg.types.json import Jsonb

from noetl.contracts.jobs import StepReport

FINISHED = frozenset({"completed", "failed", "abandoned"})


async def add(conn: AsyncConnection, execution_id: int, step: str) -> dict[str, Any]:
    cur = await conn.execute(
        "INSERT INTO jobs (execution_id, step) VALUES (%s, %s) RETURNING job_id, dispatched_at",
        (execution_id, step),
    )
    row = await cur.fetchone()
    assert row is not None
    return row


# The execution and the job, locked together, in one statement: reports about one execution
# apply one at a time, across consumers.
LOCK_WITH_EXECUTION = """
SELECT j.job_id, j.status AS job_status, j.delivery, j.dispatched_at, e.*
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
    job = {"job_id": row.pop("job_id"), "status": row.pop("job_status"), "delivery": row.pop("delivery")}
    job["dispatched_at"] = row.pop("dispatched_at")
    return job, row


async def started(conn: AsyncConnection, job_id: int, *, delivery: int, attempt: int, worker: str) -> None:
    await conn.execute(
        "UPDATE jobs SET status = 'running', delivery = %s, attempt = %s, worker = %s, "
        "started_at = COALESCE(started_at, now()) WHERE job_id = %s",
        (delivery, attempt, worker, job_id),
    )


async def finished(conn: AsyncConnection, job_id: int, *, status: str, report: StepReport) -> None:
    await conn.execute(
        "UPDATE jobs SET status = %s, attempt = %s, worker = %s, result = %s, error = %s, ended_at = now() "
        "WHERE job_id = %s",
        (status, report.attempt, report.worker, Jsonb(report.result), report.error, job_id),
    )


async def abandon_active(conn: AsyncConnection, execution_id: int) -> None:
    """An execution that ended: its queued and running jobs will never count."""
    await conn.execute(
        "UPDATE jobs SET status = 'abandoned', ended_at = now() "
        "WHERE execution_id = %s AND status IN ('queued', 'running')",
        (execution_id,),
    )


async def counts(conn: AsyncConnection, execution_id: int) -> tuple[int, int]:
    """(active, completed) jobs of an execution."""
    cur = await conn.execute(
        "SELECT count(*) FILTER (WHERE status IN ('queued', 'running')) AS active, "
        "count(*) FILTER (WHERE status = 'completed') AS completed FROM jobs WHERE execution_id = %s",
        (execution_id,),
    )
    row = await cur.fetchone()
    assert row is not None
    return int(row["active"]), int(row["completed"])


async def results(conn: AsyncConnection, execution_id: int) -> list[dict[str, Any]]:
    """Finished steps' results, oldest first (a later run of a step wins)."""
    cur = await conn.execute(
        "SELECT step, result FROM jobs WHERE execution_id = %s AND status = 'completed' ORDER BY job_id",
        (execution_id,),
    )
    return await cur.fetchall()
