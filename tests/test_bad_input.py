"""Bad input at the HTTP edge: a clear 4xx, never a 500, nothing half-applied, still serving.

Names with dots, spaces, `*`, `>` or non-ASCII letters are valid names: accepted, stored verbatim,
and routed so that one never reaches another. NUL and control characters are refused (422).
"""

from __future__ import annotations

import json

import pytest
from conftest import Db, Stack, stream_events, wait_for

from noetl.bus import subjects

REGISTER = "/api/worker/pool/register"

TRICKY_NAMES = [
    "pool.with.dots",
    "pool with spaces",
    "pool*",
    "*",
    ">",
    "pool.>",
    "a.*.b",
    "pool%2Ewith%2Edots",  # what a naive escaping of "pool.with.dots" would produce
    "пул-рабочих",
    "工作池",
    "naïve-pöol",
    "emoji-🚀",
    "tab-free/slash\\back",
    "quote'\"",
    "$SYS.x",
    "_INBOX.x",
]


async def assert_still_serving(stack: Stack, db: Db, name: str = "still-serving") -> None:
    response = await stack.client.post(REGISTER, json={"name": name, "runtime": "python"})
    assert response.status_code == 200, response.text
    assert await db.component(name) is not None


async def assert_nothing_applied(db: Db) -> None:
    assert await db.value("SELECT count(*) FROM runtime_components") == 0
    assert await db.value("SELECT count(*) FROM processed_commands") == 0
    assert await db.value("SELECT count(*) FROM events") == 0


# --------------------------------------------------------------------------- malformed bodies


SYNTAX_ERRORS = {
    "open-brace": b"{",
    "text": b"not json",
    "trailing-comma": b'{"name": "x",}',
    "empty": b"",
    "control-bytes": b"garbage\x01\x02",
    "unclosed-string": b'{"name": "x',
}
# FastAPI answers 400 for a body it cannot decode at all (invalid UTF-8, nesting deeper than the
# parser's recursion limit) and 422 for a JSON syntax error: both clear 4xx, never a 500.
UNDECODABLE = {
    "bad-utf8": b'{"name": "\xff"}',
    "leading-nul": b"\x00\x01garbage",
    "deep-array": b"[" * 5000 + b"]" * 5000,
    "deep-object": b'{"a":' * 5000 + b"1" + b"}" * 5000,
}
BODY_PATHS = [REGISTER, "/api/runtime/register", "/api/worker/pool/heartbeat", "/api/broker/register"]


@pytest.mark.parametrize("raw", SYNTAX_ERRORS.values(), ids=SYNTAX_ERRORS.keys())
@pytest.mark.parametrize("path", BODY_PATHS)
async def test_malformed_json_is_422(stack: Stack, db: Db, raw: bytes, path: str) -> None:
    response = await stack.client.post(path, content=raw, headers={"Content-Type": "application/json"})
    assert response.status_code == 422, response.text
    assert isinstance(response.json()["detail"], list)
    await assert_nothing_applied(db)


@pytest.mark.parametrize("raw", UNDECODABLE.values(), ids=UNDECODABLE.keys())
@pytest.mark.parametrize("path", BODY_PATHS)
async def test_undecodable_body_is_a_clear_4xx(stack: Stack, db: Db, raw: bytes, path: str) -> None:
    response = await stack.client.post(path, content=raw, headers={"Content-Type": "application/json"})
    assert response.status_code in (400, 422), response.text
    assert "detail" in response.json()
    await assert_nothing_applied(db)


async def test_malformed_json_on_delete_is_422(stack: Stack, db: Db) -> None:
    response = await stack.client.request(
        "DELETE",
        "/api/worker/pool/deregister",
        content=b"{oops",
        headers={"Content-Type": "application/json"},
    )
    assert response.status_code == 422
    await assert_still_serving(stack, db)


