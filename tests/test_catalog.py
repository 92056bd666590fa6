"""The catalog through the bus: register, versions per path (also under concurrency), list, get,
bad input, and the `catalog.registered` event."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
import yaml
from conftest import Db, Processes, Servers, Stack, StackFactory, stream_events, wait_for
from helpers_execution import (
    HELLO_PATH,
    b64,
    domain_stack,
    iso,
    playbook,
    purge_jobs,
    register,
    truncate_domain,
)
from nats.js.errors import NotFoundError

from noetl.bus import subjects

ENTRY_KEYS = {"catalog_id", "path", "version", "kind", "content", "payload", "meta", "created_at"}


@pytest.fixture
async def xstack(make_stack: StackFactory, servers: Servers) -> AsyncIterator[Stack]:
    async with domain_stack(make_stack, servers) as stack:
        yield stack


async def catalog_count(db: Db) -> int:
    return await db.value("SELECT count(*) FROM catalog")


# --------------------------------------------------------------------------- register


async def test_register_from_content_base64(xstack: Stack, db: Db) -> None:
    text = playbook()
    response = await xstack.client.post("/api/catalog/register", json={"content_base64": b64(text)})
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"status", "message", "path", "version", "catalog_id", "kind"}
    assert body["status"] == "success"
    assert body["path"] == HELLO_PATH
    assert body["version"] == 1
    assert body["kind"] == "Playbook"
    assert isinstance(body["catalog_id"], str) and body["catalog_id"].isdigit()
    assert HELLO_PATH in body["message"] and "1" in body["message"]

    row = await db.one("SELECT * FROM catalog WHERE catalog_id = %s", int(body["catalog_id"]))
    assert row["path"] == HELLO_PATH and row["version"] == 1 and row["kind"] == "Playbook"
    assert row["content"] == text
    assert row["payload"]["workload"]["message"] == "Hello World"


async def test_register_from_content_and_versions_count_up(xstack: Stack) -> None:
    first = await register(xstack.client, content=playbook())
    second = await register(xstack.client, content_base64=b64(playbook()))
    third = await register(xstack.client, content=playbook(), resource_type="Playbook")
    assert [first["version"], second["version"], third["version"]] == [1, 2, 3]
    ids = [int(r["catalog_id"]) for r in (first, second, third)]
    assert ids == sorted(ids) and len(set(ids)) == 3
    assert second["message"] == f"Resource '{HELLO_PATH}' version '2' registered."


async def test_versions_are_per_path(xstack: Stack) -> None:
    a1 = await register(xstack.client, playbook("team/a"))
    b1 = await register(xstack.client, playbook("team/b"))
    a2 = await register(xstack.client, playbook("team/a"))
    b2 = await register(xstack.client, playbook("team/b"))
    a3 = await register(xstack.client, playbook("team/a"))
    assert [(r["path"], r["version"]) for r in (a1, b1, a2, b2, a3)] == [
        ("team/a", 1),
        ("team/b", 1),
        ("team/a", 2),
        ("team/b", 2),
        ("team/a", 3),
    ]


@pytest.mark.parametrize(
    ("metadata", "top", "expected"),
    [
        (
            {"path": "from/metadata/path", "name": "meta_name"},
            {"path": "top/path", "name": "n"},
            "from/metadata/path",
        ),
        ({"name": "meta_name"}, {"path": "top/path", "name": "top_name"}, "top/path"),
        ({"name": "meta_name"}, {"name": "top_name"}, "meta_name"),
        ({}, {"name": "top_name"}, "top_name"),
        ({"path": "/slashes/around/"}, {}, "slashes/around"),
        ({"path": 42}, {}, "42"),
    ],
    ids=["metadata.path", "path", "metadata.name", "name", "slashes-stripped", "number"],
)
async def test_path_resolution_order(xstack: Stack, metadata: dict, top: dict, expected: str) -> None:
    document = {"apiVersion": "noetl.io/v1", "kind": "Playbook", "metadata": metadata, **top}
    document["workflow"] = [{"step": "start"}]
    body = await register(xstack.client, yaml.safe_dump(document))
    assert body["path"] == expected
    entry = await xstack.client.get(f"/api/catalog/playbooks/{expected}")
    assert entry.status_code == 200 and entry.json()["catalog_id"] == body["catalog_id"]


async def test_other_resource_type(xstack: Stack) -> None:
    text = "kind: Dataset\nmetadata:\n  path: data/sales\nrows: 3\n"
    body = await register(xstack.client, content=text, resource_type="Dataset")
    assert (body["path"], body["version"], body["kind"]) == ("data/sales", 1, "Dataset")


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"content": ""},
        {"content_base64": ""},
        {"content": None, "content_base64": None},
        {"resource_type": "Playbook"},
        {"content": 5},
        {"content": ["a"]},
        {"content": playbook(), "resource_type": ""},
        {"content": "x\x00y"},
        {"content": playbook(), "resource_type": "Play\x00book"},
    ],
    ids=[
        "empty",
        "empty-content",
        "empty-b64",
        "nulls",
        "no-content",
        "number",
        "list",
        "empty-type",
        "nul-content",
        "nul-type",
    ],
)
async def test_missing_or_wrong_content_is_422(xstack: Stack, db: Db, body: dict) -> None:
    response = await xstack.client.post("/api/catalog/register", json=body)
    assert response.status_code == 422
    assert isinstance(response.json()["detail"], list)
    assert await catalog_count(db) == 0


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({"content_base64": "%%% not base64 %%%"}, "base64"),
        ({"content_base64": b64("x") + "==="}, "base64"),
        ({"content_base64": "//79/w=="}, "UTF-8"),
        ({"content": "metadata:\n  path: a\n  name: [unclosed\nworkflow: []\n"}, "line 4"),
        ({"content": "a: [1,"}, "line 1"),
        ({"content": "key: value\n\tbad: tab\n"}, "line"),
        ({"content": "- just\n- a list\n"}, "mapping"),
        ({"content": "plain text"}, "mapping"),
        ({"content": "kind: Foo\nmetadata: {path: x}\nworkflow: [{step: start}]\n"}, "Foo"),
        ({"content": "kind: Playbook\nmetadata: {path: x}\n"}, "workflow"),
        ({"content": "kind: Playbook\nmetadata: {path: x}\nworkflow: []\n"}, "workflow"),
        ({"content": "kind: Playbook\nmetadata: {path: x}\nworkflow: [{next: []}]\n"}, "workflow[0]"),
        (
            {"content": "kind: Playbook\nmetadata: {path: x}\nworkflow: [{step: start}]\nworkload: [1]\n"},
            "workload",
        ),
        ({"content": "kind: Playbook\nmetadata: {}\nworkflow: [{step: start}]\n"}, "path"),
        ({"content": "kind: Playbook\nmetadata: {path: '  '}\nworkflow: [{step: start}]\n"}, "path"),
        ({"content_base64": b64("x\x00y")}, "NUL"),  # as JSON text, NUL is refused at the door (422)
        (
            {"content": "kind: Playbook\nmetadata: {path: x}\nworkflow: [{step: start, next: [nowhere]}]\n"},
            "nowhere",
        ),
    ],
    ids=[
        "not-b64",
        "b64-padding",
        "b64-not-utf8",
        "yaml-line-4",
        "yaml-line-1",
        "yaml-tab",
        "list",
        "scalar",
        "wrong-kind",
        "no-workflow",
        "empty-workflow",
        "step-without-name",
        "workload-not-mapping",
        "no-path",
        "blank-path",
        "nul",
        "next-to-missing-step",
    ],
)
async def test_unusable_content_is_400_and_says_why(xstack: Stack, db: Db, body: dict, words: str) -> None:
    response = await xstack.client.post("/api/catalog/register", json=body)
    assert response.status_code == 400, response.text
    detail = response.json()["detail"]
    assert isinstance(detail, str) and words in detail, detail
    assert await catalog_count(db) == 0
    # The consumer keeps serving.
    assert (await register(xstack.client))["version"] == 1


async def test_overlong_path_is_400(xstack: Stack, db: Db) -> None:
    response = await xstack.client.post("/api/catalog/register", json={"content": playbook("p" * 1100)})
    assert response.status_code == 400
    assert "1024" in response.json()["detail"]
    assert await catalog_count(db) == 0


async def test_body_not_json_object_is_422(xstack: Stack) -> None:
    for raw in (b"[]", b'"text"', b"{", b""):
        response = await xstack.client.post(
            "/api/catalog/register", content=raw, headers={"Content-Type": "application/json"}
        )
        assert response.status_code == 422, raw


# --------------------------------------------------------------------------- list and get


async def test_list_newest_first_with_exact_shape(xstack: Stack) -> None:
    assert (await xstack.client.get("/api/catalog/list")).json() == {"entries": []}
    texts = [playbook("list/a"), playbook("list/b"), playbook("list/a")]
    registered = [await register(xstack.client, t) for t in texts]
    response = await xstack.client.get("/api/catalog/list")
    assert response.status_code == 200
    entries = response.json()["entries"]
    assert [(e["path"], e["version"]) for e in entries] == [("list/a", 2), ("list/b", 1), ("list/a", 1)]
    assert [e["catalog_id"] for e in entries] == [r["catalog_id"] for r in reversed(registered)]
    for entry, text in zip(entries, reversed(texts), strict=True):
        assert set(entry) == ENTRY_KEYS
        assert isinstance(entry["catalog_id"], str)
        assert entry["kind"] == "Playbook"
        assert entry["content"] == text
        assert entry["payload"]["metadata"]["path"] == entry["path"]
        assert entry["meta"] is None
        iso(entry["created_at"])
    times = [iso(e["created_at"]) for e in entries]
    assert times == sorted(times, reverse=True)


async def test_list_filters_by_resource_type(xstack: Stack) -> None:
    await register(xstack.client, playbook("typed/pb"))
    await register(
        xstack.client, content="kind: Dataset\nmetadata: {path: typed/ds}\n", resource_type="Dataset"
    )
    every = (await xstack.client.get("/api/catalog/list")).json()["entries"]
    assert {e["path"] for e in every} == {"typed/pb", "typed/ds"}
    only = (await xstack.client.get("/api/catalog/list", params={"resource_type": "Dataset"})).json()
    assert [e["path"] for e in only["entries"]] == ["typed/ds"]
    none = (await xstack.client.get("/api/catalog/list", params={"resource_type": "Nothing"})).json()
    assert none == {"entries": []}


async def test_get_latest_and_by_version(xstack: Stack) -> None:
    v1 = await register(xstack.client, playbook(workload={"n": 1}))
    v2 = await register(xstack.client, playbook(workload={"n": 2}))
    latest = await xstack.client.get(f"/api/catalog/playbooks/{HELLO_PATH}")
    assert latest.status_code == 200
    body = latest.json()
    assert set(body) == ENTRY_KEYS
    assert (body["catalog_id"], body["version"], body["path"]) == (v2["catalog_id"], 2, HELLO_PATH)
    assert body["payload"]["workload"] == {"n": 2}
    for version, expected in (("1", v1), (1, v1), ("2", v2), ("latest", v2)):
        got = await xstack.client.get(f"/api/catalog/playbooks/{HELLO_PATH}", params={"version": version})
        assert got.status_code == 200
        assert got.json()["catalog_id"] == expected["catalog_id"]
    # A leading or trailing slash names the same path.
    slashed = await xstack.client.get(f"/api/catalog/playbooks/{HELLO_PATH}/")
    assert slashed.json()["catalog_id"] == v2["catalog_id"]


async def test_get_not_found_says_what(xstack: Stack) -> None:
    await register(xstack.client)
    missing_version = await xstack.client.get(f"/api/catalog/playbooks/{HELLO_PATH}", params={"version": 7})
    assert missing_version.status_code == 404
    assert HELLO_PATH in missing_version.json()["detail"] and "7" in missing_version.json()["detail"]
    missing_path = await xstack.client.get("/api/catalog/playbooks/no/such/playbook")
    assert missing_path.status_code == 404
    assert "no/such/playbook" in missing_path.json()["detail"]


@pytest.mark.parametrize("version", ["x", "0", "-1", "1.5", "", " ", "99999999999999999999", "1e3"])
async def test_get_bad_version_is_422_or_404(xstack: Stack, version: str) -> None:
    await register(xstack.client)
    response = await xstack.client.get(f"/api/catalog/playbooks/{HELLO_PATH}", params={"version": version})
    assert response.status_code in (404, 422), response.text


# --------------------------------------------------------------------------- the event


async def test_registered_event_in_store_and_on_stream(xstack: Stack, db: Db, nc) -> None:
    body = await register(xstack.client, playbook("evt/path.with dots*"))
    rows = await db.all("SELECT type, subject, entity, payload FROM events WHERE type = 'catalog.registered'")
    assert len(rows) == 1
    assert rows[0]["entity"] == {"domain": "catalog", "path": "evt/path.with dots*"}
    assert rows[0]["payload"] == {"catalog_id": body["catalog_id"], "version": 1, "kind": "Playbook"}
    subject = subjects.catalog_event("evt/path.with dots*", "registered")
    assert rows[0]["subject"] == subject

    async def published() -> list:
        return await stream_events(nc.jetstream(), subject)

    [event] = await wait_for(published, what="catalog.registered on the stream")
    assert event["type"] == "catalog.registered"
    assert event["payload"]["catalog_id"] == body["catalog_id"]


# --------------------------------------------------------------------------- concurrency


async def register_many(stack: Stack, count: int, path: str) -> list[int]:
    text = playbook(path)
    responses = await asyncio.gather(
        *[
            stack.client.post("/api/catalog/register", json={"content_base64": b64(text)})
            for _ in range(count)
        ]
    )
    assert {r.status_code for r in responses} == {200}, [r.text for r in responses if r.status_code != 200]
    return sorted(r.json()["version"] for r in responses)


async def test_concurrent_registration_of_one_path(xstack: Stack, db: Db) -> None:
    versions = await register_many(xstack, 60, "race/one")
    assert versions == list(range(1, 61))
    rows = await db.all("SELECT version FROM catalog WHERE path = 'race/one' ORDER BY version")
    assert [r["version"] for r in rows] == list(range(1, 61))
    assert await db.value("SELECT latest_version FROM catalog_paths WHERE path = 'race/one'") == 60


async def test_concurrent_registration_with_two_consumers(
    make_stack: StackFactory, servers: Servers, db: Db
) -> None:
    """Two catalog consumers in this process (separate connections, pools and pull requests)."""
    await truncate_domain(servers.dsn)
    await purge_jobs(servers.nats_url)
    stack = await make_stack(consumers=False)
    await stack.start_consumers(["catalog", "outbox"], consumer_batch_size=4)
    await stack.start_consumers(["catalog"], consumer_batch_size=4)
    versions = await asyncio.gather(*[register_many(stack, 20, f"race/{p}") for p in ("x", "y")])
    assert versions == [list(range(1, 21))] * 2


async def pull_waiters(nc, durable: str) -> int:
    try:
        info = await nc.jetstream().consumer_info(subjects.COMMANDS_STREAM, durable)
    except NotFoundError:
        return 0
    return info.num_waiting


async def test_concurrent_registration_with_two_consumer_processes(
    make_stack: StackFactory, servers: Servers, processes: Processes, db: Db, nc
) -> None:
    """Two real `noetl consumer catalog` processes share the work; versions stay consecutive."""
    await truncate_domain(servers.dsn)
    env = {
        "NOETL_NATS_URL": servers.nats_url,
        "NOETL_PG_DSN": servers.consumer_dsn,
        "NOETL_CONSUMER_BATCH_SIZE": "8",
    }
    procs = [processes.start(["consumer", "catalog"], env) for _ in range(2)]
    stack = await make_stack(consumers=False)
    deadline = time.monotonic() + 30
    while await pull_waiters(nc, "catalog-commands") < 2:
        for proc in procs:
            assert proc.popen.poll() is None, proc.output()
        assert time.monotonic() < deadline, [p.output() for p in procs]
        await asyncio.sleep(0.1)
    versions = await register_many(stack, 80, "race/processes")
    assert versions == list(range(1, 81))
    assert await db.value("SELECT count(DISTINCT version) FROM catalog WHERE path = 'race/processes'") == 80
    for proc in procs:
        assert proc.popen.poll() is None, proc.output()
