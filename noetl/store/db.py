"""Connection pools, opened with care and closed with the process."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, TypeVar

from psycopg import AsyncConnection
from psycopg.rows import AsyncRowFactory, dict_row
from psycopg_pool import AsyncConnectionPool

T = TypeVar("T")


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


async def pages(
    conn: AsyncConnection, query: str, params: dict[str, Any], rows: AsyncRowFactory[T], size: int
) -> AsyncIterator[list[T]]:
    """The rows of one query, `size` at a time, through a server-side cursor: one snapshot, and
    never more than a page of them in memory."""
    async with conn.transaction(), conn.cursor(name="pages", row_factory=rows) as cur:
        await cur.execute(query, params)
        while page := await cur.fetchmany(size):
            yield page