@pytest.mark.parametrize("body", [[], "a string", 42, None, [{"name": "x"}]], ids=repr)
async def test_body_not_an_object_is_422(stack: Stack, db: Db, body) -> None:
    response = await stack.client.post(
        REGISTER, content=json.dumps(body), headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 422
    await assert_nothing_applied(db)


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"name": None},
        {"name": ""},
        {"name": "   "},
        {"name": {"a": 1}},
        {"name": ["a"]},
        {"name": "x" * 256},
        {"name": "ok", "capacity": "many"},
        {"name": "ok", "capacity": -1},
        {"name": "ok", "capacity": 2**40},
        {"name": "ok", "capacity": 1.5},
        {"name": "ok", "labels": ["a", "b"]},
        {"name": "ok", "labels": "a=b"},
        {"name": "ok", "meta": 5},
        {"name": "ok", "pid": "abc"},
        {"name": "ok", "pid": -5},
        {"name": "ok", "pid": 2**63},
        {"name": "ok", "status": ""},
        {"name": "ok", "status": "   "},
        {"name": "ok", "status": {"s": 1}},
        {"name": "ok", "status": "x" * 65},
        {"name": "ok", "runtime": {"type": "python"}},
        {"name": "ok", "hostname": ["h"]},
        {"name": "ok", "uri": {"u": 1}},
    ],
    ids=repr,
)
async def test_wrong_types_are_422(stack: Stack, db: Db, body: dict) -> None:
    response = await stack.client.post(REGISTER, json=body)
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert isinstance(detail, list) and detail
    await assert_nothing_applied(db)


@pytest.mark.parametrize(
    "body",
    [
        {"name": "x", "kind": "queue"},
        {"name": "x", "component_type": "WORKER_POOL"},
        {"name": "x", "kind": ""},
        {"name": "x", "kind": None},
        {"name": "x", "kind": 1},
        {"name": "x", "component_type": "server_api.>", "uri": "http://x"},
    ],
    ids=repr,
)
async def test_unknown_kind_is_422(stack: Stack, db: Db, body: dict) -> None:
    response = await stack.client.post("/api/runtime/register", json=body)
    assert response.status_code == 422, response.text
    await assert_nothing_applied(db)
    response = await stack.client.request("DELETE", "/api/runtime/deregister", json=body)
    assert response.status_code == 422
    await assert_nothing_applied(db)


@pytest.mark.parametrize(
    "body",
    [
        {"name": ["x"]},
        {"name": "x", "registration": "yes"},
        {"name": "x", "registration": [1]},
        {"name": "bad\x00name"},
        {"name": "bad\x07bell"},
    ],
    ids=repr,
)
async def test_heartbeat_bad_body_is_422(stack: Stack, db: Db, body: dict) -> None:
    response = await stack.client.post("/api/worker/pool/heartbeat", json=body)
    assert response.status_code == 422
    await assert_nothing_applied(db)


# --------------------------------------------------------------------------- NUL and control characters


@pytest.mark.parametrize(
    "body",
    [
        {"name": "nul\x00name"},
        {"name": "line\nbreak"},
        {"name": "carriage\rreturn"},
        {"name": "escape\x1b[31m"},
        {"name": "del\x7f"},
        {"name": "zero\u200bwidth"},
        {"name": "rtl\u202eoverride"},
        {"name": "ok", "runtime": "py\x00thon"},
        {"name": "ok", "hostname": "h\x00"},
        {"name": "ok", "status": "re\x00ady"},
        {"name": "ok", "uri": "http://x\x00"},
        {"name": "ok", "labels": {"k": "v\x00"}},
        {"name": "ok", "labels": {"k\x00": "v"}},
        {"name": "ok", "meta": {"deep": [{"x": "\x00"}]}},
    ],
    ids=repr,
)
async def test_nul_and_control_characters_are_422(stack: Stack, db: Db, body: dict) -> None:
    response = await stack.client.post(REGISTER, json=body)
    assert response.status_code == 422, response.text
    await assert_nothing_applied(db)


