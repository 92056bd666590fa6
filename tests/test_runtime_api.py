"""Every runtime row of CONTRACTS.md through the facade: exact shapes, status codes and headers."""

from __future__ import annotations

import asyncio
from datetime import datetime

import pytest
from conftest import Db, Stack, StackFactory, stream_events, wait_for

REGISTRATION_KEYS = {"status", "name", "runtime_id", "kind", "runtime"}
COMPONENT_KEYS = {"name", "runtime", "status", "capacity", "labels", "heartbeat", "created_at", "updated_at"}


def iso(value: str) -> datetime:
    parsed = datetime.fromisoformat(value)
    assert parsed.tzinfo is not None, value
    return parsed


async def register(stack: Stack, path: str = "/api/worker/pool/register", **body) -> dict:
    response = await stack.client.post(path, json=body)
    assert response.status_code == 200, response.text
    return response.json()


async def pools(stack: Stack, path: str = "/api/worker/pools", **params) -> dict:
    response = await stack.client.get(path, params=params)
    assert response.status_code == 200, response.text
    return response.json()


# --------------------------------------------------------------------------- register


async def test_register_worker_pool(stack: Stack, db: Db) -> None:
    response = await stack.client.post(
        "/api/worker/pool/register",
        json={
            "name": "pool-a",
            "runtime": "python",
            "capacity": 4,
            "labels": {"zone": "z1"},
            "pid": 4321,
            "hostname": "host-1",
            "meta": {"version": "1.2", "tags": ["x"]},
            "uri": "http://pool-a:9000",
        },
    )
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.headers["X-Request-ID"]
    body = response.json()
    assert set(body) == REGISTRATION_KEYS
    assert body["status"] == "ok"
    assert body["name"] == "pool-a"
    assert body["kind"] == "worker_pool"
    assert body["runtime"] == "python"
    assert isinstance(body["runtime_id"], str) and body["runtime_id"].isdigit()

    row = await db.component("pool-a")
    assert row is not None
    assert str(row["runtime_id"]) == body["runtime_id"]
    assert row["status"] == "ready"
    assert row["capacity"] == 4
    assert row["labels"] == {"zone": "z1"}
    assert row["uri"] == "http://pool-a:9000"
    assert row["runtime"] == {
        "type": "python",
        "pid": 4321,
        "hostname": "host-1",
        "version": "1.2",
        "tags": ["x"],
    }
    assert row["heartbeat"] is not None
    assert await db.events_for("pool-a") == ["runtime.registered"]


async def test_register_defaults(stack: Stack, db: Db) -> None:
    body = await register(stack, name="pool-defaults")
    assert body == {
        "status": "ok",
        "name": "pool-defaults",
        "runtime_id": body["runtime_id"],
        "kind": "worker_pool",
        "runtime": None,
    }
    row = await db.component("pool-defaults")
    assert row["status"] == "ready"
    assert row["capacity"] is None
    assert row["labels"] is None
    assert row["uri"] is None
    assert row["runtime"] == {"type": None, "pid": None, "hostname": None}


async def test_worker_pool_register_fixes_kind(stack: Stack, db: Db) -> None:
    body = await register(stack, name="pool-forced", kind="broker", component_type="monitor")
    assert body["kind"] == "worker_pool"
    assert await db.component("pool-forced", "worker_pool") is not None
    assert await db.component("pool-forced", "broker") is None


@pytest.mark.parametrize(
    ("sent", "stored"),
    [
        (42, "42"),
        (3.5, "3.5"),
        ("  padded name \t", "padded name"),
        ("\n\tpool-tabs ", "pool-tabs"),
    ],
)
async def test_name_coerced_to_string_and_stripped(stack: Stack, db: Db, sent, stored: str) -> None:
    body = await register(stack, name=sent, runtime="python")
    assert body["name"] == stored
    assert await db.component(stored) is not None


@pytest.mark.parametrize(
    ("sent", "stored"), [(" BUSY ", "busy"), ("Ready", "ready"), ("DRAINING", "draining")]
)
async def test_status_stripped_and_lowercased(stack: Stack, db: Db, sent: str, stored: str) -> None:
    await register(stack, name=f"pool-status-{stored}", status=sent)
    assert (await db.component(f"pool-status-{stored}"))["status"] == stored


