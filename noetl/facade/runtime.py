"""The runtime registry's endpoints: worker pools, brokers and any other component kind."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from noetl.bus import subjects
from noetl.bus.envelope import utcnow
from noetl.contracts.runtime import (
    BrokerRegistration,
    ComponentKind,
    Deregistration,
    Heartbeat,
    HeartbeatRequest,
    HeartbeatResponse,
    ListResponse,
    NamedDeregistration,
    RegistrationResponse,
    RuntimeRegistration,
    WorkerPoolRegistration,
)
from noetl.facade.auth import GUARDED
from noetl.facade.dispatch import Bus, Filter, Limit, Offset
from noetl.facade.limits import StrictJsonRoute
from noetl.facade.responses import AUTH, BEAT, COMMAND, READ, bad_request

router = APIRouter(
    prefix="/api", tags=["runtime"], route_class=StrictJsonRoute, dependencies=GUARDED, responses=AUTH
)

REGISTER = {**COMMAND, **bad_request("`uri` is required for server_api and broker")}


async def _register(bus: Bus, body: RuntimeRegistration) -> JSONResponse:
    body.require_uri()
    return await bus.command(subjects.RUNTIME_REGISTER, body.as_payload())


async def _deregister(bus: Bus, kind: ComponentKind, name: str) -> JSONResponse:
    payload = Deregistration(name=name, kind=kind).model_dump()
    return await bus.command(subjects.RUNTIME_DEREGISTER, payload)


async def _heartbeat(bus: Bus, request: Request, kind: ComponentKind, body: HeartbeatRequest) -> JSONResponse:
    name = body.name or request.app.state.settings.worker_pool_name
    if not name:
        return JSONResponse(HeartbeatResponse(status="ok", name=None, runtime_id=None).as_body())
    beat = Heartbeat(kind=kind, name=name, sent_at=utcnow(), registration=body.registration)
    # A repeated beat is harmless, and beats keep no outcome to replay: an Idempotency-Key on a
    # beat would only turn its retry into a 202 that never resolves, and a late one has no Location.
    bus.idempotency_key = None
    subject = subjects.heartbeat(kind, beat.name)
    return await bus.command(subject, beat.model_dump(mode="json"), subjects.HEARTBEAT_TYPE, recorded=False)


async def _list(
    bus: Bus, kind: ComponentKind, runtime: str | None, status: str | None, limit: int | None, offset: int
) -> Response:
    query = {"kind": kind, "runtime": runtime, "status": status, "limit": limit, "offset": offset}
    return await bus.query(subjects.QUERY_RUNTIME_COMPONENTS, query)


@router.post("/worker/pool/register", response_model=RegistrationResponse, responses=COMMAND)
async def register_worker_pool(body: WorkerPoolRegistration, bus: Bus) -> JSONResponse:
    """Register a worker pool, or update the one of that name (it keeps its `runtime_id`)."""
    return await _register(bus, body)


@router.delete("/worker/pool/deregister", response_model=RegistrationResponse, responses=COMMAND)
@router.post(
    "/worker/pool/deregister",
    response_model=RegistrationResponse,
    responses=COMMAND,
    summary="Deregister Worker Pool (POST, for old clients)",
)
async def deregister_worker_pool(body: NamedDeregistration, bus: Bus) -> JSONResponse:
    """Mark a worker pool offline (its row stays, and a later registration or beat brings it back)."""
    return await _deregister(bus, "worker_pool", body.name)


@router.post("/worker/pool/heartbeat", response_model=HeartbeatResponse, responses=BEAT)
async def worker_pool_heartbeat(body: HeartbeatRequest, request: Request, bus: Bus) -> JSONResponse:
    """A worker pool's beat: it stays `ready` (or becomes it again). An unknown pool is a 404 with
    `Retry-After`: register again. Workers on the bus beat without HTTP."""
    return await _heartbeat(bus, request, "worker_pool", body)


@router.get("/worker/pools", response_model=ListResponse, responses=READ)
async def list_worker_pools(
    bus: Bus, runtime: Filter = None, status: Filter = None, limit: Limit = None, offset: Offset = 0
) -> Response:
    """Ordered by name; every pool unless `limit` says how many (from `offset`)."""
    return await _list(bus, "worker_pool", runtime, status, limit, offset)


@router.get("/runtime/components", response_model=ListResponse, responses=READ)
async def list_components(
    bus: Bus,
    kind: ComponentKind = "worker_pool",
    runtime: Filter = None,
    status: Filter = None,
    limit: Limit = None,
    offset: Offset = 0,
) -> Response:
    """Components of one kind (worker_pool, broker, server_api, scheduler, monitor), ordered by
    name; every one unless `limit` says how many (from `offset`)."""
    return await _list(bus, kind, runtime, status, limit, offset)


@router.post(
    "/runtime/register",
    response_model=RegistrationResponse,
    responses=REGISTER,
)
async def register_component(body: RuntimeRegistration, bus: Bus) -> JSONResponse:
    """Register a component of any kind, or update the one of that kind and name."""
    return await _register(bus, body)


@router.delete("/runtime/deregister", response_model=RegistrationResponse, responses=COMMAND)
async def deregister_component(body: Deregistration, bus: Bus) -> JSONResponse:
    """Mark a component of any kind offline."""
    return await _deregister(bus, body.kind, body.name)


@router.post(
    "/broker/register",
    response_model=RegistrationResponse,
    responses=REGISTER,
)
async def register_broker(body: BrokerRegistration, bus: Bus) -> JSONResponse:
    """Register a broker (its `uri` is required), or update the one of that name."""
    return await _register(bus, body)


@router.post("/broker/heartbeat", response_model=HeartbeatResponse, responses=BEAT)
async def broker_heartbeat(body: HeartbeatRequest, request: Request, bus: Bus) -> JSONResponse:
    """A broker's beat; an unknown broker is a 404 with `Retry-After`: register again."""
    return await _heartbeat(bus, request, "broker", body)


@router.get("/brokers", response_model=ListResponse, responses=READ)
async def list_brokers(
    bus: Bus, runtime: Filter = None, status: Filter = None, limit: Limit = None, offset: Offset = 0
) -> Response:
    """Ordered by name; every broker unless `limit` says how many (from `offset`)."""
    return await _list(bus, "broker", runtime, status, limit, offset)


@router.delete("/broker/deregister", response_model=RegistrationResponse, responses=COMMAND)
async def deregister_broker(body: NamedDeregistration, bus: Bus) -> JSONResponse:
    """Mark a broker offline."""
    return await _deregister(bus, "broker", body.name)