async def test_unicode_escape_for_nul_is_422(stack: Stack, db: Db) -> None:
    raw = b'{"name": "a\\u0000b", "runtime": "python"}'
    response = await stack.client.post(REGISTER, content=raw, headers={"Content-Type": "application/json"})
    assert response.status_code == 422
    await assert_nothing_applied(db)


# --------------------------------------------------------------------------- tricky but valid names


@pytest.mark.parametrize("name", TRICKY_NAMES)
async def test_tricky_names_are_accepted_verbatim(stack: Stack, db: Db, name: str) -> None:
    registered = await stack.client.post(REGISTER, json={"name": name, "runtime": "python"})
    assert registered.status_code == 200, registered.text
    assert registered.json()["name"] == name
    row = await db.component(name)
    assert row is not None and row["name"] == name

    listed = (await stack.client.get("/api/worker/pools")).json()
    assert [i["name"] for i in listed["items"]] == [name]

    beat = await stack.client.post("/api/worker/pool/heartbeat", json={"name": name})
    assert beat.status_code == 200, beat.text
    assert beat.json() == {"status": "ok", "name": name, "runtime_id": registered.json()["runtime_id"]}

    dereg = await stack.client.request("DELETE", "/api/worker/pool/deregister", json={"name": name})
    assert dereg.status_code == 200
    assert dereg.json()["name"] == name
    assert (await db.component(name))["status"] == "offline"

    outcome = await stack.client.get(f"/api/requests/{registered.headers['X-Request-ID']}")
    assert outcome.json()["response"]["name"] == name


async def test_tricky_names_never_reach_each_other(stack: Stack, db: Db, nc) -> None:
    """Every tricky name registered, all marked offline; a beat for one brings back only that one."""
    for name in TRICKY_NAMES:
        assert (await stack.client.post(REGISTER, json={"name": name})).status_code == 200
        response = await stack.client.request("DELETE", "/api/worker/pool/deregister", json={"name": name})
        assert response.status_code == 200
    listed = (await stack.client.get("/api/worker/pools")).json()
    assert sorted(i["name"] for i in listed["items"]) == sorted(TRICKY_NAMES)
    assert {i["status"] for i in listed["items"]} == {"offline"}

    for name in ["*", ">", "pool.>", "pool.with.dots"]:
        beat = await stack.client.post("/api/worker/pool/heartbeat", json={"name": name})
        assert beat.status_code == 200
        assert beat.json()["name"] == name
        ready = (await stack.client.get("/api/worker/pools", params={"status": "ready"})).json()
        assert [i["name"] for i in ready["items"]] == [name], f"a beat for {name!r} reached others"
        await stack.client.request("DELETE", "/api/worker/pool/deregister", json={"name": name})

    # The events carry the exact name, on a subject a wildcard subscriber can rely on.
    async def relayed():
        events = await stream_events(nc.jetstream(), "noetl.evt.runtime.worker_pool.*.registered")
        return events if len(events) == len(TRICKY_NAMES) else None

    events = await wait_for(relayed, what="registered events")
    assert sorted(e["entity"]["name"] for e in events) == sorted(TRICKY_NAMES)
    star = await stream_events(nc.jetstream(), f"noetl.evt.runtime.worker_pool.{subjects.token('*')}.>")
    assert {e["entity"]["name"] for e in star} == {"*"}


async def test_unknown_tricky_name_heartbeat_is_404_with_its_name(stack: Stack) -> None:
    for name in ["a.b", "*", ">", "名前"]:
        response = await stack.client.post("/api/worker/pool/heartbeat", json={"name": name})
        assert response.status_code == 404
        assert response.json() == {"detail": {"status": "unknown", "name": name}}


async def test_255_character_name_is_fine(stack: Stack, db: Db) -> None:
    name = "é" * 255  # 510 bytes in UTF-8, and far longer as a subject token
    response = await stack.client.post(REGISTER, json={"name": name})
    assert response.status_code == 200
    beat = await stack.client.post("/api/worker/pool/heartbeat", json={"name": name})
    assert beat.status_code == 200
    assert (await db.component(name)) is not None


# --------------------------------------------------------------------------- size limit


