"""`noetl worker`: register, beat, run jobs; on SIGTERM or SIGINT, drain and deregister."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket

from noetl import metrics
from noetl.bus.connection import Bus, BusUnavailable, nats_options
from noetl.children import notify_ready
from noetl.reach import probe_nats, until_reachable
from noetl.settings import Settings
from noetl.worker.jobs import JobRunner
from noetl.worker.pool import WorkerPool

log = logging.getLogger(__name__)


def default_name(settings: Settings) -> str:
    """`NOETL_WORKER_NAME`, else one of its own per process: copies of a worker started from one
    command line (`docker compose --scale`) must not share a name in the registry."""
    return settings.worker_name or f"{socket.gethostname()}-{os.getpid()}"


async def run_worker(settings: Settings, *, name: str | None, runtime: str, capacity: int) -> None:
    name = name or default_name(settings)
    await until_reachable(lambda: probe_nats(settings.nats_url, nats_options(settings)), log)
    bus = Bus.of(settings, f"noetl-worker-{name}")
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
    stop_serving = metrics.serve(settings.metrics_host, settings.metrics_port)
    try:
        await pool.start()
        notify_ready()
        await asyncio.gather(pool.run(stop), jobs.run(stop, accepting=pool.healthy))
        try:
            await pool.deregister()
        except BusUnavailable:
            log.warning(
                "worker pool %s: NATS is gone, so it is not deregistered (the registry "
                "marks it offline after NOETL_RUNTIME_OFFLINE_SECONDS)",
                name,
            )
    finally:
        if stop_serving is not None:
            stop_serving()
        await bus.close()
