"""Bearer tokens with roles: who may call which route, in one table.

A token is known by its sha256 digest only (`NOETL_API_TOKENS_FILE`, `NOETL_API_TOKENS`: JSON of
role -> digest, or role -> list of digests), compared in constant time, and never logged. With no
token configured the facade is open, as it always was. `/health`, `/ready`, `/api/health`, the
OpenAPI document (`/openapi.json`, `/docs`) and the web console's pages (`/ui...`) stay open: they
say the facade is up and how to call it, nothing that needs a role.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Annotated, Any, Literal, get_args

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.routing import APIRoute
from starlette.routing import BaseRoute

from noetl.facade.ui import CONSOLE_PAGES
from noetl.problems import Problem
from noetl.settings import Settings

Role = Literal["admin", "operator", "worker", "reader"]
ROLES: tuple[Role, ...] = get_args(Role)

ADMIN: frozenset[Role] = frozenset({"admin"})
OPERATE: frozenset[Role] = frozenset({"admin", "operator"})
READ: frozenset[Role] = frozenset({"admin", "operator", "reader"})
REGISTER: frozenset[Role] = frozenset({"admin", "worker"})
ANYONE: frozenset[Role] = frozenset(ROLES)
OPEN = None

# Every route of the facade, by method and path, and the roles that may call it (OPEN: anyone,
# without a token). A route missing here stops the app from starting (`Guard`).
ROUTE_ROLES: dict[tuple[str, str], frozenset[Role] | None] = {
    ("GET", "/health"): OPEN,
    ("GET", "/api/health"): OPEN,
    ("GET", "/ready"): OPEN,
    # Whoever was answered 202 comes back for the outcome; request ids are unguessable.
    ("GET", "/api/requests/{request_id}"): ANYONE,
    # The runtime registry: components register, beat and leave; readers look.
    ("POST", "/api/worker/pool/register"): REGISTER,
    ("DELETE", "/api/worker/pool/deregister"): REGISTER,
    ("POST", "/api/worker/pool/deregister"): REGISTER,
    ("POST", "/api/worker/pool/heartbeat"): REGISTER,
    ("GET", "/api/worker/pools"): READ,
    ("GET", "/api/runtime/components"): READ,
    ("POST", "/api/runtime/register"): REGISTER,
    ("DELETE", "/api/runtime/deregister"): REGISTER,
    ("POST", "/api/broker/register"): REGISTER,
    ("POST", "/api/broker/heartbeat"): REGISTER,
    ("GET", "/api/brokers"): READ,
    ("DELETE", "/api/broker/deregister"): REGISTER,
    # The catalog and executions: operators change them, readers look.
    ("POST", "/api/catalog/register"): OPERATE,
    ("POST", "/api/catalog/playbooks/validate"): OPERATE,
    ("GET", "/api/catalog/list"): READ,
    ("GET", "/api/catalog/playbooks/{path:path}"): READ,
    ("POST", "/api/executions/run"): OPERATE,
    ("POST", "/api/execute"): OPERATE,
    ("POST", "/api/executions/{execution_id}/cancel"): OPERATE,
    ("GET", "/api/executions"): READ,
    ("GET", "/api/executions/{execution_id}"): READ,
    ("GET", "/api/executions/{execution_id}/events"): READ,
    ("GET", "/api/events/by-execution/{execution_id}"): READ,
    ("GET", "/api/events/summary/{execution_id}"): READ,
    ("GET", "/api/executions/{execution_id}/events/stream"): READ,
    ("GET", "/api/events/stream"): READ,
    # Credentials: only an admin writes them, or reads their data (`include_data`, `require_admin`).
    ("POST", "/api/credentials"): ADMIN,
    ("GET", "/api/credentials"): READ,
    ("GET", "/api/credentials/{identifier:path}"): READ,
    ("DELETE", "/api/credentials/{identifier:path}"): ADMIN,
    # The web console's pages hold no data (their scripts read the API above with the caller's
    # token); its static files are a mount, not a route.
    **{("GET", path): OPEN for path in CONSOLE_PAGES},
}

_DIGEST = re.compile(r"^[0-9a-f]{64}$")
BEARER = {"WWW-Authenticate": "Bearer"}
INVALID = {"WWW-Authenticate": 'Bearer error="invalid_token"'}


class BadTokens(Problem):
    """The configured tokens cannot be read (the message never holds a token or digest)."""


class UnlistedRoute(Problem):
    """A route that `ROUTE_ROLES` does not name, or names without its guard."""


def digest(token: str) -> str:
    """How a token is configured: its sha256, in hex."""
    return hashlib.sha256(token.encode()).hexdigest()


def _digests(source: str, text: str) -> list[tuple[bytes, Role]]:
    try:
        document = json.loads(text)
    except ValueError:
        raise BadTokens(f"{source} is not JSON") from None
    if not isinstance(document, dict):
        raise BadTokens(f"{source} must map roles to sha256 digests")
    found: list[tuple[bytes, Role]] = []
    for role, value in document.items():
        if role not in ROLES:
            raise BadTokens(f"{source}: unknown role {role!r}; roles are {', '.join(ROLES)}")
        values = value if isinstance(value, list) else [value]
        for item in values:
            if not isinstance(item, str) or not _DIGEST.match(item.lower()):
                raise BadTokens(f"{source}: role {role} needs sha256 hex digests of tokens, not tokens")
            found.append((bytes.fromhex(item), role))
    return found


@dataclass(frozen=True)
class Tokens:
    known: tuple[tuple[bytes, Role], ...] = ()

    @classmethod
    def from_settings(cls, settings: Settings) -> Tokens:
        found: list[tuple[bytes, Role]] = []
        if settings.api_tokens_file is not None:
            try:
                text = settings.api_tokens_file.read_text()
            except OSError as exc:
                raise BadTokens(f"cannot read NOETL_API_TOKENS_FILE: {exc.strerror}") from None
            found += _digests("NOETL_API_TOKENS_FILE", text)
        if settings.api_tokens is not None:
            found += _digests("NOETL_API_TOKENS", settings.api_tokens.get_secret_value())
        roles: dict[bytes, Role] = {}
        for known, role in found:
            if roles.setdefault(known, role) != role:
                raise BadTokens("one token is configured for two roles")
        return cls(tuple(roles.items()))

    def role_of(self, token: str) -> Role | None:
        """The token's role, comparing its digest with every known one (no early exit)."""
        given = hashlib.sha256(token.encode()).digest()
        role: Role | None = None
        for known, known_role in self.known:
            if hmac.compare_digest(given, known):
                role = known_role
        return role


