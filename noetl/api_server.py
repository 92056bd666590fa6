"""`noetl api`: the facade under uvicorn, which says when it serves and warns while NATS is away.

The facade starts and answers (503) while the bus is unreachable; its connection retries on its
own, silently, so a watcher says why, with backoff, until the bus is connected. Only then is the
API ready (`noetl.children.notify_ready`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket

import uvicorn
from fastapi import FastAPI

from noetl.bus.connection import nats_options
from noetl.children import notify_ready
from noetl.facade.app import create_app
from noetl.reach import probe_nats, until_reachable
from noetl.settings import Settings

log = logging.getLogger("noetl.api")

BUS_SETTLE = 5.0  # once NATS answers a probe, how long the facade's connection may take to follow


class _Server(uvicorn.Server):
    """uvicorn's server, with an event for "it listens"."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.listening = asyncio.Event()

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started:
            self.listening.set()


async def serve(settings: Settings, *, host: str, port: int) -> None:
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_config=None,  # the records go to the root logger, as text or JSON (`noetl.logs`)
        log_level=logging.getLogger().level,
        access_log=False,
    )
    server = _Server(config)
    watcher = asyncio.create_task(_until_ready(server, app, settings))
    try:
        await server.serve()
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher


async def _until_ready(server: _Server, app: FastAPI, settings: Settings) -> None:
    await server.listening.wait()

    async def bus_connected() -> None:
        bus = app.state.bus
        while not bus.connected:
            # `Unreachable`, with why, while NATS is away
            await probe_nats(settings.nats_url, nats_options(settings))
            with contextlib.suppress(TimeoutError):
                await bus.wait_ready(BUS_SETTLE)
            await asyncio.sleep(0 if bus.connected else 0.2)

    await until_reachable(bus_connected, log)
    notify_ready()