async def test_runtime_and_hostname_stripped(stack: Stack, db: Db) -> None:
    body = await register(stack, name="pool-strip", runtime="  python ", hostname=" h1 ")
    assert body["runtime"] == "python"
    assert (await db.component("pool-strip"))["runtime"]["hostname"] == "h1"


async def test_reregister_is_upsert_keeping_runtime_id(stack: Stack, db: Db) -> None:
    first = await register(
        stack,
        name="pool-up",
        runtime="python",
        capacity=1,
        labels={"a": 1, "b": 2},
        uri="http://old",
        pid=1,
        meta={"old": True},
    )
    before = await db.component("pool-up")
    await asyncio.sleep(0.05)
    second = await register(
        stack,
        name="pool-up",
        runtime="nodejs",
        capacity=9,
        labels={"c": 3},
        uri="http://new",
        status="Busy",
        hostname="h2",
    )
    assert second["runtime_id"] == first["runtime_id"]
    assert second["runtime"] == "nodejs"
    after = await db.component("pool-up")
    assert after["runtime_id"] == before["runtime_id"]
    assert after["capacity"] == 9
    assert after["labels"] == {"c": 3}  # replaced, not merged
    assert after["uri"] == "http://new"
    assert after["status"] == "busy"
    assert after["runtime"] == {"type": "nodejs", "pid": None, "hostname": "h2"}
    assert after["heartbeat"] > before["heartbeat"]
    assert after["created_at"] == before["created_at"]
    assert after["updated_at"] > before["updated_at"]
    assert await db.value("SELECT count(*) FROM runtime_components WHERE name = 'pool-up'") == 1
    assert await db.events_for("pool-up") == ["runtime.registered", "runtime.registered"]


async def test_same_name_different_kinds_are_different_components(stack: Stack, db: Db) -> None:
    pool = await register(stack, name="shared-name", runtime="python")
    broker = await register(
        stack, "/api/runtime/register", name="shared-name", kind="broker", uri="nats://b:4222"
    )
    assert pool["runtime_id"] != broker["runtime_id"]
    assert broker["kind"] == "broker"
    assert await db.value("SELECT count(*) FROM runtime_components WHERE name = 'shared-name'") == 2


@pytest.mark.parametrize("kind", ["worker_pool", "scheduler", "monitor"])
async def test_runtime_register_kinds_without_uri(stack: Stack, db: Db, kind: str) -> None:
    body = await register(stack, "/api/runtime/register", name=f"c-{kind}", kind=kind, runtime="cpu")
    assert body["kind"] == kind
    assert body["runtime"] == "cpu"
    assert await db.component(f"c-{kind}", kind) is not None


@pytest.mark.parametrize("kind", ["server_api", "broker"])
async def test_runtime_register_kinds_with_uri(stack: Stack, db: Db, kind: str) -> None:
    body = await register(stack, "/api/runtime/register", name=f"c-{kind}", kind=kind, uri="http://x:1")
    assert body["kind"] == kind
    assert (await db.component(f"c-{kind}", kind))["uri"] == "http://x:1"


async def test_runtime_register_defaults_to_worker_pool(stack: Stack, db: Db) -> None:
    body = await register(stack, "/api/runtime/register", name="c-default")
    assert body["kind"] == "worker_pool"
    assert await db.component("c-default", "worker_pool") is not None


async def test_runtime_register_aliases(stack: Stack, db: Db) -> None:
    body = await register(
        stack,
        "/api/runtime/register",
        name="api-1",
        component_type="server_api",
        base_url="http://api-1:8083",
        runtime="python",
    )
    assert set(body) == REGISTRATION_KEYS
    assert body["kind"] == "server_api"
    assert "component_type" not in body
    row = await db.component("api-1", "server_api")
    assert row["uri"] == "http://api-1:8083"