def _method(route: APIRoute) -> str:
    return next(iter(sorted(route.methods - {"HEAD"})))


class Guard:
    """The tokens and, for each route of one app, the roles it allows."""

    def __init__(self, tokens: Tokens, routes: Iterable[BaseRoute]) -> None:
        self.on = bool(tokens.known)
        self.tokens = tokens
        self.allowed: dict[int, frozenset[Role] | None] = {}
        for route in routes:
            if not isinstance(route, APIRoute):
                continue  # the OpenAPI document and its pages
            key = (_method(route), route.path)
            if key not in ROUTE_ROLES:
                raise UnlistedRoute(f"{key[0]} {key[1]} has no roles in noetl.facade.auth.ROUTE_ROLES")
            roles = ROUTE_ROLES[key]
            if roles is not OPEN and not any(d.call is authorize for d in route.dependant.dependencies):
                raise UnlistedRoute(f"{key[0]} {key[1]} needs roles but its router has no guard")
            self.allowed[id(route)] = roles


async def authorize(request: Request) -> Role | None:
    """The caller's role, or 401/403; None when auth is off or the route is open."""
    guard: Guard = request.app.state.guard
    if not guard.on:
        return None
    allowed = guard.allowed.get(id(request.scope.get("route")), ADMIN)
    if allowed is OPEN:
        return None
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise HTTPException(
            401,
            "a bearer token is required (Authorization: Bearer ...; the noetl command sends NOETL_API_TOKEN)",
            BEARER,
        )
    role = guard.tokens.role_of(token.strip())
    if role is None:
        raise HTTPException(401, "unknown token", INVALID)
    if role not in allowed:
        raise HTTPException(403, f"the role {role} may not {request.method} {request.url.path}")
    return role


Caller = Annotated[Role | None, Depends(authorize)]
"""A route parameter for the caller's role (the router's guard has found it already)."""
GUARDED = [Depends(authorize)]
"""A router's dependencies: every route of it needs a role from `ROUTE_ROLES`."""


def require_admin(caller: Role | None, what: str) -> None:
    if caller is not None and caller != "admin":
        raise HTTPException(403, f"only admin may {what}")


def install(app: FastAPI, settings: Settings) -> None:
    """Guard the app's routes and, when tokens are configured, name the bearer scheme on each
    guarded operation (with auth off the document asks for no token, as the facade does not)."""
    app.state.guard = Guard(Tokens.from_settings(settings), app.router.routes)
    if not app.state.guard.on:
        return
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = build()
            document.setdefault("components", {}).setdefault("securitySchemes", {})["bearer"] = {
                "type": "http",
                "scheme": "bearer",
                "description": "A token of role admin, operator, worker or reader (when configured)",
            }
            for operations in document["paths"].values():
                for operation in operations.values():
                    if "401" in operation.get("responses", {}):
                        operation["security"] = [{"bearer": []}]
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
