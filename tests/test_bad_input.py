"""Bad input at the HTTP edge: a clear 4xx, never a 500, nothing half-applied, still serving.

Names with dots, spaces, `*`, `>` or non-ASCII letters are valid names: accepted, stored verbatim,
and routed so that one never reaches another. NUL and control characters are refused (422).
"""

from __future__ import annotations

import json

import pytest
from conftest import Db, Stack, StackFactory, stream_events, wait_for

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


# ----------------------------------------------------------------- what JSON or the store cannot hold

DEEP = 500


def nested(depth: int, leaf: bytes = b"1") -> bytes:
    return b'{"a":' * depth + leaf + b"}" * depth


UNHOLDABLE = {
    "nan": (REGISTER, b'{"name": "a", "capacity": NaN}'),
    "infinity": (REGISTER, b'{"name": "a", "capacity": Infinity}'),
    "minus-infinity": (REGISTER, b'{"name": "a", "meta": {"x": -Infinity}}'),
    "1e400": (REGISTER, b'{"name": "a", "capacity": 1e400}'),
    "1e400-in-meta": (REGISTER, b'{"name": "a", "meta": {"x": 1e400}}'),
    "nan-in-labels": (REGISTER, b'{"name": "a", "labels": {"x": NaN}}'),
    "huge-integer": (REGISTER, b'{"name": "a", "meta": {"x": ' + b"9" * 5000 + b"}}"),
    "deep-meta": (REGISTER, b'{"name": "a", "meta": ' + nested(DEEP) + b"}"),
    "deep-list": (REGISTER, b'{"name": "a", "meta": {"x": ' + b"[" * DEEP + b"]" * DEEP + b"}}"),
    "lone-surrogate-name": (REGISTER, b'{"name": "a\\ud800"}'),
    "lone-surrogate-meta": (REGISTER, b'{"name": "a", "meta": {"k": "\\udc00"}}'),
    "lone-surrogate-key": (REGISTER, b'{"name": "a", "meta": {"\\udc00": 1}}'),
    "surrogate-as-utf8": (REGISTER, b'{"name": "a", "meta": {"k": "\xed\xa0\x80"}}'),
    "heartbeat-nan": ("/api/worker/pool/heartbeat", b'{"name": "a", "registration": {"x": NaN}}'),
    "run-nan": ("/api/executions/run", b'{"path": "x", "parameters": {"a": NaN}}'),
    "run-deep": ("/api/executions/run", b'{"path": "x", "parameters": ' + nested(DEEP) + b"}"),
    "run-nul-path": ("/api/executions/run", b'{"path": "x\\u0000"}'),
    "run-surrogate-path": ("/api/executions/run", b'{"path": "x\\ud800"}'),
    "run-nul-parent": ("/api/executions/run", b'{"path": "x", "parent_step": "a\\u0000"}'),
    "cancel-nul-reason": ("/api/executions/1/cancel", b'{"reason": "a\\u0000"}'),
    "catalog-nul-type": ("/api/catalog/register", b'{"content": "a: 1", "resource_type": "P\\u0000"}'),
    "catalog-surrogate": ("/api/catalog/register", b'{"content": "a: \\ud800"}'),
}


@pytest.mark.parametrize(("path", "raw"), UNHOLDABLE.values(), ids=UNHOLDABLE.keys())
async def test_what_json_or_the_store_cannot_hold_is_422_at_the_door(
    stack: Stack, db: Db, path: str, raw: bytes
) -> None:
    """Python's parser takes NaN, Infinity and 1e400 (as infinity), lone surrogates and any depth;
    PostgreSQL and JSON text take none of them. Refused at the door, with FastAPI's 422 shape."""
    response = await stack.client.post(path, content=raw, headers={"Content-Type": "application/json"})
    assert response.status_code == 422, response.text
    [error] = response.json()["detail"]
    assert error["type"] == "json_invalid" and error["ctx"]["error"], error
    await assert_nothing_applied(db)
    await assert_still_serving(stack, db)