@pytest.mark.parametrize(
    "body",
    [
        {"name": "api-no-uri", "kind": "server_api"},
        {"name": "broker-no-uri", "kind": "broker"},
        {"name": "broker-blank-uri", "component_type": "broker", "base_url": "   "},
        {"name": "api-null-uri", "kind": "server_api", "uri": None},
    ],
)
async def test_runtime_register_missing_uri_is_400(stack: Stack, db: Db, body: dict) -> None:
    response = await stack.client.post("/api/runtime/register", json=body)
    assert response.status_code == 400
    assert isinstance(response.json()["detail"], str)
    assert await db.value("SELECT count(*) FROM runtime_components") == 0
    assert await db.value("SELECT count(*) FROM processed_commands") == 0


# --------------------------------------------------------------------------- deregister


@pytest.mark.parametrize("method", ["DELETE", "POST"])
async def test_deregister_worker_pool_marks_offline(stack: Stack, db: Db, method: str) -> None:
    registered = await register(stack, name="pool-dereg", runtime="python")
    response = await stack.client.request(method, "/api/worker/pool/deregister", json={"name": "pool-dereg"})
    assert response.status_code == 200
    assert response.json() == {
        "status": "ok",
        "name": "pool-dereg",
        "runtime_id": None,
        "kind": "worker_pool",
        "runtime": None,
    }
    row = await db.component("pool-dereg")
    assert row is not None, "deregister must never delete"
    assert row["status"] == "offline"
    assert str(row["runtime_id"]) == registered["runtime_id"]
    assert await db.events_for("pool-dereg") == ["runtime.registered", "runtime.deregistered"]
    listed = await pools(stack)
    assert [(i["name"], i["status"]) for i in listed["items"]] == [("pool-dereg", "offline")]


@pytest.mark.parametrize("method", ["DELETE", "POST"])
async def test_deregister_unknown_is_idempotent(stack: Stack, db: Db, method: str) -> None:
    for _ in range(2):
        response = await stack.client.request(method, "/api/worker/pool/deregister", json={"name": "ghost"})
        assert response.status_code == 200
        assert response.json() == {
            "status": "ok",
            "name": "ghost",
            "runtime_id": None,
            "kind": "worker_pool",
            "runtime": None,
        }
    assert await db.component("ghost") is None
    assert await db.events_for("ghost") == []


async def test_deregister_twice(stack: Stack, db: Db) -> None:
    await register(stack, name="pool-twice")
    for _ in range(2):
        response = await stack.client.request(
            "DELETE", "/api/worker/pool/deregister", json={"name": "pool-twice"}
        )
        assert response.status_code == 200
    assert (await db.component("pool-twice"))["status"] == "offline"


@pytest.mark.parametrize("method", ["DELETE", "POST"])
@pytest.mark.parametrize("body", [{}, {"nme": "x"}, {"name": None}, {"name": ""}])
async def test_deregister_without_name_is_422(stack: Stack, method: str, body: dict) -> None:
    response = await stack.client.request(method, "/api/worker/pool/deregister", json=body)
    assert response.status_code == 422
    assert isinstance(response.json()["detail"], list)


async def test_runtime_deregister_with_kind_and_alias(stack: Stack, db: Db) -> None:
    await register(stack, "/api/runtime/register", name="sched-1", kind="scheduler")
    await register(stack, "/api/runtime/register", name="mon-1", kind="monitor")
    await register(stack, name="sched-1")  # a worker pool of the same name stays ready

    r1 = await stack.client.request(
        "DELETE", "/api/runtime/deregister", json={"name": "sched-1", "kind": "scheduler"}
    )
    r2 = await stack.client.request(
        "DELETE", "/api/runtime/deregister", json={"name": "mon-1", "component_type": "monitor"}
    )
    assert r1.status_code == r2.status_code == 200
    assert r1.json() == {
        "status": "ok",
        "name": "sched-1",
        "runtime_id": None,
        "kind": "scheduler",
        "runtime": None,
    }
    assert r2.json() == {
        "status": "ok",
        "name": "mon-1",
        "runtime_id": None,
        "kind": "monitor",
        "runtime": None,
    }
    assert (await db.component("sched-1", "scheduler"))["status"] == "offline"
    assert (await db.component("mon-1", "monitor"))["status"] == "offline"
    assert (await db.component("sched-1", "worker_pool"))["status"] == "ready"


