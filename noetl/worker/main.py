"""`noetl worker`: register, beat, run jobs; on SIGTERM or SIGINT, drain and deregister."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket

from noetl.bus.connection import Bus
from noetl.settings import Settings
from noetl.worker.jobs import JobRunner
from noetl.worker.pool import WorkerPool

log = logging.getLogger(__name__)


async def run_worker(settings: Settings, *, name: str, runtime: str, capacity: int) -> None:
    bus = Bus(settings.nats_url, name=f"noetl-worker-{name}")
    await bus.start(wait=True)
    pool = WorkerPool(
        bus,
        name=name,
        runtime=runtime,
        capacity=capacity,
        heartbeat_interval=settings.worker_heartbeat_interval,
    )
    jobs = JobRunner(
        bus,
        worker=f"{name}@{socket.gethostname()}:{os.getpid()}",
        runtime=runtime,
        capacity=capacity,
        settings=settings,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def request_stop(sig: signal.Signals) -> None:
        log.info("worker pool %s: %s received; taking no new jobs", name, sig.name)
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, request_stop, sig)
    try:
        await pool.start()
        await asyncio.gather(pool.run(stop), jobs.run(stop, accepting=pool.healthy))
        await pool.deregister()
    finally:
        await bus.close()
