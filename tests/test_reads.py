"""Reads hold at any size: lists page when asked to (and return everything when not, as the
original did), and a result larger than one NATS message still reaches the client, in parts."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from conftest import Db, Servers, Stack, StackFactory
from helpers_execution import b64, domain_stack, playbook, register

from noetl.facade import dispatch

POOLS = "/api/worker/pools"


@pytest.fixture
async def xstack(make_stack: StackFactory, servers: Servers) -> AsyncIterator[Stack]:
    async with domain_stack(make_stack, servers) as stack:
        await stack.start_consumers(["runtime"])
        yield stack


async def add_pools(db: Db, count: int, *, kind: str = "worker_pool", labels_bytes: int = 0) -> None:
    """Registered components, written straight to the registry (the registration path is tested
    elsewhere; here only their number and size matter)."""
    await db.execute(
        "INSERT INTO runtime_components (kind, name, status, labels, capacity, runtime, heartbeat)"
        " SELECT %s, 'pool-' || lpad(i::text, 6, '0'), 'ready', jsonb_build_object('blob', repeat('x', %s)),"
        ' 4, \'{"type": "python"}\'::jsonb, now() FROM generate_series(1, %s) AS i',
        kind,
        labels_bytes,
        count,
    )


def names(body: dict) -> list[str]:
    return [item["name"] for item in body["items"]]


async def test_lists_page_with_limit_and_offset(stack: Stack, db: Db) -> None:
    await add_pools(db, 25)
    every = [f"pool-{i:06d}" for i in range(1, 26)]
    whole = (await stack.client.get(POOLS)).json()
    assert names(whole) == every and whole["count"] == 25
    first = (await stack.client.get(POOLS, params={"limit": 10})).json()
    assert names(first) == every[:10] and first["count"] == 10
    last = (await stack.client.get(POOLS, params={"limit": 10, "offset": 20})).json()
    assert names(last) == every[20:]
    assert last == {**last, "runtime": None, "status": None, "error": None}
    beyond = (await stack.client.get(POOLS, params={"offset": 1000})).json()
    assert beyond["items"] == [] and beyond["count"] == 0
    filtered = (await stack.client.get(POOLS, params={"runtime": "python", "limit": 3, "offset": 1})).json()
    assert names(filtered) == every[1:4] and filtered["runtime"] == "python"


async def test_brokers_page_too(stack: Stack, db: Db) -> None:
    await add_pools(db, 5, kind="broker")
    page = (await stack.client.get("/api/brokers", params={"limit": 2, "offset": 3})).json()
    assert names(page) == ["pool-000004", "pool-000005"]


async def test_a_listing_larger_than_a_message_is_answered_whole(stack: Stack, db: Db, nc) -> None:
    """Once a 503 (a reply over NATS's max_payload), and so would be a few thousand pools."""
    await add_pools(db, 40, labels_bytes=40_000)
    response = await stack.client.get(POOLS)
    assert response.status_code == 200
    assert len(response.content) > nc.max_payload
    body = response.json()
    assert body["count"] == 40 and len(body["items"]) == 40
    assert all(item["labels"]["blob"] == "x" * 40_000 for item in body["items"])
    assert response.headers["content-length"] == str(len(response.content))


async def test_a_very_large_listing_is_passed_on_as_it_comes(
    stack: Stack, db: Db, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past `STREAM_AFTER_BYTES` the facade does not gather the whole answer: it streams it."""
    monkeypatch.setattr(dispatch, "STREAM_AFTER_BYTES", 100_000)
    await add_pools(db, 20_000)
    response = await stack.client.get(POOLS)
    assert response.status_code == 200
    assert "content-length" not in response.headers
    body = response.json()
    assert body["count"] == 20_000 and names(body)[-1] == "pool-020000"


async def test_catalog_list_pages_newest_first(xstack: Stack) -> None:
    ids = [(await register(xstack.client, playbook(f"paged/{i}")))["catalog_id"] for i in range(5)]
    page = (await xstack.client.get("/api/catalog/list", params={"limit": 2, "offset": 1})).json()
    assert [e["catalog_id"] for e in page["entries"]] == [ids[3], ids[2]]
    whole = (await xstack.client.get("/api/catalog/list")).json()
    assert [e["catalog_id"] for e in whole["entries"]] == ids[::-1]


async def test_a_deeply_nested_stored_playbook_does_not_break_the_catalog(xstack: Stack, db: Db) -> None:
    """One such entry once made the catalog list answer 422 for everyone: its documents are passed
    on as the store keeps them, and no serializer walks them."""
    await register(xstack.client)
    depth = 3000
    deep = "(repeat('{\"a\":', %s) || '1' || repeat('}', %s))::jsonb"
    await db.execute(
        "INSERT INTO catalog (path, version, kind, content, payload)"
        f" VALUES ('deep/one', 1, 'Playbook', 'deep: true', {deep})",
        depth,
        depth,
    )
    listed = await xstack.client.get("/api/catalog/list")
    assert listed.status_code == 200, listed.text
    assert listed.text.count('"path":"deep/one"') == 1 and listed.text.count('{"a": ') >= depth
    assert '"path":"examples/hello_world"' in listed.text
    entry = await xstack.client.get("/api/catalog/playbooks/deep/one")
    assert entry.status_code == 200
    assert entry.text.count('{"a": ') == depth
    assert (await xstack.client.get("/api/catalog/playbooks/examples/hello_world")).status_code == 200


async def test_an_execution_larger_than_a_message_is_answered(
    make_stack: StackFactory, servers: Servers
) -> None:
    """Every query handler's result travels in parts, not only the lists': an execution whose
    workload alone is over 1 MiB."""
    blob = "y" * 400_000
    async with domain_stack(make_stack, servers, api_max_body_bytes=4 << 20) as stack:
        await register(stack.client, content_base64=b64(playbook(workload={"a": blob, "b": blob})))
        body = {"path": "examples/hello_world", "parameters": {"c": blob}}
        run = await stack.client.post("/api/executions/run", json=body)
        assert run.status_code == 200, run.text
        detail = await stack.client.get(f"/api/executions/{run.json()['execution_id']}")
    assert detail.status_code == 200, detail.text
    assert len(detail.content) > 1 << 20
    assert detail.json()["workload"] == {"a": blob, "b": blob, "c": blob}
