"""Run consumers as a process: `noetl consumer <name>`. Copies of one consumer share its work."""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack

from psycopg_pool import AsyncConnectionPool

from consumers import catalog, credentials, execution, offload, queries, runtime
from consumers.base import Domain
from consumers.outbox import run_relay
from consumers.sweeper import run_sweeper
from noetl import metrics
from noetl.bus import subjects
from noetl.bus.connection import Bus, nats_options
from noetl.children import notify_ready
from noetl.reach import probe_nats, probe_postgres, until_reachable
from noetl.settings import Settings
from noetl.store.db import open_pool
from noetl.store.migrate import migrate

log = logging.getLogger(__name__)


Starter = Callable[["Context"], Awaitable[list[Awaitable[None]]]]


class Context:
    """What a consumer needs: the bus, a pool, the settings, and the signal to stop."""

    def __init__(self, bus: Bus, pool: AsyncConnectionPool, settings: Settings) -> None:
        self.bus = bus
        self.pool = pool
        self.settings = settings
        self.stop = asyncio.Event()
        self.on_stop: list[Callable[[], None]] = []

    def request_stop(self) -> None:
        self.stop.set()
        for callback in self.on_stop:
            callback()


def start_domain(domain: Domain) -> Starter:
    async def start(ctx: Context) -> list[Awaitable[None]]:
        if domain.configure is not None:
            domain.configure(ctx.settings)
        commands = domain.consumer(ctx.bus, ctx.pool, ctx.settings)
        ctx.on_stop.append(commands.stop)
        await queries.serve(ctx.bus, ctx.pool, {**queries.OUTCOME_QUERIES, **domain.queries})
        return [commands.run()]

    return start


async def start_runtime(ctx: Context) -> list[Awaitable[None]]:
    heartbeats = runtime.HeartbeatConsumer(ctx.bus, ctx.pool, ctx.settings)
    ctx.on_stop.append(heartbeats.stop)
    return [*await start_domain(runtime.DOMAIN)(ctx), heartbeats.run()]


async def start_credentials(ctx: Context) -> list[Awaitable[None]]:
    return await start_domain(credentials.domain(ctx.settings))(ctx)


async def start_sweeper(ctx: Context) -> list[Awaitable[None]]:
    s = ctx.settings
    return [
        run_sweeper(
            ctx.pool,
            interval=s.runtime_sweep_interval,
            offline_after=s.runtime_offline_seconds,
            stop=ctx.stop,
        )
    ]


async def start_outbox(ctx: Context) -> list[Awaitable[None]]:
    return [run_relay(ctx.settings.database_dsn(), ctx.bus, ctx.stop)]


CONSUMERS: dict[str, Starter] = {
    "runtime": start_runtime,
    "catalog": start_domain(catalog.DOMAIN),
    "execution": start_domain(execution.DOMAIN),
    "credentials": start_credentials,
    "sweeper": start_sweeper,
    "outbox": start_outbox,
}
# The streams whose durable consumers' pending messages a process serving metrics reports.
POLLED_STREAMS = (subjects.COMMANDS_STREAM, subjects.HEARTBEATS_STREAM, subjects.JOBS_STREAM)
# The one list of consumer names: `noetl dev`, the benchmarks, the tests and docker-compose.yml
# (checked by a test) all take theirs from here.
CONSUMER_NAMES: tuple[str, ...] = tuple(CONSUMERS)


async def run(
    names: list[str],
    settings: Settings,
    *,
    handle_signals: bool = True,
    ready: asyncio.Event | None = None,
) -> None:
    """Run the named consumers until SIGINT/SIGTERM, or until the task is cancelled."""
    unknown = [n for n in names if n not in CONSUMERS]
    if unknown:
        raise ValueError(f"unknown consumer(s) {unknown}; choose from {sorted(CONSUMERS)}")
    dsn = settings.database_dsn()
    await until_reachable(lambda: probe_postgres(dsn), log)
    await migrate(dsn)
    await until_reachable(lambda: probe_nats(settings.nats_url, nats_options(settings)), log)
    async with AsyncExitStack() as stack:
        bus = Bus.of(settings, f"noetl-consumer-{'+'.join(names)}")
        await bus.start(wait=True)
        stack.push_async_callback(bus.close)
        pool = await open_pool(dsn, max_size=8)
        stack.push_async_callback(pool.close)
        ctx = Context(bus, pool, settings)
        if handle_signals:
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, ctx.request_stop)
        jobs = [job for name in names for job in await CONSUMERS[name](ctx)]
        stop_serving = metrics.serve(settings.metrics_host, settings.metrics_port)
        if stop_serving is not None:
            stack.callback(stop_serving)
            jobs.append(metrics.poll(pool, bus.js, POLLED_STREAMS, settings.metrics_poll_interval, ctx.stop))
        tasks = [asyncio.ensure_future(job) for job in jobs]
        log.info("consumers %s running", ", ".join(names))
        if ready is not None:
            ready.set()
        notify_ready()
        try:
            await asyncio.gather(*tasks)
        finally:
            ctx.request_stop()
            # A cancelled gather returns as soon as one task ends; the others are still finishing
            # their batches, and a second cancel would abandon them half-way.
            for task in tasks:
                if not task.cancelling():
                    task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            offload.shutdown()


# How often a consumer process looks for reference cycles (see `run_process`).
GARBAGE_COLLECTION_INTERVAL = 10.0


async def run_process(
    names: list[str], settings: Settings, *, collect_every: float = GARBAGE_COLLECTION_INTERVAL
) -> None:
    """`run` as a process of its own, with CPython's collector on a timer instead of on allocations.

    A batch of 4,096 heartbeats builds tens of thousands of container objects, which trigger
    collection after collection, and those walked what start-up loaded as well: a quarter of the
    heartbeat consumer's CPU went to the collector. Yet its batches leave almost no reference
    cycles (8 objects after 100,000 beats): reference counting frees them. So start-up's objects
    are frozen out of collection, and the rare cycles are collected every few seconds.
    """
    gc.freeze()
    gc.disable()
    collector = asyncio.ensure_future(_collect_garbage(collect_every))
    try:
        await run(names, settings)
    finally:
        collector.cancel()
        gc.enable()
        gc.unfreeze()


async def _collect_garbage(interval: float) -> None:
    while True:
        await asyncio.sleep(interval)
        gc.collect()
