"""The baseline for executions: what the original NoETL API did per `POST /api/executions/run`.

One FastAPI route that validates the same `ExecutionRequest` body as the facade, then, on one pooled
psycopg connection and in one transaction: looks the playbook up in the catalog (by catalog_id, or
by path and version, `latest` by default), inserts the execution record (the same columns, with the
same workload computed the same way) and inserts its `execution_start` event, and commits. It
answers with the same `ExecutionResponse` shape as the facade (404 when the catalog entry is not
there).

It writes to `baseline_executions` and `baseline_events`, copies of `executions` and `events` made
at start-up with `LIKE ... INCLUDING ALL` (the same columns, defaults, identity and indexes) plus the
same foreign key to `catalog`. They are separate tables so that the facade's outbox relay, which is
woken by a trigger on `events`, does not spend CPU publishing the baseline's events during the
baseline's rounds. It reads the real `catalog` table, the same one the facade's consumer reads.

It is given the advantages the original could fairly have had: psycopg's automatic server-side
prepare, `dict_row` rows, and a direct `JSONResponse` (no response-model re-validation).

Run it the way the bench does:

    BENCH_BASELINE_DSN=postgresql://... uvicorn bench.baseline_executions:create_app --factory \
        --loop uvloop --http httptools --no-access-log
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse
from psycopg import AsyncConnection
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from noetl.bus import subjects
from noetl.contracts.execution import ExecutionRequest, ExecutionResponse
from noetl.playbook.document import workload

DSN_ENV = "BENCH_BASELINE_DSN"
POOL_SIZE_ENV = "BENCH_BASELINE_POOL_SIZE"
DEFAULT_POOL_SIZE = 16
RUN_PATH = "/api/executions/run"

SCHEMA = """
CREATE TABLE IF NOT EXISTS baseline_executions (LIKE executions INCLUDING ALL);
CREATE TABLE IF NOT EXISTS baseline_events (LIKE events INCLUDING ALL);
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_constraint WHERE conname = 'baseline_executions_catalog_fk') THEN
        ALTER TABLE baseline_executions ADD CONSTRAINT baseline_executions_catalog_fk
            FOREIGN KEY (catalog_id) REFERENCES catalog (catalog_id);
    END IF;
END
$$;
"""

CATALOG_COLUMNS = "catalog_id, path, version, payload"
BY_ID = f"SELECT {CATALOG_COLUMNS} FROM catalog WHERE catalog_id = %s"
BY_PATH_LATEST = f"SELECT {CATALOG_COLUMNS} FROM catalog WHERE path = %s ORDER BY version DESC LIMIT 1"
BY_PATH_VERSION = f"SELECT {CATALOG_COLUMNS} FROM catalog WHERE path = %s AND version = %s"

INSERT_EXECUTION = """
INSERT INTO baseline_executions (catalog_id, path, version, type, status, workload, parameters, merge,
                                 parent_execution_id, parent_event_id, parent_step, metadata)
VALUES (%s, %s, %s, %s, 'running', %s, %s, %s, %s, %s, %s, %s)
RETURNING *
"""

INSERT_EVENT = "INSERT INTO baseline_events (type, subject, entity, payload) VALUES (%s, %s, %s, %s)"


def _numeric(value: str | None) -> int | None:
    return int(value) if value and value.isdigit() and len(value) < 19 else None


async def _lookup(conn: AsyncConnection[Any], request: ExecutionRequest) -> dict[str, Any] | str:
    if request.catalog_id:
        catalog_id = _numeric(request.catalog_id)
        row = None
        if catalog_id is not None:
            row = await (await conn.execute(BY_ID, (catalog_id,))).fetchone()
        return row or f"catalog entry not found: catalog_id {request.catalog_id!r}"
    path = (request.playbook_path() or "").strip("/")
    if request.version == "latest":
        cur = await conn.execute(BY_PATH_LATEST, (path,))
    else:
        cur = await conn.execute(BY_PATH_VERSION, (path, int(request.version)))
    row = await cur.fetchone()
    return row or f"catalog entry not found: path {path!r}, version {request.version}"


def create_app(dsn: str | None = None, pool_size: int | None = None) -> FastAPI:
    dsn = dsn or os.environ.get(DSN_ENV) or os.environ.get("NOETL_PG_DSN")
    if not dsn:
        raise RuntimeError(f"the baseline needs a database: set {DSN_ENV}")
    size = pool_size or int(os.environ.get(POOL_SIZE_ENV, DEFAULT_POOL_SIZE))

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with await AsyncConnection.connect(dsn, autocommit=True) as conn:
            await conn.execute(SCHEMA)
        pool = AsyncConnectionPool(
            dsn,
            min_size=size,
            max_size=size,
            kwargs={"row_factory": dict_row},
            open=False,
            name="baseline-executions",
        )
        await pool.open(wait=True, timeout=30)
        app.state.pool = pool
        try:
            yield
        finally:
            await pool.close()

    app = FastAPI(title="baseline: catalog lookup, execution and event inserts", lifespan=lifespan)

    @app.post(RUN_PATH, response_model=ExecutionResponse)
    async def run_execution(body: ExecutionRequest) -> JSONResponse:
        pool: AsyncConnectionPool = app.state.pool
        parent = body.parent()
        # One transaction: the pool's connection commits on a clean exit, rolls back on an error.
        async with pool.connection() as conn:
            entry = await _lookup(conn, body)
            if isinstance(entry, str):
                return JSONResponse({"detail": entry}, status_code=404)
            context = workload(entry["payload"], body.parameters, body.merge)
            cur = await conn.execute(
                INSERT_EXECUTION,
                (
                    entry["catalog_id"],
                    entry["path"],
                    entry["version"],
                    body.type,
                    Jsonb(context),
                    Jsonb(body.parameters),
                    body.merge,
                    parent.parent_execution_id,
                    parent.parent_event_id,
                    parent.parent_step,
                    Jsonb(body.metadata) if body.metadata is not None else None,
                ),
            )
            row = await cur.fetchone()
            assert row is not None
            execution_id = str(row["execution_id"])
            await conn.execute(
                INSERT_EVENT,
                (
                    "execution_start",
                    subjects.execution_event(execution_id, "execution_start"),
                    Jsonb({"domain": "execution", "execution_id": execution_id}),
                    Jsonb(
                        {
                            "status": row["status"],
                            "path": row["path"],
                            "version": row["version"],
                            "catalog_id": str(row["catalog_id"]),
                        }
                    ),
                ),
            )
        return JSONResponse(ExecutionResponse.from_row(row).model_dump(mode="json"))

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    return app
