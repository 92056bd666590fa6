"""The FastAPI application. It holds a bus connection, the credentials key, and no database
credentials."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.routing import BaseRoute

from noetl.bus.connection import Bus
from noetl.bus.requests import Requester
from noetl.bus.streams import ensure_streams
from noetl.crypto import Cipher
from noetl.facade import auth, catalog, credentials, dispatch, errors, executions, runtime, system, ui
from noetl.facade.limits import BodySizeLimit
from noetl.metrics import HttpMetrics, metrics_endpoint
from noetl.settings import Settings, get_settings


async def _declare_streams(bus: Bus) -> None:
    """Streams exist before the first command, so commands wait for consumers that are down."""
    await ensure_streams(bus.js, bus.replicas)


BUSIEST_PATHS = (
    "/api/worker/pool/heartbeat",
    "/api/executions/run",
    "/api/worker/pool/register",
    "/api/broker/heartbeat",
    "/api/runtime/register",
)


def _traffic_rank(route: BaseRoute) -> int:
    path = getattr(route, "path", "")
    return BUSIEST_PATHS.index(path) if path in BUSIEST_PATHS else len(BUSIEST_PATHS)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        bus = Bus.of(settings, "noetl-api")
        requester = Requester(bus)
        bus.on_connect(requester.subscribe)
        bus.on_connect(_declare_streams)
        app.state.bus = bus
        app.state.requester = requester
        await bus.start(wait=False)
        try:
            yield
        finally:
            await requester.close()
            await bus.close()

    app = FastAPI(
        title="NoETL control plane",
        version="0.1.0",
        description="Runtime registry, catalog and executions, over NATS JetStream.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    # The keys that seal credentials before they are published (a malformed key stops the start).
    app.state.cipher = Cipher.from_setting(settings.credentials_key)
    app.add_middleware(BodySizeLimit, max_bytes=settings.api_max_body_bytes)
    errors.install(app)
    dispatch.document_idempotency_key(app)
    # The routes join the app's own list rather than through `include_router`: FastAPI matches an
    # included router's routes twice per request, which made routing a tenth of the facade's CPU.
    # A request is tried against each route in turn (a few microseconds each): the busiest first.
    routes = [
        route
        for module in (runtime, executions, catalog, credentials, system)
        for route in module.router.routes
    ]
    app.router.routes[:0] = sorted(routes, key=_traffic_rank)
    ui.install(app)  # the web console, after the API's routes: a browser's page loads are rare
    auth.install(app, settings)
    if settings.api_metrics:
        app.add_middleware(HttpMetrics)  # the outermost: it sees the 413s and the 401s too
        app.add_route("/metrics", metrics_endpoint, include_in_schema=False)
    return app
