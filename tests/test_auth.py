"""The facade's bearer tokens: every route of the app against every role (allowed, 401, 403), taken
from the app itself, so a route added without its roles fails here (and stops the app). The bus is
unreachable: an allowed call gets as far as the bus (503) or its own validation, never 401/403."""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import facade
from fastapi.routing import APIRoute

from noetl.embedded import free_port
from noetl.facade import auth
from noetl.facade.app import create_app
from noetl.settings import Settings

TOKENS = {role: secrets.token_urlsafe(24) for role in auth.ROLES}
PARAMS = {"request_id": "r1", "path": "examples/x", "execution_id": "1", "identifier": "pg"}


def _settings(**overrides: Any) -> Settings:
    digests = {role: auth.digest(token) for role, token in TOKENS.items()}
    return Settings(
        nats_url=f"nats://127.0.0.1:{free_port()}",  # nobody listens: allowed calls end in 503
        api_tokens=json.dumps(digests),
        **overrides,
    )


@pytest.fixture(scope="module")
def app_routes() -> list[tuple[str, str]]:
    routes = []
    for route in create_app(_settings()).routes:
        if isinstance(route, APIRoute):
            (method,) = route.methods - {"HEAD"}
            routes.append((method, route.path))
    return routes


@pytest.fixture
async def guarded() -> AsyncIterator[httpx.AsyncClient]:
    async with facade(_settings(), wait_bus=False) as (_, client):
        yield client


def _url(path: str) -> str:
    return re.sub(r"\{(\w+)(:path)?\}", lambda m: PARAMS[m.group(1)], path)


async def _call(client: httpx.AsyncClient, method: str, path: str, token: str | None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    body = {} if method in ("POST", "DELETE") else None
    return await client.request(method, _url(path), headers=headers, json=body)


def test_every_route_has_its_roles(app_routes: list[tuple[str, str]]) -> None:
    assert sorted(app_routes) == sorted(auth.ROUTE_ROLES), "ROUTE_ROLES and the app's routes differ"


def test_a_route_without_roles_stops_the_app() -> None:
    from fastapi import APIRouter

    stray = APIRouter()

    @stray.get("/api/stray")
    async def _stray() -> dict[str, str]:
        return {}

    with pytest.raises(auth.UnlistedRoute, match="GET /api/stray"):
        auth.Guard(auth.Tokens(), stray.routes)


async def test_every_route_against_every_role(
    guarded: httpx.AsyncClient, app_routes: list[tuple[str, str]]
) -> None:
    for method, path in app_routes:
        allowed = auth.ROUTE_ROLES[(method, path)]
        where = f"{method} {path}"
        anonymous = await _call(guarded, method, path, None)
        if allowed is auth.OPEN:
            assert anonymous.status_code not in (401, 403), where
            continue
        assert anonymous.status_code == 401, where
        assert anonymous.headers["www-authenticate"].startswith("Bearer"), where
        unknown = await _call(guarded, method, path, secrets.token_urlsafe(24))
        assert unknown.status_code == 401, where
        assert unknown.headers["www-authenticate"].startswith("Bearer"), where
        for role, token in TOKENS.items():
            answer = await _call(guarded, method, path, token)
            if role in allowed:
                assert answer.status_code not in (401, 403), f"{where} as {role}: {answer.text}"
            else:
                assert answer.status_code == 403, f"{where} as {role}: {answer.status_code}"
                assert token not in answer.text


async def test_only_admin_reads_credential_data(guarded: httpx.AsyncClient) -> None:
    for role, token in TOKENS.items():
        headers = {"Authorization": f"Bearer {token}"}
        answer = await guarded.get("/api/credentials/pg", params={"include_data": "true"}, headers=headers)
        if role == "admin":
            assert answer.status_code == 503, answer.text  # past the guard, on to the (absent) bus
        else:
            assert answer.status_code == 403, f"{role}: {answer.text}"
        if role in auth.READ:
            plain = await guarded.get("/api/credentials/pg", headers=headers)
            assert plain.status_code == 503, f"{role}: {plain.text}"


async def test_auth_is_off_without_tokens() -> None:
    settings = Settings(nats_url=f"nats://127.0.0.1:{free_port()}")
    async with facade(settings, wait_bus=False) as (_, client):
        answer = await client.post("/api/catalog/register", json={})
        assert answer.status_code == 422
        data = await client.get("/api/credentials/pg", params={"include_data": "true"})
        assert data.status_code == 503


def test_tokens_from_a_file_with_lists(tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    path.write_text(json.dumps({"admin": [auth.digest("a1"), auth.digest("a2")], "reader": auth.digest("r")}))
    tokens = auth.Tokens.from_settings(Settings(api_tokens_file=path))
    assert [tokens.role_of(t) for t in ("a1", "a2", "r", "x")] == ["admin", "admin", "reader", None]


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("not json", "not JSON"),
        ('["a"]', "must map roles"),
        ('{"root": "' + "0" * 64 + '"}', "unknown role 'root'"),
        ('{"admin": "hunter2-plain-token"}', "digests of tokens, not tokens"),
        ('{"admin": "' + auth.digest("t") + '", "reader": "' + auth.digest("t") + '"}', "two roles"),
    ],
)
def test_bad_tokens_are_refused_without_echoing_them(text: str, says: str) -> None:
    with pytest.raises(auth.BadTokens, match=says) as refused:
        auth.Tokens.from_settings(Settings(api_tokens=text))
    assert "hunter2" not in str(refused.value)


def test_the_document_names_the_bearer_scheme() -> None:
    document = create_app(_settings()).openapi()
    assert document["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    assert "security" not in document["paths"]["/health"]["get"]
    run = document["paths"]["/api/executions/run"]["post"]
    assert run["security"] == [{"bearer": []}]
    assert {"401", "403"} <= set(run["responses"])
    open_document = create_app(Settings()).openapi()
    assert "security" not in open_document["paths"]["/api/executions/run"]["post"]


def test_the_client_sends_its_token(monkeypatch: pytest.MonkeyPatch) -> None:
    from noetl import client
    from noetl.settings import get_settings

    monkeypatch.setenv("NOETL_API_TOKEN", TOKENS["reader"])
    get_settings.cache_clear()
    try:
        assert client.auth_headers() == {"Authorization": f"Bearer {TOKENS['reader']}"}
        monkeypatch.delenv("NOETL_API_TOKEN")
        get_settings.cache_clear()
        assert client.auth_headers() == {}
    finally:
        get_settings.cache_clear()
