"""Shared by the catalog, execution, event-stream and CLI tests: playbooks, the catalog and execution
stack, a real HTTP server in this event loop (for Server-Sent Events), and an SSE reader.

Test modules declare their fixtures with the factories here (`domain_stack`, `serve`).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import httpx
import nats
import psycopg
import uvicorn
import yaml
from conftest import Servers, Stack, StackFactory
from nats.js.errors import NotFoundError

from consumers.process import CONSUMER_NAMES
from noetl.bus import subjects
from noetl.embedded import free_port
from noetl.facade.app import create_app
from noetl.settings import Settings

DOMAIN_TABLES = ("executions", "catalog", "catalog_paths")
# Every consumer but the registry's and liveness' own.
DOMAIN_CONSUMERS = [name for name in CONSUMER_NAMES if name not in ("runtime", "sweeper")]

RESPONSE_KEYS = {
    "execution_id",
    "id",
    "catalog_id",
    "path",
    "playbook_id",
    "playbook_name",
    "version",
    "type",
    "execution_type",
    "status",
    "timestamp",
    "start_time",
    "end_time",
    "progress",
    "result",
    "error",
}
DETAIL_KEYS = RESPONSE_KEYS | {
    "workload",
    "parent_execution_id",
    "parent_event_id",
    "parent_step",
    "metadata",
    "events",
}
# An execution's event as NoETL's clients read it.
EVENT_KEYS = {
    *("event_id", "execution_id", "event_type", "node_id", "node_name", "node_type", "status", "duration"),
    *("timestamp", "created_at", "context", "result", "error", "current_index", "current_item", "worker_id"),
    *("parent_event_id", "parent_execution_id", "meta"),
}
HELLO_PATH = "examples/hello_world"
HELLO_WORKLOAD = {"message": "Hello World", "nested": {"a": 1, "b": 2}, "list": [1, 2]}


def playbook(
    path: str | None = HELLO_PATH,
    *,
    name: str | None = "hello_world",
    workload: dict[str, Any] | None = None,
    top: dict[str, Any] | None = None,
    kind: str = "Playbook",
) -> str:
    """A playbook of the contract's era as YAML text (`path=None`: no metadata.path)."""
    metadata: dict[str, Any] = {}
    if name is not None:
        metadata["name"] = name
    if path is not None:
        metadata["path"] = path
    document: dict[str, Any] = {"apiVersion": "noetl.io/v1", "kind": kind, "metadata": metadata}
    document.update(top or {})
    document["workload"] = HELLO_WORKLOAD if workload is None else workload
    document["workflow"] = [
        {"step": "start", "next": [{"step": "greet"}]},
        {
            "step": "greet",
            "type": "python",
            "code": "def main(message):\n    return {'status': 'success', 'data': {'message': message}}\n",
            "data": {"message": "{{ workload.message }}"},
            "next": [{"step": "end"}],
        },
        {"step": "end"},
    ]
    return yaml.safe_dump(document, sort_keys=False)


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def iso(value: str) -> datetime:
    moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    assert moment.tzinfo is not None, value
    return moment


async def register(client: httpx.AsyncClient, text: str | None = None, **body: Any) -> dict[str, Any]:
    """Register `text` (default: the hello-world playbook) and return the 200 body."""
    payload = body or {"content_base64": b64(text if text is not None else playbook())}
    response = await client.post("/api/catalog/register", json=payload)
    assert response.status_code == 200, response.text
    return response.json()


async def run(
    client: httpx.AsyncClient, endpoint: str = "/api/executions/run", /, **body: Any
) -> dict[str, Any]:
    """POST a run (the body's fields as keywords) and return the 200 body."""
    response = await client.post(endpoint, json=body or {"path": HELLO_PATH})
    assert response.status_code == 200, response.text
    return response.json()


async def truncate_domain(dsn: str) -> None:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        # CASCADE: whatever else refers to executions (a worker's jobs) goes too.
        await conn.execute(f"TRUNCATE {', '.join(DOMAIN_TABLES)} CASCADE")


