"""Connection pools, opened with care and closed with the process."""

from __future__ import annotations

from psycopg import AsyncConnection
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool


async def open_pool(dsn: str, *, min_size: int = 1, max_size: int = 4) -> AsyncConnectionPool:
    pool = AsyncConnectionPool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        kwargs={"row_factory": dict_row, "autocommit": True},
        open=False,
        name="noetl",
    )
    await pool.open(wait=True, timeout=30)
    return pool


async def connect(dsn: str) -> AsyncConnection:
    return await AsyncConnection.connect(dsn, autocommit=True, row_factory=dict_row)
