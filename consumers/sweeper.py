"""Liveness: a component silent for longer than the offline threshold is marked offline."""

from __future__ import annotations

import asyncio
import logging

from psycopg_pool import AsyncConnectionPool

from consumers.runtime import event
from noetl.store import runtime as store
from noetl.store.outbox import add_events

log = logging.getLogger(__name__)


async def sweep_once(pool: AsyncConnectionPool, offline_after: float) -> int:
    """One pass; returns how many components this pass marked offline."""
    async with pool.connection() as conn, conn.transaction():
        rows = await store.sweep(conn, offline_after)
        await add_events(
            conn,
            [
                event(
                    r["kind"],
                    r["name"],
                    "offline",
                    runtime_id=str(r["runtime_id"]),
                    last_heartbeat=r["heartbeat"].isoformat() if r["heartbeat"] else None,
                )
                for r in rows
            ],
        )
    if rows:
        log.info("sweeper: marked %d component(s) offline", len(rows))
    return len(rows)


async def run_sweeper(
    pool: AsyncConnectionPool, *, interval: float, offline_after: float, stop: asyncio.Event
) -> None:
    while not stop.is_set():
        try:
            await sweep_once(pool, offline_after)
        except Exception:
            log.exception("sweeper: pass failed; trying again next interval")
        try:
            await asyncio.wait_for(stop.wait(), interval)
        except TimeoutError:
            pass
