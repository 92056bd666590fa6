"""Executions through the bus: run (every field, alias and lookup), merge semantics, idempotent
runs, cancel, the reads, and bad input."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
from conftest import Db, Servers, Stack, StackFactory
from helpers_execution import (
    DETAIL_KEYS,
    DOMAIN_CONSUMERS,
    EVENT_KEYS,
    HELLO_PATH,
    HELLO_WORKLOAD,
    RESPONSE_KEYS,
    domain_stack,
    iso,
    playbook,
    register,
    run,
)
from psycopg.types.json import Jsonb

RUN = "/api/executions/run"
RUN_PATHS = [RUN, "/api/execute"]


@pytest.fixture
async def xstack(make_stack: StackFactory, servers: Servers) -> AsyncIterator[Stack]:
    async with domain_stack(make_stack, servers) as stack:
        yield stack


@pytest.fixture
async def hello(xstack: Stack) -> list[dict]:
    """Two versions of the hello-world playbook (the second says "Hello v2")."""
    v1 = await register(xstack.client)
    v2 = await register(xstack.client, playbook(workload={**HELLO_WORKLOAD, "message": "Hello v2"}))
    return [v1, v2]


async def detail(stack: Stack, execution_id: str) -> dict:
    response = await stack.client.get(f"/api/executions/{execution_id}")
    assert response.status_code == 200, response.text
    return response.json()


def key() -> str:
    return f"run-{uuid.uuid4().hex}"


# --------------------------------------------------------------------------- run: the response


@pytest.mark.parametrize("path", RUN_PATHS)
async def test_run_response_shape(xstack: Stack, hello: list[dict], db: Db, path: str) -> None:
    before = datetime.now(UTC) - timedelta(seconds=5)
    response = await xstack.client.post(path, json={"playbook_id": HELLO_PATH})
    assert response.status_code == 200
    body = response.json()
    assert set(body) == RESPONSE_KEYS
    assert isinstance(body["execution_id"], str) and body["execution_id"].isdigit()
    assert body["id"] == body["execution_id"]
    assert body["catalog_id"] == hello[1]["catalog_id"]
    assert body["path"] == body["playbook_id"] == HELLO_PATH
    assert body["playbook_name"] == "hello_world"
    assert body["version"] == "2"
    assert body["type"] == body["execution_type"] == "playbook"
    assert body["status"] == "running"
    assert body["progress"] == 0
    assert body["end_time"] is None and body["result"] is None and body["error"] is None
    for field in ("timestamp", "start_time"):
        assert body[field], field
        assert before < iso(body[field]) < datetime.now(UTC) + timedelta(seconds=5)

    row = await db.one("SELECT * FROM executions WHERE execution_id = %s", int(body["execution_id"]))
    assert row["status"] == "running" and row["catalog_id"] == int(hello[1]["catalog_id"])
    assert row["workload"]["message"] == "Hello v2"
    # The record and its start event committed together.
    events = await db.all(
        "SELECT type, payload FROM events"
        " WHERE entity->>'execution_id' = %s AND entity->>'domain' = 'execution'",
        body["execution_id"],
    )
    # The run walked from `start` to `greet`, whose job waits for a worker.
    assert [(e["type"], e["payload"]["node_name"]) for e in events] == [
        ("execution_start", "hello_world"),
        ("step_started", "start"),
        ("step_completed", "start"),
        ("step_started", "greet"),
    ]
    assert events[0]["payload"]["meta"]["catalog_id"] == hello[1]["catalog_id"]


async def test_run_and_execute_are_identical(xstack: Stack, hello: list[dict]) -> None:
    a = await run(xstack.client, RUN, path=HELLO_PATH, version=1)
    b = await run(xstack.client, "/api/execute", path=HELLO_PATH, version=1)
    drop = {"execution_id", "id", "timestamp", "start_time"}
    assert {k: v for k, v in a.items() if k not in drop} == {k: v for k, v in b.items() if k not in drop}
    assert int(b["execution_id"]) > int(a["execution_id"])


async def test_executions_without_action_steps_complete(xstack: Stack, db: Db) -> None:
    text = (
        "kind: Playbook\nmetadata: {path: only/control}\nworkflow: [{step: start, next: [end]}, {step: end}]"
    )
    await register(xstack.client, text)
    body = await run(xstack.client, path="only/control")
    row = await db.one(
        "SELECT status, end_time FROM executions WHERE execution_id = %s", int(body["execution_id"])
    )
    assert row["status"] == "completed" and row["end_time"] is not None
    got = await detail(xstack, body["execution_id"])
    assert [(e["event_type"], e["node_name"]) for e in got["events"]] == [
        ("execution_start", "control"),
        ("step_started", "start"),
        ("step_completed", "start"),
        ("step_started", "end"),
        ("step_completed", "end"),
        ("execution_complete", "control"),
    ]


async def test_runs_applied_as_one_batch_each_get_their_own_outcome(
    make_stack: StackFactory, servers: Servers, db: Db
) -> None:
    """Runs queued while the consumer is away arrive together and are accepted set-based: every
    outcome still belongs to its own request, and each execution starts on its own."""
    async with domain_stack(make_stack, servers, api_reply_timeout=0.5) as stack:
        await register(stack.client)
        await register(
            stack.client,
            "kind: Playbook\nmetadata: {path: only/control}\n"
            "workflow: [{step: start, next: [end]}, {step: end}]",
        )
        bad_when = "{{ workload.no_such_key.deeper }}"
        await register(
            stack.client,
            "kind: Playbook\nmetadata: {path: bad/when}\nworkflow:\n"
            f"  - {{step: start, next: [{{step: end, when: '{bad_when}'}}]}}\n  - {{step: end}}\n",
        )
        await stack.stop_consumers()
        sent = [
            {"path": HELLO_PATH, "parameters": {"message": "first"}},
            {"path": "no/such/playbook"},
            {"path": "only/control"},
            {"path": HELLO_PATH, "parameters": {"message": "second"}},
            {"path": "bad/when"},
            {"path": HELLO_PATH, "version": "7"},
            {"path": HELLO_PATH, "parameters": {"message": "third"}},
        ]
        ids = []
        for body in sent:
            response = await stack.client.post(RUN, json=body)
            assert response.status_code == 202, response.text
            ids.append(response.json()["request_id"])
        await stack.start_consumers(DOMAIN_CONSUMERS)

        outcomes = []
        for request_id in ids:
            for _ in range(100):
                got = (await stack.client.get(f"/api/requests/{request_id}")).json()
                if got["state"] == "done":
                    break
                await asyncio.sleep(0.1)
            outcomes.append(got)
        assert [o["status_code"] for o in outcomes] == [200, 404, 200, 200, 200, 404, 200]
        assert "no/such/playbook" in outcomes[1]["response"]["detail"]
        assert "version 7" in outcomes[5]["response"]["detail"]

        started = [o["response"] for o in outcomes if o["status_code"] == 200]
        assert [b["path"] for b in started] == [
            HELLO_PATH,
            "only/control",
            HELLO_PATH,
            "bad/when",
            HELLO_PATH,
        ]
        rows = {
            r["execution_id"]: r
            for r in await db.all("SELECT execution_id, status, workload, error FROM executions")
        }
        assert sorted(rows) == sorted(int(b["execution_id"]) for b in started)
        messages = [rows[int(started[i]["execution_id"])]["workload"]["message"] for i in (0, 2, 4)]
        assert messages == ["first", "second", "third"]

        # Outcomes are recorded in the transaction that started (or ended) each execution.
        final = {
            r["execution_id"]: r for r in await db.all("SELECT execution_id, status, error FROM executions")
        }
        assert final[int(started[1]["execution_id"])]["status"] == "completed"
        assert final[int(started[3]["execution_id"])]["status"] == "failed"
        assert "no_such_key" in final[int(started[3]["execution_id"])]["error"]
        for i in (0, 2, 4):
            assert final[int(started[i]["execution_id"])]["status"] == "running"
        jobs = await db.all(
            "SELECT execution_id, step, status FROM jobs WHERE kind = 'action' ORDER BY job_id"
        )
        assert sorted(j["execution_id"] for j in jobs) == sorted(
            int(started[i]["execution_id"]) for i in (0, 2, 4)
        )
        assert {(j["step"], j["status"]) for j in jobs} == {("greet", "queued")}
        starts = await db.all(
            "SELECT entity->>'execution_id' AS id, payload->'meta'->>'request_id' AS request_id FROM events"
            " WHERE type = 'execution_start'"
        )
        assert {s["id"]: s["request_id"] for s in starts} == {
            b["execution_id"]: ids[[0, 2, 3, 4, 6][i]] for i, b in enumerate(started)
        }


# --------------------------------------------------------------------------- run: lookups and aliases


@pytest.mark.parametrize("path", RUN_PATHS)
async def test_lookup_by_catalog_id(xstack: Stack, hello: list[dict], path: str) -> None:
    v1 = hello[0]
    for catalog_id in (v1["catalog_id"], int(v1["catalog_id"])):
        body = await run(xstack.client, path, catalog_id=catalog_id)
        assert (body["catalog_id"], body["version"]) == (v1["catalog_id"], "1")
    # catalog_id wins over path and version.
    body = await run(xstack.client, path, catalog_id=v1["catalog_id"], path=HELLO_PATH, version="2")
    assert body["version"] == "1"


@pytest.mark.parametrize("field", ["path", "playbook_id"])
async def test_lookup_by_path_and_version(xstack: Stack, hello: list[dict], field: str) -> None:
    cases = [({}, "2"), ({"version": "latest"}, "2"), ({"version": "LATEST"}, "2"), ({"version": 1}, "1")]
    cases += [({"version": "1"}, "1"), ({"version": 2}, "2"), ({"version": " 1 "}, "1")]
    for extra, version in cases:
        body = await run(xstack.client, **{field: HELLO_PATH}, **extra)
        assert body["version"] == version, extra
        assert body["catalog_id"] == hello[int(version) - 1]["catalog_id"]
        assert body["playbook_id"] == body["path"] == HELLO_PATH


async def test_path_wins_over_playbook_id_and_slashes_are_ignored(xstack: Stack, hello: list[dict]) -> None:
    await register(xstack.client, playbook("other/book", name="book"))
    body = await run(xstack.client, path="other/book", playbook_id=HELLO_PATH)
    assert (body["path"], body["playbook_name"]) == ("other/book", "book")
    body = await run(xstack.client, playbook_id=f"/{HELLO_PATH}/")
    assert body["path"] == HELLO_PATH


async def test_integer_path_is_a_string(xstack: Stack) -> None:
    await register(xstack.client, playbook("12345", name=None))
    body = await run(xstack.client, path=12345)
    assert body["path"] == body["playbook_id"] == body["playbook_name"] == "12345"


@pytest.mark.parametrize(
    ("sent", "expected"),
    [
        ({}, "playbook"),
        ({"type": "tool"}, "tool"),
        ({"execution_type": "model"}, "model"),
        ({"execution_type": "workflow"}, "workflow"),
        ({"type": "playbook"}, "playbook"),
    ],
)
async def test_type_and_execution_type_alias(
    xstack: Stack, hello: list[dict], sent: dict, expected: str
) -> None:
    body = await run(xstack.client, path=HELLO_PATH, **sent)
    assert body["type"] == body["execution_type"] == expected
    assert (await detail(xstack, body["execution_id"]))["execution_type"] == expected


async def test_parameters_and_input_payload_alias(xstack: Stack, hello: list[dict], db: Db) -> None:
    a = await run(xstack.client, path=HELLO_PATH, parameters={"message": "via parameters"})
    b = await run(xstack.client, path=HELLO_PATH, input_payload={"message": "via input_payload"})
    c = await run(xstack.client, path=HELLO_PATH, parameters=None)
    assert (await detail(xstack, a["execution_id"]))["workload"]["message"] == "via parameters"
    assert (await detail(xstack, b["execution_id"]))["workload"]["message"] == "via input_payload"
    assert (await detail(xstack, c["execution_id"]))["workload"]["message"] == "Hello v2"
    row = await db.one("SELECT parameters FROM executions WHERE execution_id = %s", int(b["execution_id"]))
    assert row["parameters"] == {"message": "via input_payload"}


async def test_sync_to_postgres_and_metadata_accepted(xstack: Stack, hello: list[dict]) -> None:
    for sync in (True, False):
        body = await run(
            xstack.client, path=HELLO_PATH, sync_to_postgres=sync, metadata={"origin": "test", "n": [1, 2]}
        )
        assert (await detail(xstack, body["execution_id"]))["metadata"] == {"origin": "test", "n": [1, 2]}


@pytest.mark.parametrize(
    "sent",
    [
        {"context": {"parent_execution_id": 111, "parent_event_id": "222", "parent_step": "child"}},
        {"parent_execution_id": "111", "parent_event_id": 222, "parent_step": "child"},
        {
            "context": {"parent_execution_id": 111, "parent_event_id": 222},
            "parent_execution_id": "999",
            "parent_step": "child",
        },
    ],
    ids=["nested", "flat", "nested-wins-flat-fills"],
)
async def test_parent_context_nested_or_flat(xstack: Stack, hello: list[dict], sent: dict) -> None:
    body = await run(xstack.client, path=HELLO_PATH, **sent)
    got = await detail(xstack, body["execution_id"])
    assert (got["parent_execution_id"], got["parent_event_id"], got["parent_step"]) == ("111", "222", "child")


async def test_no_parent_context(xstack: Stack, hello: list[dict]) -> None:
    got = await detail(xstack, (await run(xstack.client, path=HELLO_PATH))["execution_id"])
    assert got["parent_execution_id"] is got["parent_event_id"] is got["parent_step"] is None
    assert got["metadata"] is None


# --------------------------------------------------------------------------- merge semantics


@pytest.mark.parametrize(
    ("parameters", "merge", "expected"),
    [
        ({}, False, HELLO_WORKLOAD),
        ({}, True, HELLO_WORKLOAD),
        (
            {"nested": {"a": 9}},
            False,
            {"message": "Hello World", "nested": {"a": 9}, "list": [1, 2]},
        ),
        (
            {"nested": {"a": 9}},
            True,
            {"message": "Hello World", "nested": {"a": 9, "b": 2}, "list": [1, 2]},
        ),
        (
            {"nested": {"c": {"d": 1}}, "extra": True},
            True,
            {
                "message": "Hello World",
                "nested": {"a": 1, "b": 2, "c": {"d": 1}},
                "list": [1, 2],
                "extra": True,
            },
        ),
        ({"list": [3]}, True, {"message": "Hello World", "nested": {"a": 1, "b": 2}, "list": [3]}),
        ({"nested": "flat now"}, True, {"message": "Hello World", "nested": "flat now", "list": [1, 2]}),
        ({"message": None}, False, {"message": None, "nested": {"a": 1, "b": 2}, "list": [1, 2]}),
    ],
    ids=[
        "empty-shallow",
        "empty-deep",
        "shallow",
        "deep",
        "deep-adds",
        "list-replaced",
        "scalar-over-map",
        "null",
    ],
)
async def test_merge_semantics(xstack: Stack, db: Db, parameters: dict, merge: bool, expected: dict) -> None:
    await register(xstack.client)
    body = await run(xstack.client, path=HELLO_PATH, parameters=parameters, merge=merge)
    got = await detail(xstack, body["execution_id"])
    assert got["workload"] == expected
    row = await db.one(
        "SELECT merge, parameters FROM executions WHERE execution_id = %s", int(body["execution_id"])
    )
    assert row["merge"] is merge and row["parameters"] == parameters


async def test_playbook_without_workload(xstack: Stack) -> None:
    text = "kind: Playbook\nmetadata: {path: no/workload}\nworkflow: [{step: start}]\n"
    await register(xstack.client, text)
    for merge in (False, True):
        body = await run(xstack.client, path="no/workload", parameters={"x": {"y": 1}}, merge=merge)
        assert (await detail(xstack, body["execution_id"]))["workload"] == {"x": {"y": 1}}


# --------------------------------------------------------------------------- run: not found and bad input


@pytest.mark.parametrize("path", RUN_PATHS)
@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({"catalog_id": "987654321"}, "987654321"),
        ({"catalog_id": 987654321}, "987654321"),
        ({"catalog_id": "abc"}, "abc"),
        ({"catalog_id": "99999999999999999999999"}, "99999999999999999999999"),
        ({"catalog_id": "-1"}, "-1"),
        ({"path": "no/such/book"}, "no/such/book"),
        ({"playbook_id": "no/such/book", "version": 3}, "no/such/book"),
        ({"path": HELLO_PATH, "version": 7}, "7"),
        ({"path": HELLO_PATH, "version": "123456789012345678901234"}, HELLO_PATH),
    ],
    ids=[
        "catalog-id",
        "catalog-id-int",
        "catalog-id-text",
        "catalog-id-huge",
        "catalog-id-negative",
        "path",
        "playbook-id",
        "version",
        "version-huge",
    ],
)
async def test_not_found_is_404_and_says_what(
    xstack: Stack, hello: list[dict], db: Db, path: str, body: dict, words: str
) -> None:
    response = await xstack.client.post(path, json=body)
    assert response.status_code == 404, response.text
    detail_text = response.json()["detail"]
    assert "not found" in detail_text and words in detail_text, detail_text
    assert await db.value("SELECT count(*) FROM executions") == 0


@pytest.mark.parametrize("path", RUN_PATHS)
@pytest.mark.parametrize(
    "body",
    [
        {},
        {"parameters": {"a": 1}},
        {"path": ""},
        {"path": None, "playbook_id": None, "catalog_id": None},
        {"version": "1"},
        {"path": HELLO_PATH, "parameters": [1, 2]},
        {"path": HELLO_PATH, "parameters": "text"},
        {"path": HELLO_PATH, "parameters": 5},
        {"path": HELLO_PATH, "input_payload": [1]},
        {"path": HELLO_PATH, "version": "x"},
        {"path": HELLO_PATH, "version": "0"},
        {"path": HELLO_PATH, "version": "-1"},
        {"path": HELLO_PATH, "version": "1.5"},
        {"path": HELLO_PATH, "version": [1]},
        {"path": HELLO_PATH, "type": "job"},
        {"path": HELLO_PATH, "execution_type": 5},
        {"path": HELLO_PATH, "merge": "perhaps"},
        {"path": HELLO_PATH, "metadata": [1]},
        {"path": HELLO_PATH, "context": "parent"},
        {"path": {"a": 1}},
        {"catalog_id": [1]},
        {"path": HELLO_PATH, "parameters": {"nul": "a\u0000b"}},
    ],
    ids=lambda b: str(b)[:60],
)
async def test_bad_run_is_422(xstack: Stack, hello: list[dict], db: Db, path: str, body: dict) -> None:
    response = await xstack.client.post(path, json=body)
    assert response.status_code == 422, response.text
    assert isinstance(response.json()["detail"], list)
    assert await db.value("SELECT count(*) FROM executions") == 0


@pytest.mark.parametrize("raw", [b"[]", b'"run"', b"{", b"", b"null"])
async def test_run_body_not_an_object_is_422(xstack: Stack, raw: bytes) -> None:
    response = await xstack.client.post(RUN, content=raw, headers={"Content-Type": "application/json"})
    assert response.status_code == 422


async def test_still_serving_after_bad_input(xstack: Stack, hello: list[dict]) -> None:
    for body in ({"catalog_id": "x"}, {"path": "nope"}, {}, {"path": HELLO_PATH, "parameters": [1]}):
        await xstack.client.post(RUN, json=body)
    assert (await run(xstack.client, path=HELLO_PATH))["status"] == "running"


# --------------------------------------------------------------------------- Idempotency-Key


@pytest.mark.parametrize("path", RUN_PATHS)
async def test_same_key_gives_one_execution(xstack: Stack, hello: list[dict], db: Db, path: str) -> None:
    headers = {"Idempotency-Key": key()}
    body = {"path": HELLO_PATH, "parameters": {"n": 1}}
    responses = [await xstack.client.post(path, json=body, headers=headers) for _ in range(3)]
    assert {r.status_code for r in responses} == {200}
    assert len({r.json()["execution_id"] for r in responses}) == 1
    assert responses[0].json() == responses[2].json()
    assert await db.value("SELECT count(*) FROM executions") == 1
    assert await db.value("SELECT count(*) FROM events WHERE type = 'execution_start'") == 1


async def test_same_key_concurrently_gives_one_execution(xstack: Stack, hello: list[dict], db: Db) -> None:
    headers = {"Idempotency-Key": key()}
    responses = await asyncio.gather(
        *[xstack.client.post(RUN, json={"path": HELLO_PATH}, headers=headers) for _ in range(12)]
    )
    assert {r.status_code for r in responses} == {200}
    assert len({r.json()["execution_id"] for r in responses}) == 1
    assert await db.value("SELECT count(*) FROM executions") == 1


async def test_different_keys_and_no_key_give_new_executions(
    xstack: Stack, hello: list[dict], db: Db
) -> None:
    ids = set()
    for headers in ({"Idempotency-Key": key()}, {"Idempotency-Key": key()}, {}, {}):
        ids.add(
            (await xstack.client.post(RUN, json={"path": HELLO_PATH}, headers=headers)).json()["execution_id"]
        )
    assert len(ids) == 4
    assert await db.value("SELECT count(*) FROM executions") == 4


async def test_same_key_different_body_is_409(xstack: Stack, hello: list[dict], db: Db) -> None:
    headers = {"Idempotency-Key": key()}
    first = await xstack.client.post(RUN, json={"path": HELLO_PATH, "parameters": {"n": 1}}, headers=headers)
    assert first.status_code == 200
    other = await xstack.client.post(RUN, json={"path": HELLO_PATH, "parameters": {"n": 2}}, headers=headers)
    assert other.status_code == 409
    assert await db.value("SELECT count(*) FROM executions") == 1


async def test_idempotent_run_that_failed_stays_failed(xstack: Stack, db: Db) -> None:
    """A key whose run was refused (404) answers the same refusal, even after the playbook exists."""
    headers = {"Idempotency-Key": key()}
    first = await xstack.client.post(RUN, json={"path": HELLO_PATH}, headers=headers)
    assert first.status_code == 404
    await register(xstack.client)
    again = await xstack.client.post(RUN, json={"path": HELLO_PATH}, headers=headers)
    assert again.status_code == 404 and again.json() == first.json()
    assert await db.value("SELECT count(*) FROM executions") == 0


# --------------------------------------------------------------------------- cancel


async def test_cancel(xstack: Stack, hello: list[dict], db: Db) -> None:
    started = await run(xstack.client, path=HELLO_PATH)
    eid = started["execution_id"]
    response = await xstack.client.post(f"/api/executions/{eid}/cancel", json={"reason": "enough"})
    assert response.status_code == 200
    body = response.json()
    assert set(body) == RESPONSE_KEYS
    assert body["execution_id"] == eid and body["status"] == "cancelled"
    assert body["end_time"] is not None and iso(body["end_time"]) >= iso(body["start_time"])

    again = await xstack.client.post(f"/api/executions/{eid}/cancel")
    assert again.status_code == 200 and again.json()["status"] == "cancelled"
    assert again.json()["end_time"] == body["end_time"]

    got = await detail(xstack, eid)
    assert got["status"] == "cancelled"
    assert [e["event_type"] for e in got["events"]][-1] == "execution_cancelled"
    assert [e["event_type"] for e in got["events"]].count("execution_cancelled") == 1
    cancelled = got["events"][-1]
    assert cancelled["context"] == {"reason": "enough"} and cancelled["status"] == "CANCELLED"
    assert await db.value("SELECT count(*) FROM events WHERE type = 'execution_cancelled'") == 1
    # Only this execution was touched.
    other = await run(xstack.client, path=HELLO_PATH)
    assert (await detail(xstack, other["execution_id"]))["status"] == "running"


async def test_cancel_without_body_and_completed_is_terminal(xstack: Stack, db: Db) -> None:
    text = "kind: Playbook\nmetadata: {path: quick}\nworkflow: [{step: start, next: [end]}, {step: end}]\n"
    await register(xstack.client, text)
    done = await run(xstack.client, path="quick")
    response = await xstack.client.post(f"/api/executions/{done['execution_id']}/cancel")
    assert response.status_code == 200
    assert response.json()["status"] == "completed"  # a terminal state is never overwritten
    assert await db.value("SELECT count(*) FROM events WHERE type = 'execution_cancelled'") == 0


@pytest.mark.parametrize("execution_id", ["987654321", "abc", "99999999999999999999999", "-1", "1.5"])
async def test_cancel_unknown_is_404(xstack: Stack, db: Db, execution_id: str) -> None:
    response = await xstack.client.post(f"/api/executions/{execution_id}/cancel")
    assert response.status_code == 404
    assert "not found" in response.json()["detail"] and execution_id in response.json()["detail"]
    assert await db.value("SELECT count(*) FROM events") == 0


async def test_cancel_bad_reason_is_422(xstack: Stack, hello: list[dict]) -> None:
    eid = (await run(xstack.client, path=HELLO_PATH))["execution_id"]
    for body in ({"reason": "x" * 1001}, {"reason": {"a": 1}}):
        response = await xstack.client.post(f"/api/executions/{eid}/cancel", json=body)
        assert response.status_code == 422
    assert (await detail(xstack, eid))["status"] == "running"


async def test_concurrent_cancels_one_event(xstack: Stack, hello: list[dict], db: Db) -> None:
    eid = (await run(xstack.client, path=HELLO_PATH))["execution_id"]
    responses = await asyncio.gather(*[xstack.client.post(f"/api/executions/{eid}/cancel") for _ in range(8)])
    assert {r.status_code for r in responses} == {200}
    assert {r.json()["status"] for r in responses} == {"cancelled"}
    assert await db.value("SELECT count(*) FROM events WHERE type = 'execution_cancelled'") == 1


# --------------------------------------------------------------------------- reads


async def test_get_detail_shape(xstack: Stack, hello: list[dict]) -> None:
    started = await run(xstack.client, path=HELLO_PATH, parameters={"who": "me"}, metadata={"m": 1})
    got = await detail(xstack, started["execution_id"])
    assert set(got) == DETAIL_KEYS
    for k in RESPONSE_KEYS - {"timestamp"}:
        assert got[k] == started[k], k
    assert got["workload"] == {**HELLO_WORKLOAD, "message": "Hello v2", "who": "me"}
    event = got["events"][0]
    assert set(event) == EVENT_KEYS
    assert isinstance(event["event_id"], str) and event["execution_id"] == started["execution_id"]
    assert event["event_type"] == "execution_start"
    assert event["status"] == "STARTED" and event["node_type"] == "playbook"
    assert event["node_name"] == "hello_world" and event["node_id"] == started["execution_id"]
    assert event["context"]["workload"] == got["workload"] and event["meta"]["path"] == HELLO_PATH
    assert event["timestamp"] == event["created_at"]
    iso(event["timestamp"])
    for later in got["events"][1:]:
        assert set(later) == EVENT_KEYS and later["node_type"] in ("start", "python"), later


async def test_get_events(xstack: Stack, hello: list[dict]) -> None:
    eid = (await run(xstack.client, path=HELLO_PATH))["execution_id"]
    await xstack.client.post(f"/api/executions/{eid}/cancel")
    response = await xstack.client.get(f"/api/executions/{eid}/events")
    assert response.status_code == 200
    body = response.json()
    assert body["execution_id"] == eid
    assert [e["event_type"] for e in body["events"]] == [
        "execution_start",
        "step_started",
        "step_completed",
        "step_started",
        "execution_cancelled",
    ]
    ids = [int(e["event_id"]) for e in body["events"]]
    assert ids == sorted(ids)
    assert body["events"] == (await detail(xstack, eid))["events"]
    # The original's path gives the same.
    original = await xstack.client.get(f"/api/events/by-execution/{eid}")
    assert original.status_code == 200 and original.json() == body


async def test_event_summary(xstack: Stack, hello: list[dict]) -> None:
    eid = (await run(xstack.client, path=HELLO_PATH))["execution_id"]
    await xstack.client.post(f"/api/executions/{eid}/cancel")
    response = await xstack.client.get(f"/api/events/summary/{eid}")
    assert response.status_code == 200, response.text
    assert response.json() == {
        "status": "ok",
        "summary": {
            "execution_id": eid,
            "counts": {
                "execution_cancelled": 1,
                "execution_start": 1,
                "step_completed": 1,
                "step_started": 2,
            },
            "skipped": 0,
            "errors": [],
        },
    }
    missing = await xstack.client.get("/api/events/summary/987654321")
    assert missing.status_code == 404 and "execution not found" in missing.json()["detail"]


@pytest.mark.parametrize("execution_id", ["987654321", "abc", "99999999999999999999999", "-5", "1e3", "%20"])
async def test_get_unknown_is_404(xstack: Stack, execution_id: str) -> None:
    for path in (
        f"/api/executions/{execution_id}",
        f"/api/executions/{execution_id}/events",
        f"/api/events/by-execution/{execution_id}",
    ):
        response = await xstack.client.get(path)
        assert response.status_code == 404, response.text
        assert "execution not found" in response.json()["detail"]


async def test_list_filters_order_limit_offset(xstack: Stack, hello: list[dict]) -> None:
    assert (await xstack.client.get("/api/executions")).json() == {
        "items": [],
        "count": 0,
        "limit": 50,
        "offset": 0,
    }
    await register(xstack.client, playbook("other/book"))
    ids = []
    for path in [HELLO_PATH, "other/book", HELLO_PATH, "other/book", HELLO_PATH]:
        ids.append((await run(xstack.client, path=path))["execution_id"])
    await xstack.client.post(f"/api/executions/{ids[1]}/cancel")
    await xstack.client.post(f"/api/executions/{ids[2]}/cancel")

    async def listed(**params) -> dict:
        response = await xstack.client.get("/api/executions", params=params)
        assert response.status_code == 200, response.text
        return response.json()

    every = await listed()
    assert [i["execution_id"] for i in every["items"]] == ids[::-1]
    assert every["count"] == 5 and every["limit"] == 50 and every["offset"] == 0
    assert all(set(i) == RESPONSE_KEYS for i in every["items"])
    assert [i["execution_id"] for i in (await listed(status="cancelled"))["items"]] == [ids[2], ids[1]]
    assert [i["execution_id"] for i in (await listed(status="running"))["items"]] == [ids[4], ids[3], ids[0]]
    assert [i["execution_id"] for i in (await listed(path="other/book"))["items"]] == [ids[3], ids[1]]
    both = await listed(path=HELLO_PATH, status="running")
    assert [i["execution_id"] for i in both["items"]] == [ids[4], ids[0]]
    page = await listed(limit=2, offset=1)
    assert [i["execution_id"] for i in page["items"]] == [ids[3], ids[2]]
    assert (page["count"], page["limit"], page["offset"]) == (2, 2, 1)
    assert (await listed(offset=10))["items"] == []
    assert (await listed(status="nothing"))["items"] == []


@pytest.mark.parametrize(
    "params", [{"limit": 0}, {"limit": 1001}, {"limit": "x"}, {"offset": -1}, {"offset": "y"}]
)
async def test_list_bad_paging_is_422(xstack: Stack, params: dict) -> None:
    response = await xstack.client.get("/api/executions", params=params)
    assert response.status_code == 422


async def test_a_stored_playbook_that_cannot_run_fails_its_execution(xstack: Stack, db: Db) -> None:
    """An entry that today's checks would refuse (stored before them, say) fails each run that
    asks for it, with the reason; the command is not retried into a dead letter."""
    await db.execute(
        "INSERT INTO catalog (path, version, kind, content, payload)"
        " VALUES ('old/one', 1, 'Playbook', '', %s)",
        Jsonb({"workflow": [{"step": "start", "type": "cobol"}]}),
    )
    started = await run(xstack.client, path="old/one")
    got = await detail(xstack, started["execution_id"])
    assert got["status"] == "failed"
    assert "cannot run" in got["error"] and "unknown type 'cobol'" in got["error"], got["error"]
    assert [e["event_type"] for e in got["events"]] == ["execution_start", "execution_failed"]
    assert await db.value("SELECT count(*) FROM dead_letters") == 0