async def test_runtime_deregister_default_kind_is_worker_pool(stack: Stack, db: Db) -> None:
    await register(stack, name="pool-rt-dereg")
    response = await stack.client.request("DELETE", "/api/runtime/deregister", json={"name": "pool-rt-dereg"})
    assert response.status_code == 200
    assert response.json()["kind"] == "worker_pool"
    assert (await db.component("pool-rt-dereg"))["status"] == "offline"


@pytest.mark.parametrize(
    "body", [{"kind": "broker"}, {"name": "x", "kind": "queue"}, {"name": "x", "component_type": 5}]
)
async def test_runtime_deregister_invalid_is_422(stack: Stack, body: dict) -> None:
    response = await stack.client.request("DELETE", "/api/runtime/deregister", json=body)
    assert response.status_code == 422


# --------------------------------------------------------------------------- heartbeat


async def test_heartbeat_known(stack: Stack, db: Db) -> None:
    registered = await register(stack, name="pool-hb", runtime="python")
    before = (await db.component("pool-hb"))["heartbeat"]
    await asyncio.sleep(0.05)
    response = await stack.client.post("/api/worker/pool/heartbeat", json={"name": "pool-hb"})
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "name": "pool-hb", "runtime_id": registered["runtime_id"]}
    after = await db.component("pool-hb")
    assert after["heartbeat"] > before
    assert after["status"] == "ready"
    assert await db.events_for("pool-hb") == ["runtime.registered"]


async def test_heartbeat_keeps_a_non_offline_status(stack: Stack, db: Db) -> None:
    await register(stack, name="pool-busy", status="busy")
    response = await stack.client.post("/api/worker/pool/heartbeat", json={"name": "pool-busy"})
    assert response.status_code == 200
    assert (await db.component("pool-busy"))["status"] == "busy"


async def test_heartbeat_name_is_stripped(stack: Stack) -> None:
    registered = await register(stack, name="pool-hb-strip")
    response = await stack.client.post("/api/worker/pool/heartbeat", json={"name": "  pool-hb-strip "})
    assert response.status_code == 200
    assert response.json() == {
        "status": "ok",
        "name": "pool-hb-strip",
        "runtime_id": registered["runtime_id"],
    }


async def test_heartbeat_brings_offline_back_to_ready(stack: Stack, db: Db, nc) -> None:
    await register(stack, name="pool-back", runtime="python")
    await stack.client.request("DELETE", "/api/worker/pool/deregister", json={"name": "pool-back"})
    assert (await db.component("pool-back"))["status"] == "offline"
    response = await stack.client.post("/api/worker/pool/heartbeat", json={"name": "pool-back"})
    assert response.status_code == 200
    assert response.json()["status"] == "ok"
    assert (await db.component("pool-back"))["status"] == "ready"
    assert await db.events_for("pool-back") == [
        "runtime.registered",
        "runtime.deregistered",
        "runtime.online",
    ]
    listed = await pools(stack, status="ready")
    assert [i["name"] for i in listed["items"]] == ["pool-back"]

    async def on_stream():
        events = await stream_events(nc.jetstream(), "noetl.evt.runtime.worker_pool.pool-back.>")
        return [e["type"] for e in events] if len(events) == 3 else None

    assert await wait_for(on_stream, what="events relayed") == [
        "runtime.registered",
        "runtime.deregistered",
        "runtime.online",
    ]


async def test_heartbeat_unknown_is_404_with_retry_after(stack: Stack, db: Db) -> None:
    response = await stack.client.post("/api/worker/pool/heartbeat", json={"name": "nobody"})
    assert response.status_code == 404
    assert response.json() == {"detail": {"status": "unknown", "name": "nobody"}}
    assert response.headers["Retry-After"] == "7"  # NOETL_HEARTBEAT_RETRY_AFTER of this stack
    assert await db.component("nobody") is None


async def test_heartbeat_unknown_default_retry_after_is_3(make_stack: StackFactory) -> None:
    stack = await make_stack(heartbeat_retry_after=3)
    response = await stack.client.post("/api/worker/pool/heartbeat", json={"name": "nobody"})
    assert response.status_code == 404
    assert response.headers["Retry-After"] == "3"


