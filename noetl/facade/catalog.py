"""The catalog's endpoints."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query
from fastapi.responses import JSONResponse, Response

from noetl.bus import subjects
from noetl.contracts.catalog import (
    MAX_PATH_LENGTH,
    RESOURCE_TYPE_MAX_LENGTH,
    CatalogCommand,
    CatalogEntry,
    CatalogList,
    CatalogRegistered,
    CatalogRegistration,
    PlaybookCheck,
    PlaybookText,
)
from noetl.contracts.fields import NO_NUL_PATTERN
from noetl.facade.auth import GUARDED
from noetl.facade.dispatch import Bus, Limit, Offset
from noetl.facade.limits import StrictJsonRoute
from noetl.facade.responses import AUTH, COMMAND, READ, bad_request, not_found

router = APIRouter(
    prefix="/api/catalog", tags=["catalog"], route_class=StrictJsonRoute, dependencies=GUARDED, responses=AUTH
)

Version = Annotated[str, Query(pattern=r"^(latest|[1-9][0-9]{0,8})$", description="a version or `latest`")]
ResourceType = Annotated[str | None, Query(pattern=NO_NUL_PATTERN, max_length=RESOURCE_TYPE_MAX_LENGTH)]
PlaybookPath = Annotated[str, Path(pattern=NO_NUL_PATTERN, max_length=MAX_PATH_LENGTH)]


@router.post(
    "/register",
    response_model=CatalogRegistered,
    responses={**COMMAND, **bad_request("No content, invalid YAML, or not a playbook")},
)
async def register(body: CatalogRegistration, bus: Bus) -> JSONResponse:
    """Register a playbook: checked whole (a 400 names the step and the problem), then stored as
    the next version of its path."""
    command = CatalogCommand(content=body.text(), resource_type=body.resource_type)
    return await bus.command(subjects.CATALOG_REGISTER, command.model_dump())


@router.post(
    "/playbooks/validate",
    response_model=PlaybookCheck,
    responses={**READ, **bad_request("No content, or content that is not base64 of UTF-8 text")},
)
async def validate_playbook(body: PlaybookText, bus: Bus) -> Response:
    """Check a playbook as registration would, without registering it."""
    return await bus.query(
        subjects.QUERY_CATALOG_VALIDATE, {"content": body.text(), "resource_type": body.resource_type}
    )


@router.get("/list", response_model=CatalogList, responses=READ)
async def list_entries(
    bus: Bus, resource_type: ResourceType = None, limit: Limit = None, offset: Offset = 0
) -> Response:
    """Newest first; every entry unless `limit` says how many (from `offset`)."""
    query = {"resource_type": resource_type, "limit": limit, "offset": offset}
    return await bus.query(subjects.QUERY_CATALOG_LIST, query)


@router.get(
    "/playbooks/{path:path}", response_model=CatalogEntry, responses={**READ, **not_found("Not found")}
)
async def get_playbook(path: PlaybookPath, bus: Bus, version: Version = "latest") -> Response:
    """A catalog entry by path, at a version (default: the latest)."""
    lookup = {"path": path.strip("/"), "version": None if version == "latest" else int(version)}
    return await bus.query(subjects.QUERY_CATALOG_ENTRY, lookup)
