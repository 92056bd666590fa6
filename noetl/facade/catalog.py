"""The catalog's endpoints."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse

from noetl.bus import subjects
from noetl.contracts.catalog import (
    CatalogCommand,
    CatalogEntry,
    CatalogList,
    CatalogRegistered,
    CatalogRegistration,
    PlaybookCheck,
    PlaybookText,
)
from noetl.facade.dispatch import Bus
from noetl.facade.runtime import COMMAND_ERRORS

router = APIRouter(prefix="/api/catalog", tags=["catalog"])

Version = Annotated[str, Query(pattern=r"^(latest|[1-9][0-9]{0,8})$", description="a version or `latest`")]


@router.post(
    "/register",
    response_model=CatalogRegistered,
    responses={**COMMAND_ERRORS, 400: {"description": "No content, invalid YAML, or not a playbook"}},
)
async def register(body: CatalogRegistration, bus: Bus) -> JSONResponse:
    command = CatalogCommand(content=body.text(), resource_type=body.resource_type)
    return await bus.command(subjects.CATALOG_REGISTER, command.model_dump())


@router.post(
    "/playbooks/validate",
    response_model=PlaybookCheck,
    responses={400: {"description": "No content, or content that is not base64 of UTF-8 text"}},
)
async def validate_playbook(body: PlaybookText, bus: Bus) -> JSONResponse:
    """Check a playbook as registration would, without registering it."""
    return await bus.query(
        subjects.QUERY_CATALOG_VALIDATE, {"content": body.text(), "resource_type": body.resource_type}
    )


@router.get("/list", response_model=CatalogList)
async def list_entries(bus: Bus, resource_type: str | None = None) -> JSONResponse:
    return await bus.query(subjects.QUERY_CATALOG_LIST, {"resource_type": resource_type})


@router.get(
    "/playbooks/{path:path}", response_model=CatalogEntry, responses={404: {"description": "Not found"}}
)
async def get_playbook(path: str, bus: Bus, version: Version = "latest") -> JSONResponse:
    lookup = {"path": path.strip("/"), "version": None if version == "latest" else int(version)}
    return await bus.query(subjects.QUERY_CATALOG_ENTRY, lookup)