async def test_heartbeat_unknown_registration_ignored_when_auto_recreate_off(stack: Stack, db: Db) -> None:
    assert stack.settings.auto_recreate_runtime is False
    response = await stack.client.post(
        "/api/worker/pool/heartbeat",
        json={"name": "pool-norecreate", "registration": {"name": "pool-norecreate", "runtime": "python"}},
    )
    assert response.status_code == 404
    assert response.json() == {"detail": {"status": "unknown", "name": "pool-norecreate"}}
    assert await db.component("pool-norecreate") is None


async def test_heartbeat_of_a_different_kind_is_unknown(stack: Stack) -> None:
    await register(stack, "/api/runtime/register", name="only-broker", kind="broker", uri="nats://b")
    response = await stack.client.post("/api/worker/pool/heartbeat", json={"name": "only-broker"})
    assert response.status_code == 404


@pytest.mark.parametrize("body", [{}, {"name": None}, {"registration": {"name": "x", "runtime": "python"}}])
async def test_heartbeat_without_name_and_no_fallback(stack: Stack, db: Db, body: dict) -> None:
    assert stack.settings.worker_pool_name is None
    response = await stack.client.post("/api/worker/pool/heartbeat", json=body)
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "name": None, "runtime_id": None}
    assert await db.value("SELECT count(*) FROM runtime_components") == 0
    assert await db.value("SELECT count(*) FROM events") == 0


async def test_heartbeat_without_name_falls_back_to_worker_pool_name(
    make_stack: StackFactory, db: Db
) -> None:
    stack = await make_stack(worker_pool_name="home-pool")
    registered = await register(stack, name="home-pool", runtime="python")
    await stack.client.request("DELETE", "/api/worker/pool/deregister", json={"name": "home-pool"})
    response = await stack.client.post("/api/worker/pool/heartbeat", json={})
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "name": "home-pool", "runtime_id": registered["runtime_id"]}
    assert (await db.component("home-pool"))["status"] == "ready"
    # An explicit name still wins over the fallback.
    response = await stack.client.post("/api/worker/pool/heartbeat", json={"name": "other-pool"})
    assert response.status_code == 404
    assert response.json()["detail"]["name"] == "other-pool"


async def test_heartbeat_fallback_name_unknown_is_404(make_stack: StackFactory) -> None:
    stack = await make_stack(worker_pool_name="missing-home")
    response = await stack.client.post("/api/worker/pool/heartbeat", json={})
    assert response.status_code == 404
    assert response.json() == {"detail": {"status": "unknown", "name": "missing-home"}}


async def test_heartbeat_auto_recreate(make_stack: StackFactory, db: Db) -> None:
    stack = await make_stack(auto_recreate_runtime=True)
    response = await stack.client.post(
        "/api/worker/pool/heartbeat",
        json={
            "name": "pool-re",
            "registration": {
                "name": "pool-re",
                "runtime": "  PYTHON ",
                "endpoint": "http://pool-re:1",
                "capacity": 5,
                "labels": {"z": "1"},
            },
        },
    )
    assert response.status_code == 200
    body = response.json()
    assert body == {
        "status": "recreated",
        "name": "pool-re",
        "runtime": "python",
        "runtime_id": body["runtime_id"],
    }
    assert isinstance(body["runtime_id"], str) and body["runtime_id"].isdigit()
    row = await db.component("pool-re")
    assert str(row["runtime_id"]) == body["runtime_id"]
    assert row["uri"] == "http://pool-re:1"
    assert row["capacity"] == 5
    assert row["labels"] == {"z": "1"}
    assert row["runtime"]["type"] == "python"
    assert row["status"] == "ready"
    assert await db.events_for("pool-re") == ["runtime.recreated"]

    # Now it is known: the next beat is a plain ok with the same id.
    again = await stack.client.post("/api/worker/pool/heartbeat", json={"name": "pool-re"})
    assert again.status_code == 200
    assert again.json() == {"status": "ok", "name": "pool-re", "runtime_id": body["runtime_id"]}


