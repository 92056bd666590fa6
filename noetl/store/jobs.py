"""SQL for jobs. Every change is guarded by the job's state: terminal jobs never change again."""

from __future__ import annotations

from typing import Any

from psycopg import AsyncConnection
from psycopg.types.json import Jsonb


async def add(conn: AsyncConnection, execution_id: int, step: str) -> dict[str, Any]:
    cur = await conn.execute(
        "INSERT INTO jobs (execution_id, step) VALUES (%s, %s) RETURNING job_id, dispatched_at",
        (execution_id, step),
    )
    row = await cur.fetchone()
    assert row is not None
    return row


async def lock(conn: AsyncConnection, job_id: int) -> dict[str, Any] | None:
    cur = await conn.execute("SELECT * FROM jobs WHERE job_id = %s FOR UPDATE", (job_id,))
    return await cur.fetchone()


async def started(conn: AsyncConnection, job_id: int, *, delivery: int, attempt: int, worker: str) -> None:
    await conn.execute(
        "UPDATE jobs SET status = 'running', delivery = %s, attempt = %s, worker = %s, "
        "started_at = COALESCE(started_at, now()) WHERE job_id = %s",
        (delivery, attempt, worker, job_id),
    )


async def finished(
    conn: AsyncConnection,
    job_id: int,
    *,
    status: str,
    attempt: int,
    worker: str,
    result: Any,
    error: str | None,
) -> None:
    await conn.execute(
        "UPDATE jobs SET status = %s, attempt = %s, worker = %s, result = %s, error = %s, ended_at = now() "
        "WHERE job_id = %s",
        (status, attempt, worker, Jsonb(result), error, job_id),
    )


async def abandon_active(conn: AsyncConnection, execution_id: int) -> None:
    """An execution that ended: its queued and running jobs will never count."""
    await conn.execute(
        "UPDATE jobs SET status = 'abandoned', ended_at = now() "
        "WHERE execution_id = %s AND status IN ('queued', 'running')",
        (execution_id,),
    )


async def active_count(conn: AsyncConnection, execution_id: int) -> int:
    cur = await conn.execute(
        "SELECT count(*) AS n FROM jobs WHERE execution_id = %s AND status IN ('queued', 'running')",
        (execution_id,),
    )
    row = await cur.fetchone()
    return int(row["n"]) if row else 0


async def results(conn: AsyncConnection, execution_id: int) -> list[dict[str, Any]]:
    """Finished steps' results, oldest first (a later run of a step wins)."""
    cur = await conn.execute(
        "SELECT step, result FROM jobs WHERE execution_id = %s AND status = 'completed' ORDER BY job_id",
        (execution_id,),
    )
    return await cur.fetchall()