async def test_depth_within_the_limit_is_fine(stack: Stack, db: Db) -> None:
    depth = stack.settings.limit_json_depth - 2  # the body and `meta` are two levels already
    body = b'{"name": "deep-enough", "meta": {"x": ' + nested(depth) + b"}}"
    response = await stack.client.post(REGISTER, content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 200, response.text
    too_deep = b'{"name": "too-deep", "meta": {"x": ' + nested(depth + 1) + b"}}"
    headers = {"Content-Type": "application/json"}
    response = await stack.client.post(REGISTER, content=too_deep, headers=headers)
    assert response.status_code == 422
    assert f"deeper than {stack.settings.limit_json_depth}" in response.json()["detail"][0]["ctx"]["error"]


async def test_the_depth_limit_is_a_setting(make_stack: StackFactory, db: Db) -> None:
    stack = await make_stack(limit_json_depth=4)
    four = {"name": "four-levels", "meta": {"a": {"b": {"c": 1}}}}
    assert (await stack.client.post(REGISTER, json=four)).status_code == 200
    five = {"name": "five-levels", "meta": {"a": {"b": {"c": [1]}}}}
    assert (await stack.client.post(REGISTER, json=five)).status_code == 422


async def test_escaped_text_that_is_fine_is_taken_verbatim(stack: Stack, db: Db) -> None:
    """Escapes are not refused for being escapes: only NUL and lone surrogates are."""
    raw = b'{"name": "esc-\\u00e9-\\ud83d\\ude80", "meta": {"path": "C:\\\\u0000dir", "tab": "\\t"}}'
    response = await stack.client.post(REGISTER, content=raw, headers={"Content-Type": "application/json"})
    assert response.status_code == 200, response.text
    row = await db.component("esc-é-🚀")
    assert row["runtime"]["path"] == "C:\\u0000dir" and row["runtime"]["tab"] == "\t"


@pytest.mark.parametrize(
    "body",
    [
        {"name": ""},
        {"name": "\t "},
        {"name": "ok", "capacity": True},
        {"name": "ok", "capacity": "8"},
        {"name": "ok", "capacity": 8.0},
        {"name": "ok", "pid": False},
    ],
    ids=repr,
)
async def test_what_the_document_refuses_is_refused(stack: Stack, db: Db, body: dict) -> None:
    """The OpenAPI document says a name has at least one character that is not a space, and that
    capacity and pid are JSON integers: so does the facade."""
    response = await stack.client.post(REGISTER, json=body)
    assert response.status_code == 422, response.text
    await assert_nothing_applied(db)


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/api/executions/run", {"catalog_id": "²"}),
        ("/api/executions/run", {"catalog_id": "٣"}),
        ("/api/executions/run", {"path": "x", "version": "²"}),
        ("/api/executions/run", {"path": "x", "parent_execution_id": "x" * 2000}),
    ],
    ids=["superscript-id", "arabic-indic-id", "superscript-version", "overlong-id"],
)
async def test_ids_that_only_look_numeric_are_422(stack: Stack, path: str, body: dict) -> None:
    """`str.isdigit` takes ``²`` and `int` does not: such an id once failed in the consumer five
    times and became a dead letter."""
    response = await stack.client.post(path, json=body)
    assert response.status_code == 422, response.text
    assert isinstance(response.json()["detail"], list)


@pytest.mark.parametrize(
    "query",
    [
        "/api/executions?offset=9223372036854775808",
        "/api/executions?offset=99999999999999999999",
        "/api/executions?offset=-1",
        "/api/executions?status=a%00b",
        "/api/executions?path=a%00b",
        "/api/worker/pools?limit=9223372036854775808",
        "/api/worker/pools?offset=9223372036854775808",
        "/api/worker/pools?limit=0",
        "/api/catalog/list?resource_type=a%00",
        "/api/catalog/list?offset=9223372036854775808",
        "/api/catalog/playbooks/a%00b",
        "/api/catalog/playbooks/x?version=%C2%B2",
    ],
)
async def test_query_values_the_store_cannot_take_are_422_not_503(stack: Stack, query: str) -> None:
    """A 503 invites a retry that can never succeed."""
    response = await stack.client.get(query)
    assert response.status_code == 422, response.text
    assert isinstance(response.json()["detail"], list)


@pytest.mark.parametrize(
    "path",
    [
        "/api/executions/%C2%B2",
        "/api/executions/99999999999999999999",
        "/api/executions/1%00",
        "/api/executions/%C2%B2/events",
        "/api/executions/%C2%B2/events/stream",
    ],
)
async def test_an_execution_id_that_cannot_exist_is_404(stack: Stack, path: str) -> None:
    response = await stack.client.get(path)
    assert response.status_code == 404, response.text
    assert "execution not found" in response.json()["detail"]


async def test_cancelling_an_execution_that_cannot_exist_is_404(stack: Stack, db: Db) -> None:
    response = await stack.client.post("/api/executions/%C2%B2/cancel")
    assert response.status_code == 404
    assert await db.value("SELECT count(*) FROM dead_letters") == 0