@pytest.mark.parametrize("uri_key", ["uri", "base_url"])
async def test_heartbeat_auto_recreate_uri_spellings(make_stack: StackFactory, db: Db, uri_key: str) -> None:
    stack = await make_stack(auto_recreate_runtime=True)
    response = await stack.client.post(
        "/api/worker/pool/heartbeat",
        json={
            "name": f"pool-{uri_key}",
            "registration": {"name": "x", "runtime": "Nodejs", uri_key: "http://u"},
        },
    )
    assert response.status_code == 200
    assert response.json()["status"] == "recreated"
    assert response.json()["runtime"] == "nodejs"
    assert (await db.component(f"pool-{uri_key}"))["uri"] == "http://u"


@pytest.mark.parametrize(
    "registration",
    [
        None,
        {"name": "x"},
        {"runtime": "python"},
        {"name": "", "runtime": "python"},
        {"name": "x", "runtime": ""},
    ],
)
async def test_heartbeat_auto_recreate_needs_name_and_runtime(
    make_stack: StackFactory, db: Db, registration
) -> None:
    stack = await make_stack(auto_recreate_runtime=True)
    body = {"name": "pool-incomplete"}
    if registration is not None:
        body["registration"] = registration
    response = await stack.client.post("/api/worker/pool/heartbeat", json=body)
    assert response.status_code == 404
    assert response.json() == {"detail": {"status": "unknown", "name": "pool-incomplete"}}
    assert response.headers["Retry-After"] == "7"
    assert await db.component("pool-incomplete") is None


# --------------------------------------------------------------------------- listing


async def test_list_worker_pools_shape_filters_and_order(stack: Stack) -> None:
    await register(stack, name="c-pool", runtime="python", capacity=3, labels={"k": "v"})
    await register(stack, name="a-pool", runtime="nodejs")
    await register(stack, name="b-pool", runtime="python", status="busy")
    await register(stack, name="d-pool", runtime="python")
    await register(
        stack, "/api/runtime/register", name="a-broker", kind="broker", uri="nats://x", runtime="python"
    )
    await stack.client.request("DELETE", "/api/worker/pool/deregister", json={"name": "d-pool"})

    everything = await pools(stack)
    assert set(everything) == {"items", "count", "runtime", "status", "error"}
    assert [i["name"] for i in everything["items"]] == ["a-pool", "b-pool", "c-pool", "d-pool"]
    assert everything["count"] == 4
    assert everything["runtime"] is None and everything["status"] is None and everything["error"] is None

    item = next(i for i in everything["items"] if i["name"] == "c-pool")
    assert set(item) == COMPONENT_KEYS
    assert item["runtime"] == {"type": "python", "pid": None, "hostname": None}
    assert item["status"] == "ready"
    assert item["capacity"] == 3
    assert item["labels"] == {"k": "v"}
    assert iso(item["heartbeat"]) >= iso(item["created_at"])
    assert iso(item["updated_at"]) >= iso(item["created_at"])

    python = await pools(stack, runtime="python")
    assert [i["name"] for i in python["items"]] == ["b-pool", "c-pool", "d-pool"]
    assert python["count"] == 3 and python["runtime"] == "python" and python["status"] is None

    offline = await pools(stack, status="offline")
    assert [i["name"] for i in offline["items"]] == ["d-pool"]
    assert offline["status"] == "offline"

    both = await pools(stack, runtime="python", status="ready")
    assert [i["name"] for i in both["items"]] == ["c-pool"]
    assert (both["runtime"], both["status"], both["count"]) == ("python", "ready", 1)

    none = await pools(stack, runtime="java")
    assert none == {"items": [], "count": 0, "runtime": "java", "status": None, "error": None}


async def test_runtime_filter_ignores_case(stack: Stack) -> None:
    """A pool registered with runtime `CPU` is listed by `?runtime=cpu` (and the other way round);
    its runtime is kept as it was sent."""
    await register(stack, name="pool-upper", runtime="CPU")
    await register(stack, name="pool-lower", runtime="gpu")
    for asked in ("cpu", "CPU", "Cpu"):
        body = await pools(stack, runtime=asked)
        assert [item["name"] for item in body["items"]] == ["pool-upper"], asked
        assert body["items"][0]["runtime"]["type"] == "CPU" and body["runtime"] == asked
    assert [item["name"] for item in (await pools(stack, runtime="GPU"))["items"]] == ["pool-lower"]


