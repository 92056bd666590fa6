"""The credential store through the bus: register (an upsert by name), list, get with and without
its data, delete; sealing at rest and on the commands stream, key rotation, a missing or a foreign
key; and the query a worker asks for its job's credentials. No secret in events, logs or errors."""

from __future__ import annotations

import logging
import stat
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import nats
import pytest
from conftest import Db, Servers, Stack, StackFactory, facade, stream_events, wait_for

from noetl.bus import subjects
from noetl.bus.envelope import Command, Outcome
from noetl.crypto import Cipher, NotConfigured, Undecryptable, generate_key
from noetl.dev import credentials_key
from noetl.embedded import free_port
from noetl.facade.errors import outcome_status
from noetl.worker.credentials import CredentialsUnavailable, fetch_credentials

RECORD_KEYS = {"id", "name", "type", "meta", "tags", "description", "created_at", "updated_at"}
CONSUMERS = ["credentials", "outbox"]
NOT_CONFIGURED = "credentials are not configured: set NOETL_CREDENTIALS_KEY"


def secret() -> str:
    return f"s3cr3t-{uuid.uuid4().hex}"


def pg_data(password: str) -> dict[str, Any]:
    return {"db_host": "127.0.0.1", "db_port": 5432, "db_user": "noetl", "db_password": password}


@pytest.fixture
async def cstack(make_stack: StackFactory) -> Stack:
    stack = await make_stack(consumers=False)
    await stack.start_consumers(CONSUMERS)
    return stack


async def register(stack: Stack, **body: Any) -> dict[str, Any]:
    response = await stack.client.post("/api/credentials", json=body)
    assert response.status_code == 200, response.text
    return response.json()


async def get(stack: Stack, identifier: str | int, **params: Any) -> Any:
    return await stack.client.get(f"/api/credentials/{identifier}", params=params)


# --------------------------------------------------------------------------- the key


def test_cipher_round_trip_and_rotation() -> None:
    old, new = generate_key(), generate_key()
    value = {"password": secret(), "nested": {"list": [1, 2.5, None, True], "ü": "ñ"}}
    token = Cipher.from_setting(old).encrypt_json(value)
    assert value["password"].encode() not in token
    # The new key first seals; the old one still opens what it sealed.
    rotated = Cipher.from_setting(f"{new}, {old}")
    assert rotated.decrypt_json(token) == value
    assert Cipher.from_setting(new).decrypt_json(rotated.encrypt_json(value)) == value
    with pytest.raises(Undecryptable):
        Cipher.from_setting(new).decrypt_json(token)
    # Digests: equal values agree, different ones differ, and the digest is no plain hash.
    assert rotated.digest_json(value) == rotated.digest_json(dict(reversed(value.items())))
    assert rotated.digest_json(value) != rotated.digest_json({**value, "password": "other"})


def test_cipher_without_keys_refuses_and_a_bad_key_is_named() -> None:
    for setting in (None, "", " , "):
        cipher = Cipher.from_setting(setting)
        assert not cipher.configured
        with pytest.raises(NotConfigured, match=NOT_CONFIGURED):
            cipher.encrypt_json({"a": 1})
    good = generate_key()
    with pytest.raises(ValueError, match="key 2 of 2 is not a Fernet key") as info:
        Cipher.from_setting(f"{good},not-a-key")
    assert good not in str(info.value) and "not-a-key" not in str(info.value)


