"""The credential store's endpoints. A registration's `data` is sealed here, before it is published:
the commands stream keeps a command until it is applied, and must not keep a secret in the clear."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request, Response
from fastapi.exceptions import RequestValidationError

from noetl.bus import subjects
from noetl.contracts.credentials import (
    CredentialDeleted,
    CredentialList,
    CredentialRead,
    CredentialRecord,
    CredentialRef,
    CredentialRegistration,
    CredentialWithData,
)
from noetl.contracts.fields import NO_NUL_PATTERN
from noetl.crypto import Cipher
from noetl.facade.auth import GUARDED, Caller, require_admin
from noetl.facade.dispatch import Bus
from noetl.facade.limits import StrictJsonRoute
from noetl.facade.responses import AUTH, COMMAND, READ, Responses, not_found


class SecretInput(StrictJsonRoute):
    """A route whose 422s leave out what was sent: it may be a secret."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handle = super().get_route_handler()

        async def handle_quietly(request: Request) -> Response:
            try:
                return await handle(request)
            except RequestValidationError as exc:
                errors = [{k: v for k, v in e.items() if k != "input"} for e in exc.errors()]
                raise RequestValidationError(errors) from None

        return handle_quietly


router = APIRouter(
    prefix="/api/credentials",
    tags=["credentials"],
    route_class=SecretInput,
    dependencies=GUARDED,
    responses=AUTH,
)

# Stored text cannot hold NUL: such a name is refused here (422), not in the store.
Identifier = Annotated[
    str, Path(min_length=1, pattern=NO_NUL_PATTERN, description="a credential's id, or its name")
]
NOT_FOUND = not_found("Credential not found")
NO_KEY: Responses = {
    503: {**READ[503], "description": "The bus is unreachable, or NOETL_CREDENTIALS_KEY is not set"}
}


@router.post("", response_model=CredentialRecord, responses={**COMMAND, **NO_KEY})
async def register_credential(body: CredentialRegistration, request: Request, bus: Bus) -> Response:
    """Create or replace the credential of that name (its id stays); `data` is stored sealed."""
    cipher: Cipher = request.app.state.cipher
    command = body.sealed(cipher)
    return await bus.command(
        subjects.CREDENTIALS_REGISTER,
        command.model_dump(mode="json"),
        fingerprinted=body.fingerprinted(cipher),
    )


@router.get("", response_model=CredentialList, responses=READ)
async def list_credentials(
    bus: Bus,
    type_: Annotated[str | None, Query(alias="type", pattern=NO_NUL_PATTERN)] = None,
    ctype: Annotated[
        str | None, Query(pattern=NO_NUL_PATTERN, description="the original's name for `type`")
    ] = None,
    q: Annotated[
        str | None, Query(pattern=NO_NUL_PATTERN, description="part of the name or description")
    ] = None,
) -> Response:
    """Credentials without their data, ordered by name; optionally of one type, or matching `q`."""
    return await bus.query(subjects.QUERY_CREDENTIALS_LIST, {"type": type_ or ctype, "q": q})


@router.get(
    "/{identifier:path}",
    response_model=CredentialRecord | CredentialWithData,
    responses={**READ, **NOT_FOUND, **NO_KEY},
)
async def get_credential(
    identifier: Identifier, bus: Bus, caller: Caller, include_data: bool = False
) -> Response:
    """The credential's record; with `include_data=true` (admin only), its `data` too, opened."""
    if include_data:
        require_admin(caller, "read a credential's data")
    read = CredentialRead.of(identifier, include_data=include_data)
    return await bus.query(subjects.QUERY_CREDENTIALS_GET, read.model_dump())


@router.delete("/{identifier:path}", response_model=CredentialDeleted, responses={**COMMAND, **NOT_FOUND})
async def delete_credential(identifier: Identifier, bus: Bus) -> Response:
    """Remove a credential, by id or by name."""
    return await bus.command(subjects.CREDENTIALS_DELETE, CredentialRef.of(identifier).model_dump())