async def test_list_components_of_any_kind_a_page_at_a_time(stack: Stack) -> None:
    for name in ("s2", "s1", "s3"):
        await register(stack, "/api/runtime/register", name=name, kind="scheduler", runtime="cron")
    await register(stack, "/api/runtime/register", name="m1", kind="monitor")
    await register(stack, name="p1", runtime="python")

    schedulers = await pools(stack, "/api/runtime/components", kind="scheduler")
    assert [i["name"] for i in schedulers["items"]] == ["s1", "s2", "s3"]
    assert set(schedulers["items"][0]) == COMPONENT_KEYS
    page = await pools(stack, "/api/runtime/components", kind="scheduler", limit=2, offset=1)
    assert [i["name"] for i in page["items"]] == ["s2", "s3"] and page["count"] == 2
    monitors = await pools(stack, "/api/runtime/components", kind="monitor")
    assert [i["name"] for i in monitors["items"]] == ["m1"]
    # Without a kind: the worker pools, as `/api/worker/pools` lists them.
    assert await pools(stack, "/api/runtime/components") == await pools(stack)
    unknown = await stack.client.get("/api/runtime/components", params={"kind": "toaster"})
    assert unknown.status_code == 422


async def test_list_empty(stack: Stack) -> None:
    assert await pools(stack) == {"items": [], "count": 0, "runtime": None, "status": None, "error": None}


# --------------------------------------------------------------------------- brokers


async def test_broker_endpoints_are_real(stack: Stack, db: Db) -> None:
    missing = await stack.client.post("/api/broker/register", json={"name": "b1"})
    assert missing.status_code == 400

    registered = await register(
        stack,
        "/api/broker/register",
        name="b1",
        uri="nats://b1:4222",
        runtime="nats",
        kind="worker_pool",  # the broker endpoint fixes the kind
    )
    assert registered["kind"] == "broker" and registered["runtime"] == "nats"
    await register(stack, "/api/broker/register", name="a0", base_url="nats://a0:4222")
    await register(stack, name="b1")  # a worker pool of the same name is not a broker

    brokers = await pools(stack, "/api/brokers")
    assert [i["name"] for i in brokers["items"]] == ["a0", "b1"]
    assert brokers["count"] == 2
    assert (await pools(stack, "/api/brokers", runtime="nats"))["count"] == 1

    beat = await stack.client.post("/api/broker/heartbeat", json={"name": "b1"})
    assert beat.status_code == 200
    assert beat.json() == {"status": "ok", "name": "b1", "runtime_id": registered["runtime_id"]}
    unknown = await stack.client.post("/api/broker/heartbeat", json={"name": "nope"})
    assert unknown.status_code == 404
    assert unknown.json() == {"detail": {"status": "unknown", "name": "nope"}}
    assert unknown.headers["Retry-After"] == "7"

    gone = await stack.client.request("DELETE", "/api/broker/deregister", json={"name": "b1"})
    assert gone.status_code == 200
    assert gone.json() == {
        "status": "ok",
        "name": "b1",
        "runtime_id": None,
        "kind": "broker",
        "runtime": None,
    }
    assert (await db.component("b1", "broker"))["status"] == "offline"
    assert (await db.component("b1", "worker_pool"))["status"] == "ready"
    assert [i["name"] for i in (await pools(stack, "/api/brokers", status="offline"))["items"]] == ["b1"]
    assert await db.events_for("b1", "broker") == ["runtime.registered", "runtime.deregistered"]

    back = await stack.client.post("/api/broker/heartbeat", json={"name": "b1"})
    assert back.status_code == 200
    assert (await db.component("b1", "broker"))["status"] == "ready"


async def test_broker_deregister_unknown_is_200(stack: Stack) -> None:
    response = await stack.client.request("DELETE", "/api/broker/deregister", json={"name": "nope"})
    assert response.status_code == 200
    assert response.json()["kind"] == "broker"


# --------------------------------------------------------------------------- system


async def test_health_and_ready(stack: Stack) -> None:
    health = await stack.client.get("/health")
    assert health.status_code == 200 and health.json() == {"status": "ok"}
    ready = await stack.client.get("/ready")
    assert ready.status_code == 200 and ready.json()["status"] == "ready"


