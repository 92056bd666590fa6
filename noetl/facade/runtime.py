"""The runtime registry's endpoints: worker pools, brokers and any other component kind."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse

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
from noetl.facade.dispatch import Bus

router = APIRouter(prefix="/api", tags=["runtime"])

# A filter is compared with stored text, which cannot hold NUL: refuse it here (422), not in the store.
Filter = Annotated[str | None, Query(pattern=r"^[^\x00]*$")]

COMMAND_ERRORS: dict[int | str, dict[str, Any]] = {
    202: {"description": "Accepted; the outcome is late: GET the `Location`"},
    409: {"description": "This Idempotency-Key was used for a different request"},
    503: {"description": "The bus is unreachable; retry after `Retry-After` seconds"},
}
HEARTBEAT_ERRORS = {
    **COMMAND_ERRORS,
    404: {"description": "Unknown component: register again (`Retry-After` says when)"},
}


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
    # beat would only turn its retry into a 202 that never resolves.
    bus.idempotency_key = None
    return await bus.command(
        subjects.heartbeat(kind, beat.name), beat.model_dump(mode="json"), subjects.HEARTBEAT_TYPE
    )


async def _list(bus: Bus, kind: ComponentKind, runtime: str | None, status: str | None) -> JSONResponse:
    return await bus.query(
        subjects.QUERY_RUNTIME_COMPONENTS, {"kind": kind, "runtime": runtime, "status": status}
    )


@router.post("/worker/pool/register", response_model=RegistrationResponse, responses=COMMAND_ERRORS)
async def register_worker_pool(body: WorkerPoolRegistration, bus: Bus) -> JSONResponse:
    return await _register(bus, body)


@router.delete("/worker/pool/deregister", response_model=RegistrationResponse, responses=COMMAND_ERRORS)
@router.post(
    "/worker/pool/deregister",
    response_model=RegistrationResponse,
    responses=COMMAND_ERRORS,
    summary="Deregister Worker Pool (POST, for old clients)",
)
async def deregister_worker_pool(body: NamedDeregistration, bus: Bus) -> JSONResponse:
    return await _deregister(bus, "worker_pool", body.name)


@router.post("/worker/pool/heartbeat", response_model=HeartbeatResponse, responses=HEARTBEAT_ERRORS)
async def worker_pool_heartbeat(body: HeartbeatRequest, request: Request, bus: Bus) -> JSONResponse:
    return await _heartbeat(bus, request, "worker_pool", body)


@router.get("/worker/pools", response_model=ListResponse)
async def list_worker_pools(bus: Bus, runtime: Filter = None, status: Filter = None) -> JSONResponse:
    return await _list(bus, "worker_pool", runtime, status)


@router.post(
    "/runtime/register",
    response_model=RegistrationResponse,
    responses={
        **COMMAND_ERRORS,
        400: {"description": "`uri` is required for server_api and broker"},
    },
)
async def register_component(body: RuntimeRegistration, bus: Bus) -> JSONResponse:
    return await _register(bus, body)


@router.delete("/runtime/deregister", response_model=RegistrationResponse, responses=COMMAND_ERRORS)
async def deregister_component(body: Deregistration, bus: Bus) -> JSONResponse:
    return await _deregister(bus, body.kind, body.name)


@router.post(
    "/broker/register",
    response_model=RegistrationResponse,
    responses={**COMMAND_ERRORS, 400: {"description": "`uri` is required for a broker"}},
)
async def register_broker(body: BrokerRegistration, bus: Bus) -> JSONResponse:
    return await _register(bus, body)


@router.post("/broker/heartbeat", response_model=HeartbeatResponse, responses=HEARTBEAT_ERRORS)
async def broker_heartbeat(body: HeartbeatRequest, request: Request, bus: Bus) -> JSONResponse:
    return await _heartbeat(bus, request, "broker", body)


@router.get("/brokers", response_model=ListResponse)
async def list_brokers(bus: Bus, runtime: Filter = None, status: Filter = None) -> JSONResponse:
    return await _list(bus, "broker", runtime, status)


@router.delete("/broker/deregister", response_model=RegistrationResponse, responses=COMMAND_ERRORS)
async def deregister_broker(body: NamedDeregistration, bus: Bus) -> JSONResponse:
    return await _deregister(bus, "broker", body.name)