def test_dev_makes_a_private_key_once(scratch_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data_dir = scratch_dir / "dev"
    first = credentials_key(data_dir)
    path = data_dir / "credentials" / "key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert Cipher.from_setting(first).configured
    assert credentials_key(data_dir) == first
    monkeypatch.setenv("NOETL_CREDENTIALS_KEY", "from-the-environment")
    assert credentials_key(data_dir) == "from-the-environment"
    assert path.read_text().strip() == first


# --------------------------------------------------------------------------- register


async def test_register_returns_the_record_without_data(cstack: Stack, db: Db) -> None:
    password = secret()
    response = await cstack.client.post(
        "/api/credentials",
        json={
            "name": "  pg_local ",
            "type": "postgres",
            "data": pg_data(password),
            "meta": {"owner": "team-a"},
            "tags": "db, local,,",
            "description": "the local database",
        },
    )
    assert response.status_code == 200, response.text
    assert response.headers["X-Request-ID"]
    body = response.json()
    assert set(body) == RECORD_KEYS
    assert body["id"].isdigit()
    assert (body["name"], body["type"], body["meta"]) == ("pg_local", "postgres", {"owner": "team-a"})
    assert (body["tags"], body["description"]) == (["db", "local"], "the local database")
    assert body["created_at"] == body["updated_at"]
    assert password not in response.text

    row = await db.one("SELECT * FROM credentials WHERE id = %s", int(body["id"]))
    assert row["name"] == "pg_local" and row["tags"] == ["db", "local"]
    sealed = bytes(row["data_encrypted"])
    assert password.encode() not in sealed and b"db_password" not in sealed
    assert Cipher.from_setting(cstack.settings.credentials_key).decrypt_json(sealed) == pg_data(password)
    # Nor is the secret anywhere else the command went.
    for table, column in (("processed_commands", "outcome"), ("events", "payload")):
        texts = await db.all(f"SELECT {column}::text AS t FROM {table}")
        assert texts and all(password not in r["t"] for r in texts)


async def test_defaults(cstack: Stack) -> None:
    body = await register(cstack, name="plain", data={"token": "x"})
    assert (body["type"], body["meta"], body["tags"], body["description"]) == ("generic", None, [], None)
    body = await register(cstack, name="blank-type", type="  ", data={}, tags=["a", " b ", ""])
    assert (body["type"], body["tags"]) == ("generic", ["a", "b"])


async def test_upsert_keeps_the_id_and_replaces_the_rest(cstack: Stack, db: Db) -> None:
    first = await register(
        cstack, name="api", type="httpBearerAuth", data={"token": "one"}, meta={"v": 1}, tags=["x"]
    )
    second = await register(cstack, name="api", type="bearer", data={"token": "two"})
    assert second["id"] == first["id"]
    assert second["created_at"] == first["created_at"]
    assert second["updated_at"] > first["updated_at"]
    assert (second["type"], second["meta"], second["tags"], second["description"]) == (
        "bearer",
        None,
        [],
        None,
    )
    assert (await get(cstack, "api", include_data="true")).json()["data"] == {"token": "two"}
    assert await db.value("SELECT count(*) FROM credentials") == 1


@pytest.mark.parametrize(
    ("body", "where"),
    [
        ({"data": {"p": "SECRET"}}, "name"),
        ({"name": "   ", "data": {"p": "SECRET"}}, "name"),
        ({"name": "1234", "data": {"p": "SECRET"}}, "name"),
        # NUL in any JSON text is refused as the body is parsed: the JSON, not one field, is invalid.
        ({"name": "x\x00y", "data": {"p": "SECRET"}}, "json_invalid"),
        ({"name": "n"}, "data"),
        ({"name": "n", "data": ["SECRET"]}, "data"),
        ({"name": "n", "data": "SECRET"}, "data"),
        ({"name": "n", "data": None}, "data"),
        ({"name": "n", "data": {"p": "SECRET"}, "meta": "SECRET"}, "meta"),
        ({"name": "n", "data": {"p": "SECRET"}, "tags": [{"a": "SECRET"}]}, "tags"),
    ],
    ids=[
        "no-name",
        "blank-name",
        "digit-name",
        "nul-name",
        "no-data",
        "list",
        "string",
        "null",
        "meta",
        "tags",
    ],
)
async def test_bad_bodies_are_422_and_do_not_echo_the_secret(
    cstack: Stack, db: Db, body: dict[str, Any], where: str
) -> None:
    response = await cstack.client.post("/api/credentials", json=body)
    assert response.status_code == 422, response.text
    issues = response.json()["detail"]
    assert where in {e["loc"][1] for e in issues} | {e["type"] for e in issues}, issues
    assert "SECRET" not in response.text
    assert await db.value("SELECT count(*) FROM credentials") == 0


async def test_a_body_that_is_not_an_object_is_422(cstack: Stack) -> None:
    response = await cstack.client.post("/api/credentials", json=["SECRET"])
    assert response.status_code == 422 and "SECRET" not in response.text
    response = await cstack.client.post(
        "/api/credentials",
        content=b'{"name": "n", "data": {"p": "SECRET"',
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 422 and "SECRET" not in response.text


async def test_the_commands_stream_holds_the_data_sealed(make_stack: StackFactory, servers: Servers) -> None:
    """With no consumer up, the command waits on the stream (a 202): sealed. Applied later, it
    answers through /api/requests."""
    stack = await make_stack(consumers=False, api_reply_timeout=0.5)
    password = secret()
    response = await stack.client.post("/api/credentials", json={"name": "later", "data": pg_data(password)})
    assert response.status_code == 202
    request_id = response.json()["request_id"]
    assert response.headers["Location"] == f"/api/requests/{request_id}"

    nc = await nats.connect(servers.nats_url)
    try:
        stored = await nc.jetstream().get_last_msg(subjects.COMMANDS_STREAM, subjects.CREDENTIALS_REGISTER)
    finally:
        await nc.close()
    assert password.encode() not in stored.data and b"db_password" not in stored.data
    command = Command.model_validate_json(stored.data)
    assert set(command.payload) == {"name", "type", "data_encrypted", "meta", "tags", "description"}
    cipher = Cipher.from_setting(stack.settings.credentials_key)
    assert cipher.decrypt_json(command.payload["data_encrypted"]) == pg_data(password)

    await stack.start_consumers(CONSUMERS)

    async def done() -> dict[str, Any] | None:
        answer = (await stack.client.get(f"/api/requests/{request_id}")).json()
        return answer if answer["state"] == "done" else None

    answer = await wait_for(done, what="the late registration")
    assert answer["status_code"] == 200 and set(answer["response"]) == RECORD_KEYS
    assert answer["response"]["name"] == "later"


async def test_idempotency_key(cstack: Stack, db: Db) -> None:
    headers = {"Idempotency-Key": f"key-{uuid.uuid4().hex}"}
    body = {"name": "idem", "data": {"password": secret()}}
    first = await cstack.client.post("/api/credentials", json=body, headers=headers)
    again = await cstack.client.post("/api/credentials", json=body, headers=headers)
    assert first.status_code == again.status_code == 200
    assert first.json() == again.json()
    assert first.headers["X-Request-ID"] == again.headers["X-Request-ID"]
    assert await db.value("SELECT count(*) FROM events WHERE type = 'credential.registered'") == 1

    changed = await cstack.client.post(
        "/api/credentials", json={**body, "data": {"password": "another"}}, headers=headers
    )
    assert changed.status_code == 409
    assert "another" not in changed.text


async def test_bus_down_is_503(servers: Servers) -> None:
    settings = servers.settings(nats_url=f"nats://127.0.0.1:{free_port()}")
    async with facade(settings, wait_bus=False) as (_, client):
        for response in (
            await client.post("/api/credentials", json={"name": "n", "data": {}}),
            await client.get("/api/credentials"),
            await client.get("/api/credentials/n"),
            await client.delete("/api/credentials/n"),
        ):
            assert response.status_code == 503, response.text
            assert response.headers["Retry-After"]


# --------------------------------------------------------------------------- reads


async def test_get_by_name_and_by_id_with_and_without_data(cstack: Stack) -> None:
    data = {
        "password": secret(),
        "nested": {"list": [1, 2.5, None, True, {"deep": ["x"]}], "unicode": "pässwörd ✓"},
        "empty": {},
    }
    created = await register(cstack, name="nested", type="serviceAccount", data=data, description="d")
    by_name = await get(cstack, "nested")
    by_id = await get(cstack, created["id"])
    assert by_name.status_code == by_id.status_code == 200
    assert by_name.json() == by_id.json() == created
    assert data["password"] not in by_name.text

    with_data = await get(cstack, created["id"], include_data="true")
    assert with_data.status_code == 200
    assert with_data.json() == {**created, "data": data}
    assert (await get(cstack, "nested", include_data="false")).json() == created


async def test_get_unknown_is_404(cstack: Stack) -> None:
    for identifier, detail in (
        ("nobody", "credential not found: name 'nobody'"),
        ("12345", "credential not found: id 12345"),
        ("99999999999999999999999", "credential not found: id 99999999999999999999999"),
    ):
        response = await get(cstack, identifier, include_data="true")
        assert response.status_code == 404
        assert response.json() == {"detail": detail}
    assert (await get(cstack, "a%00b")).status_code == 422


async def test_names_with_slashes_dots_and_spaces(cstack: Stack) -> None:
    created = await register(cstack, name="team/a.pg local", data={"k": "v"})
    response = await get(cstack, "team/a.pg local", include_data="true")
    assert response.status_code == 200 and response.json()["data"] == {"k": "v"}
    deleted = await cstack.client.delete("/api/credentials/team/a.pg local")
    assert deleted.json() == {"status": "deleted", "id": created["id"], "name": "team/a.pg local"}


async def test_list_filters_and_order(cstack: Stack) -> None:
    await register(cstack, name="zeta", type="postgres", data={"p": secret()}, description="Warehouse")
    await register(cstack, name="alpha", type="httpBearerAuth", data={"t": "1"})
    await register(cstack, name="Mid_100%", type="postgres", data={"p": "2"}, description="replica")

    async def names(**params: Any) -> list[str]:
        response = await cstack.client.get("/api/credentials", params=params)
        assert response.status_code == 200, response.text
        body = response.json()
        assert set(body) == {"items", "filter"}
        assert all(set(item) == RECORD_KEYS for item in body["items"])
        return [item["name"] for item in body["items"]]

    assert await names() == ["Mid_100%", "alpha", "zeta"]
    assert await names(type="postgres") == ["Mid_100%", "zeta"]
    assert await names(ctype="httpBearerAuth") == ["alpha"]
    assert await names(q="ALP") == ["alpha"]
    assert await names(q="house") == ["zeta"]
    assert await names(q="REPL", type="postgres") == ["Mid_100%"]
    assert await names(q="%") == ["Mid_100%"]
    assert await names(q="_1") == ["Mid_100%"]
    assert await names(type="none") == []

    body = (await cstack.client.get("/api/credentials", params={"ctype": "postgres", "q": "a"})).json()
    assert body["filter"] == {"type": "postgres", "q": "a"}
    assert (await cstack.client.get("/api/credentials")).json()["filter"] == {"type": None, "q": None}
    assert (await cstack.client.get("/api/credentials", params={"q": "a\x00"})).status_code == 422


# --------------------------------------------------------------------------- delete and events


async def test_delete_then_404(cstack: Stack, db: Db) -> None:
    created = await register(cstack, name="gone", data={"p": secret()})
    kept = await register(cstack, name="kept", data={"p": "x"})
    response = await cstack.client.delete("/api/credentials/gone")
    assert response.status_code == 200
    assert response.headers["X-Request-ID"]
    assert response.json() == {"status": "deleted", "id": created["id"], "name": "gone"}
    assert (await get(cstack, "gone")).status_code == 404
    again = await cstack.client.delete("/api/credentials/gone")
    assert again.status_code == 404
    assert again.json() == {"detail": "credential not found: name 'gone'"}

    by_id = await cstack.client.delete(f"/api/credentials/{kept['id']}")
    assert by_id.json() == {"status": "deleted", "id": kept["id"], "name": "kept"}
    assert await db.value("SELECT count(*) FROM credentials") == 0


async def test_events_name_the_credential_and_carry_no_secret(cstack: Stack, db: Db) -> None:
    password = secret()
    created = await register(cstack, name="evt.cred", type="postgres", data=pg_data(password))
    await cstack.client.delete("/api/credentials/evt.cred")
    rows = await db.all(
        "SELECT type, subject, entity, payload FROM events WHERE entity->>'domain' = 'credentials' "
        "ORDER BY event_id"
    )
    expected = {"id": created["id"], "name": "evt.cred", "type": "postgres"}
    assert [(r["type"], r["subject"], r["payload"]) for r in rows] == [
        ("credential.registered", "noetl.evt.credentials.evt%2Ecred.registered", expected),
        ("credential.deleted", "noetl.evt.credentials.evt%2Ecred.deleted", expected),
    ]
    assert rows[0]["entity"] == {"domain": "credentials", "name": "evt.cred"}

    nc = await nats.connect(cstack.settings.nats_url)
    try:

        async def published() -> list[dict[str, Any]]:
            events = await stream_events(nc.jetstream(), "noetl.evt.credentials.>")
            return events if len(events) == 2 else []

        events = await wait_for(published, what="both events on the stream")
    finally:
        await nc.close()
    assert [e["type"] for e in events] == ["credential.registered", "credential.deleted"]
    assert all(e["payload"] == expected for e in events)
    assert password not in str(events)


# --------------------------------------------------------------------------- keys: rotation, none, foreign


async def test_key_rotation(make_stack: StackFactory) -> None:
    old, new = generate_key(), generate_key()

    async def stack_with(keys: str) -> Stack:
        stack = await make_stack(consumers=False, credentials_key=keys)
        await stack.start_consumers(CONSUMERS)
        return stack

    async def data(stack: Stack, name: str) -> Any:
        response = await get(stack, name, include_data="true")
        return response.status_code, response.json().get("data", response.json().get("detail"))

    stack = await stack_with(old)
    await register(stack, name="sealed-old", data={"v": "old"})
    await stack.stop_consumers()

    stack = await stack_with(f"{old},{new}")  # the new key added, the old still sealing
    assert await data(stack, "sealed-old") == (200, {"v": "old"})
    await register(stack, name="sealed-old-2", data={"v": "old-2"})
    await stack.stop_consumers()

    stack = await stack_with(f"{new},{old}")  # the new key seals, the old still opens
    assert await data(stack, "sealed-old") == (200, {"v": "old"})
    assert await data(stack, "sealed-old-2") == (200, {"v": "old-2"})
    await register(stack, name="sealed-new", data={"v": "new"})
    await stack.stop_consumers()

    stack = await stack_with(new)  # the old key dropped
    assert await data(stack, "sealed-new") == (200, {"v": "new"})
    status, detail = await data(stack, "sealed-old")
    assert status == 503 and "credential 'sealed-old' cannot be opened" in detail


async def test_without_a_key(make_stack: StackFactory, db: Db) -> None:
    """The API without a key refuses to take a secret; consumers without one refuse to store or
    open secrets, and still serve the records."""
    bare = await make_stack(consumers=False, credentials_key=None)
    response = await bare.client.post("/api/credentials", json={"name": "n", "data": {"p": "SECRET"}})
    assert response.status_code == 503
    assert response.json() == {"detail": NOT_CONFIGURED}

    stack = await make_stack(consumers=False)
    await stack.start_consumers(CONSUMERS)
    created = await register(stack, name="stored", data={"p": "x"})
    await stack.stop_consumers()
    await stack.start_consumers(CONSUMERS, credentials_key=None)

    refused = await stack.client.post("/api/credentials", json={"name": "n", "data": {"p": "SECRET"}})
    assert refused.status_code == 503
    assert refused.json() == {"detail": NOT_CONFIGURED}
    assert await db.value("SELECT count(*) FROM credentials WHERE name = 'n'") == 0
    listed = await stack.client.get("/api/credentials")
    assert [i["name"] for i in listed.json()["items"]] == ["stored"]
    assert (await get(stack, "stored")).json() == created
    opened = await get(stack, "stored", include_data="true")
    assert opened.status_code == 503 and opened.json() == {"detail": NOT_CONFIGURED}
    deleted = await stack.client.delete("/api/credentials/stored")
    assert deleted.status_code == 200


async def test_a_key_the_consumers_lack_is_refused_at_registration(make_stack: StackFactory, db: Db) -> None:
    stack = await make_stack(consumers=False, credentials_key=generate_key())
    await stack.start_consumers(CONSUMERS, credentials_key=generate_key())
    response = await stack.client.post("/api/credentials", json={"name": "foreign", "data": {"p": "SECRET"}})
    assert response.status_code == 503
    detail = response.json()["detail"]
    assert "credential 'foreign' was sealed with a key the consumers do not hold" in detail
    assert "SECRET" not in response.text
    assert await db.value("SELECT count(*) FROM credentials") == 0


# --------------------------------------------------------------------------- the worker's query


async def add_job(db: Db, status: str, credentials: list[str]) -> int:
    """A job row (with its catalog entry and execution) that may fetch `credentials`."""
    path = f"cred/{uuid.uuid4().hex}"
    catalog_id = await db.value(
        "INSERT INTO catalog (path, version, kind, content, payload) "
        "VALUES (%s, 1, 'Playbook', '', '{}') RETURNING catalog_id",
        path,
    )
    execution_id = await db.value(
        "INSERT INTO executions (catalog_id, path, version, type, status, workload) "
        "VALUES (%s, %s, 1, 'playbook', 'running', '{}') RETURNING execution_id",
        catalog_id,
        path,
    )
    return await db.value(
        "INSERT INTO jobs (execution_id, step, status, credentials) VALUES (%s, 'step', %s, %s) "
        "RETURNING job_id",
        execution_id,
        status,
        credentials,
    )


@pytest.fixture
async def granted(cstack: Stack) -> AsyncIterator[dict[str, str]]:
    passwords = {"pg_local": secret(), "other": secret()}
    for name, password in passwords.items():
        await register(cstack, name=name, type="postgres", data=pg_data(password))
    yield passwords


async def test_a_live_job_fetches_its_credentials(cstack: Stack, db: Db, granted: dict[str, str]) -> None:
    requester = cstack.app.state.requester
    for status in ("queued", "running"):
        job_id = await add_job(db, status, ["pg_local", "other", "missing"])
        found = await fetch_credentials(requester, job_id, ["pg_local", "other", "pg_local"])
        assert list(found) == ["pg_local", "other"]
        assert found["pg_local"].model_dump() == {
            "name": "pg_local",
            "type": "postgres",
            "data": pg_data(granted["pg_local"]),
        }
        assert granted["pg_local"] not in repr(found)
    assert await fetch_credentials(requester, job_id, []) == {}


@pytest.mark.parametrize(
    ("status", "granted_names", "asked", "code", "message"),
    [
        ("running", ["pg_local"], ["other"], "forbidden", "may not fetch credential(s) 'other'"),
        ("running", ["pg_local"], ["pg_local", "other"], "forbidden", "may not fetch credential(s) 'other'"),
        ("running", [], ["pg_local"], "forbidden", "may not fetch credential(s) 'pg_local'"),
        ("completed", ["pg_local"], ["pg_local"], "forbidden", "is completed: it may fetch no credential"),
        ("failed", ["pg_local"], ["pg_local"], "forbidden", "is failed: it may fetch no credential"),
        ("running", ["missing"], ["missing"], "not_found", "credential(s) not found: 'missing'"),
        (None, [], ["pg_local"], "forbidden", "does not exist: it may fetch no credential"),
    ],
    ids=["other-name", "one-of-two", "none-granted", "completed", "failed", "unknown-name", "unknown-job"],
)
async def test_a_job_is_refused(
    cstack: Stack,
    db: Db,
    granted: dict[str, str],
    status: str | None,
    granted_names: list[str],
    asked: list[str],
    code: str,
    message: str,
) -> None:
    job_id = await add_job(db, status, granted_names) if status else 987654321
    with pytest.raises(CredentialsUnavailable) as info:
        await fetch_credentials(cstack.app.state.requester, job_id, asked)
    assert info.value.code == code
    assert message in str(info.value)
    assert f"job {job_id}" in str(info.value)
    assert all(p not in str(info.value) for p in granted.values())


async def test_refusals_map_to_http_statuses() -> None:
    assert outcome_status(Outcome.failed("r", "forbidden", "no")) == 403
    assert outcome_status(Outcome.failed("r", "not_found", "no")) == 404


async def test_no_store_and_bad_requests_are_typed(make_stack: StackFactory) -> None:
    stack = await make_stack(consumers=False, api_reply_timeout=0.5)
    with pytest.raises(CredentialsUnavailable, match="the credential store did not answer") as info:
        await fetch_credentials(stack.app.state.requester, 1, ["pg_local"])
    assert info.value.code == "unavailable"
    with pytest.raises(CredentialsUnavailable) as info:
        await fetch_credentials(stack.app.state.requester, "not-a-job", ["pg_local"])
    assert info.value.code == "invalid"


# --------------------------------------------------------------------------- logs


async def test_no_secret_in_logs(cstack: Stack, db: Db, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    password = secret()
    await register(cstack, name="logged", type="postgres", data=pg_data(password))
    job_id = await add_job(db, "running", ["logged"])
    found = await fetch_credentials(cstack.app.state.requester, job_id, ["logged"])
    assert found["logged"].data["db_password"] == password
    with pytest.raises(CredentialsUnavailable):
        await fetch_credentials(cstack.app.state.requester, job_id, ["logged", "not-granted"])
    assert (await get(cstack, "logged", include_data="true")).json()["data"]["db_password"] == password
    await cstack.client.post("/api/credentials", json={"data": {"db_password": password}})
    assert caplog.records, "nothing was logged: the test would prove nothing"
    logged = caplog.text + "".join(str(r.__dict__) for r in caplog.records)
    assert password not in logged