async def test_openapi_lists_every_runtime_route(stack: Stack) -> None:
    response = await stack.client.get("/openapi.json")
    assert response.status_code == 200
    paths = response.json()["paths"]
    expected = {
        "/api/worker/pool/register": {"post"},
        "/api/worker/pool/deregister": {"delete", "post"},
        "/api/worker/pool/heartbeat": {"post"},
        "/api/worker/pools": {"get"},
        "/api/runtime/components": {"get"},
        "/api/runtime/register": {"post"},
        "/api/runtime/deregister": {"delete"},
        "/api/broker/register": {"post"},
        "/api/broker/heartbeat": {"post"},
        "/api/brokers": {"get"},
        "/api/broker/deregister": {"delete"},
        "/api/requests/{request_id}": {"get"},
        "/health": {"get"},
        "/ready": {"get"},
    }
    for path, methods in expected.items():
        assert path in paths, path
        assert methods <= set(paths[path]), (path, set(paths[path]))
    heartbeat = paths["/api/worker/pool/heartbeat"]["post"]["responses"]
    assert "404" in heartbeat and "200" in heartbeat
    # Commands name the Idempotency-Key header; reads do not.
    key = {"name": "idempotency-key", "in": "header", "required": False}
    for path, method in [("/api/worker/pool/register", "post"), ("/api/runtime/deregister", "delete")]:
        [parameter] = [p for p in paths[path][method]["parameters"] if p["name"] == "idempotency-key"]
        assert key.items() <= parameter.items()
        assert parameter["schema"]["maxLength"] == 255
    for path in ("/api/worker/pools", "/api/requests/{request_id}"):
        assert all(p["name"] != "idempotency-key" for p in paths[path]["get"].get("parameters", []))


async def test_request_outcome_endpoint(stack: Stack) -> None:
    response = await stack.client.post(
        "/api/worker/pool/register", json={"name": "pool-req", "runtime": "python"}
    )
    assert response.status_code == 200
    request_id = response.headers["X-Request-ID"]
    outcome = await stack.client.get(f"/api/requests/{request_id}")
    assert outcome.status_code == 200
    assert outcome.json() == {
        "request_id": request_id,
        "state": "done",
        "status_code": 200,
        "response": response.json(),
    }

    unknown = await stack.client.get("/api/requests/0123456789abcdef")
    assert unknown.status_code == 404
    assert unknown.json() == {"detail": "no request '0123456789abcdef' was ever accepted"}


async def test_an_accepted_request_is_pending_until_applied(make_stack: StackFactory) -> None:
    """202 names a request the facade has noted: pending while no consumer has applied it (or
    while none is up to say), then its outcome."""
    stack = await make_stack(consumers=False, api_reply_timeout=0.3)
    response = await stack.client.post("/api/worker/pool/register", json={"name": "pool-late"})
    assert response.status_code == 202
    location = response.headers["Location"]
    pending = await stack.client.get(location)
    assert pending.status_code == 202
    request_id = response.json()["request_id"]
    assert pending.json() == {"request_id": request_id, "state": "pending"}
    assert int(pending.headers["Retry-After"]) >= 1
    await stack.start_consumers()

    async def done():
        answer = await stack.client.get(location)
        return answer.json() if answer.status_code == 200 else None

    body = await wait_for(done, what="the late registration's outcome")
    assert body["status_code"] == 200 and body["response"]["name"] == "pool-late"


async def test_many_concurrent_registrations(stack: Stack, db: Db) -> None:
    names = [f"burst-{i:03d}" for i in range(100)]
    responses = await asyncio.gather(
        *[
            stack.client.post("/api/worker/pool/register", json={"name": n, "runtime": "python"})
            for n in names
        ]
    )
    assert {r.status_code for r in responses} == {200}
    assert sorted(r.json()["name"] for r in responses) == names
    assert len({r.json()["runtime_id"] for r in responses}) == 100
    listed = await pools(stack)
    assert [i["name"] for i in listed["items"]] == names
    assert await db.value("SELECT count(*) FROM events WHERE type = 'runtime.registered'") == 100