async def purge_jobs(nats_url: str) -> None:
    """Runs here dispatch jobs that no worker takes: leave none behind for other tests' workers."""
    client = await nats.connect(nats_url, connect_timeout=5)
    try:
        with contextlib.suppress(NotFoundError):
            await client.jetstream().purge_stream(subjects.JOBS_STREAM)
    finally:
        await client.close()


@contextlib.asynccontextmanager
async def domain_stack(make_stack: StackFactory, servers: Servers, **overrides: Any) -> AsyncIterator[Stack]:
    """A facade with the catalog, execution and outbox consumers, on empty tables and streams
    (`make_stack` has already emptied the foundation's tables and the other streams)."""
    await truncate_domain(servers.dsn)
    await purge_jobs(servers.nats_url)
    stack = await make_stack(consumers=False, **overrides)
    await stack.start_consumers(DOMAIN_CONSUMERS)
    try:
        yield stack
    finally:
        await stack.stop_consumers()
        await purge_jobs(servers.nats_url)


# --------------------------------------------------------------------------- a real HTTP server


@dataclass
class LiveApi:
    url: str
    app: Any
    client: httpx.AsyncClient


@contextlib.asynccontextmanager
async def serve(settings: Settings) -> AsyncIterator[LiveApi]:
    """The facade behind uvicorn on a free port, in this event loop (ASGITransport buffers whole
    responses, so a never-ending SSE response needs a real server)."""
    app = create_app(settings)
    port = free_port()
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, log_level="warning", lifespan="on", timeout_graceful_shutdown=1
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    try:
        async with asyncio.timeout(15):
            while not server.started:
                if task.done():
                    task.result()
                    raise RuntimeError("uvicorn stopped before it started")
                await asyncio.sleep(0.02)
            await app.state.bus.wait_ready()
        url = f"http://127.0.0.1:{port}"
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            yield LiveApi(url, app, client)
    finally:
        server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, 10)


# --------------------------------------------------------------------------- Server-Sent Events


@dataclass
class SseEvent:
    id: str | None
    event: str | None
    data: str

    def json(self) -> dict[str, Any]:
        return json.loads(self.data)


class SseReader:
    """Reads one SSE response event by event; comments and `retry:` lines are skipped."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self.lines = response.aiter_lines()
        self.retry: int | None = None

    async def next(self, timeout: float = 10.0) -> SseEvent:
        async with asyncio.timeout(timeout):
            fields: dict[str, list[str]] = {}
            async for line in self.lines:
                if line == "":
                    if "data" in fields:
                        return SseEvent(
                            id=fields.get("id", [None])[-1],
                            event=fields.get("event", [None])[-1],
                            data="\n".join(fields["data"]),
                        )
                    fields = {}
                    continue
                if line.startswith(":"):
                    continue
                name, _, value = line.partition(":")
                value = value.removeprefix(" ")
                if name == "retry":
                    self.retry = int(value)
                    continue
                fields.setdefault(name, []).append(value)
        raise EOFError("the event stream ended")

    async def take(self, count: int, timeout: float = 10.0) -> list[SseEvent]:
        return [await self.next(timeout) for _ in range(count)]

    async def nothing_within(self, seconds: float) -> bool:
        try:
            await self.next(seconds)
        except TimeoutError:
            return True
        return False


@contextlib.asynccontextmanager
async def sse(
    client: httpx.AsyncClient, path: str, last_event_id: str | None = None
) -> AsyncIterator[SseReader]:
    headers = {"Accept": "text/event-stream"}
    if last_event_id is not None:
        headers["Last-Event-ID"] = last_event_id
    async with client.stream("GET", path, headers=headers) as response:
        assert response.status_code == 200, await response.aread()
        assert response.headers["content-type"].startswith("text/event-stream")
        yield SseReader(response)