async def test_oversized_body_is_413(stack: Stack, db: Db) -> None:
    limit = stack.settings.api_max_body_bytes
    body = json.dumps({"name": "big", "meta": {"blob": "x" * (limit + 10)}}).encode()
    response = await stack.client.post(REGISTER, content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 413
    assert "detail" in response.json()
    await assert_nothing_applied(db)
    await assert_still_serving(stack, db)


async def test_oversized_chunked_body_is_413(stack: Stack, db: Db) -> None:
    """No Content-Length: the limit is enforced on the bytes actually read."""
    limit = stack.settings.api_max_body_bytes

    async def chunks():
        yield b'{"name": "big-chunked", "meta": {"blob": "'
        for _ in range(limit // 4096 + 2):
            yield b"x" * 4096
        yield b'"}}'

    response = await stack.client.post(
        REGISTER, content=chunks(), headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 413
    await assert_nothing_applied(db)
    await assert_still_serving(stack, db)


async def test_body_just_under_limit_is_accepted(stack: Stack, db: Db) -> None:
    limit = stack.settings.api_max_body_bytes
    envelope = json.dumps({"name": "near-limit", "meta": {"blob": ""}})
    body = json.dumps({"name": "near-limit", "meta": {"blob": "y" * (limit // 2 - len(envelope))}})
    assert len(body.encode()) < limit
    response = await stack.client.post(REGISTER, content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 200, response.text
    assert (await db.component("near-limit"))["runtime"]["blob"].startswith("y")


# --------------------------------------------------------------------------- other edges


@pytest.mark.parametrize("request_id", ["has.dot", "star*", "a%20b", "x" * 129])
async def test_request_outcome_bad_id_is_422(stack: Stack, request_id: str) -> None:
    response = await stack.client.get(f"/api/requests/{request_id}")
    assert response.status_code == 422


@pytest.mark.parametrize("params", [{"status": "a\x00b"}, {"runtime": "\x00"}])
async def test_list_filter_with_nul_is_422(stack: Stack, params: dict) -> None:
    for path in ("/api/worker/pools", "/api/brokers"):
        response = await stack.client.get(path, params=params)
        assert response.status_code == 422, response.text


async def test_list_filter_odd_but_valid(stack: Stack) -> None:
    await stack.client.post(REGISTER, json={"name": "filtered", "runtime": "py.thon*"})
    for params, count in [({"runtime": "x" * 5000}, 0), ({"runtime": "py.thon*"}, 1), ({"status": "*"}, 0)]:
        response = await stack.client.get("/api/worker/pools", params=params)
        assert response.status_code == 200, response.text
        assert response.json()["count"] == count


async def test_wrong_method_and_content_type(stack: Stack, db: Db) -> None:
    assert (await stack.client.get(REGISTER)).status_code == 405
    assert (await stack.client.put("/api/worker/pools", json={})).status_code == 405
    form = await stack.client.post(REGISTER, data={"name": "form"})
    assert form.status_code == 422
    await assert_nothing_applied(db)


async def test_idempotency_key_too_long_is_422(stack: Stack, db: Db) -> None:
    response = await stack.client.post(
        REGISTER, json={"name": "long-key"}, headers={"Idempotency-Key": "k" * 300}
    )
    assert response.status_code == 422
    [error] = response.json()["detail"]
    assert error["type"] == "string_too_long"
    assert error["loc"] == ["header", "idempotency-key"]
    assert error["ctx"] == {"max_length": 255}
    await assert_nothing_applied(db)


async def test_every_process_keeps_serving_after_bad_input(stack: Stack, db: Db) -> None:
    for raw in [b"{", b"\x00", b"[" * 5000]:
        await stack.client.post(REGISTER, content=raw, headers={"Content-Type": "application/json"})
    await stack.client.post(REGISTER, json={"name": "nul\x00"})
    await assert_still_serving(stack, db)
    beat = await stack.client.post("/api/worker/pool/heartbeat", json={"name": "still-serving"})
    assert beat.status_code == 200
