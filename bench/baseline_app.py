"""The baseline: what the original NoETL API did for a registration, and nothing more.

One FastAPI route, `POST /api/worker/pool/register`, validating the same body model as the facade,
then one upsert per request on a pooled psycopg connection into the same `runtime_components`
table, answered with the same response shape. Two styles (`BENCH_BASELINE_STYLE`):

- `original` (the default): the original's code path. A pooled connection in a transaction
  (psycopg sends BEGIN, the upsert, COMMIT), a `dict_row` cursor, and the response returned as
  the pydantic model that FastAPI validates and serialises through `response_model`.
- `tuned`: every advantage the original could have had. Autocommit (one round trip), a plain
  cursor, and a `JSONResponse` returned directly (no response-model re-validation).

Both get psycopg's automatic server-side prepare. Run it the way the bench does:

    BENCH_BASELINE_DSN=postgresql://... uvicorn bench.baseline_app:create_app --factory \
        --loop uvloop --http httptools --no-access-log
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse
from psycopg.rows import dict_row, tuple_row
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from noetl.contracts.runtime import RegistrationResponse, WorkerPoolRegistration

DSN_ENV = "BENCH_BASELINE_DSN"
POOL_SIZE_ENV = "BENCH_BASELINE_POOL_SIZE"
DEFAULT_POOL_SIZE = 16
STYLE_ENV = "BENCH_BASELINE_STYLE"
STYLES = ("original", "tuned")

# The original's upsert on (kind, name): re-registering keeps runtime_id, replaces the rest.
UPSERT = """
INSERT INTO runtime_components AS r (kind, name, uri, status, labels, capacity, runtime, heartbeat)
VALUES (%s, %s, %s, %s, %s, %s, %s, now())
ON CONFLICT (kind, name) DO UPDATE SET
    uri = excluded.uri,
    status = excluded.status,
    labels = excluded.labels,
    capacity = excluded.capacity,
    runtime = excluded.runtime,
    heartbeat = now(),
    updated_at = now()
RETURNING r.runtime_id
"""


def create_app(dsn: str | None = None, pool_size: int | None = None, style: str | None = None) -> FastAPI:
    dsn = dsn or os.environ.get(DSN_ENV) or os.environ.get("NOETL_PG_DSN")
    if not dsn:
        raise RuntimeError(f"the baseline needs a database: set {DSN_ENV}")
    size = pool_size or int(os.environ.get(POOL_SIZE_ENV, DEFAULT_POOL_SIZE))
    style = style or os.environ.get(STYLE_ENV, "original")
    if style not in STYLES:
        raise RuntimeError(f"{STYLE_ENV} must be one of {STYLES}, not {style!r}")
    tuned = style == "tuned"

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        pool = AsyncConnectionPool(
            dsn, min_size=size, max_size=size, kwargs={"autocommit": tuned}, open=False, name="baseline"
        )
        await pool.open(wait=True, timeout=30)
        app.state.pool = pool
        try:
            yield
        finally:
            await pool.close()

    app = FastAPI(title=f"baseline ({style}): one upsert per request", lifespan=lifespan)

    @app.post("/api/worker/pool/register", response_model=RegistrationResponse)
    async def register_worker_pool(body: WorkerPoolRegistration) -> Any:
        pool: AsyncConnectionPool = app.state.pool
        params = (
            body.kind,
            body.name,
            body.uri,
            body.status,
            Jsonb(body.labels) if body.labels is not None else None,
            body.capacity,
            Jsonb(body.runtime_metadata()),
        )
        async with (
            pool.connection() as conn,
            conn.cursor(row_factory=tuple_row if tuned else dict_row) as cur,
        ):
            await cur.execute(UPSERT, params)
            row = await cur.fetchone()
            if not tuned:
                await conn.commit()
        assert row is not None
        runtime_id = row[0] if tuned else row["runtime_id"]
        response = RegistrationResponse(
            name=body.name, runtime_id=runtime_id, kind=body.kind, runtime=body.runtime
        )
        return JSONResponse(response.model_dump(mode="json")) if tuned else response

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    return app
