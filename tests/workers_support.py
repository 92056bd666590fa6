"""Support for the worker tests: one stack per module (facade in-process, the runtime, catalog,
execution and outbox consumers in-process) and real `noetl worker` processes around it.

Test modules load it with `pytest_plugins = ["workers_support"]`, so its fixtures are found.
Worker processes run in their own session; whatever is left of them (and of the sandbox children
they spawned) is killed by process group when the module ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import nats
import psycopg
import pytest
import yaml
from conftest import ConsumerTask, Db, Servers, facade, reset_state
from nats.js.errors import NotFoundError
from psycopg.rows import dict_row

from consumers.process import CONSUMER_NAMES
from noetl.bus import subjects
from noetl.contracts.execution import TERMINAL

LEASE_SECONDS = 2.0
WORKER_ENV = {
    "NOETL_JOB_LEASE_SECONDS": str(LEASE_SECONDS),
    "NOETL_WORKER_HEARTBEAT_INTERVAL": "1",
    "NOETL_WORKER_GRACE_SECONDS": "20",
}
# Every consumer but the sweeper: the worker tests do not wait on liveness.
STACK_CONSUMERS = [name for name in CONSUMER_NAMES if name != "sweeper"]
DOMAIN_TABLES = ("jobs", "executions", "catalog", "catalog_paths")

# The events a worker's attempt causes: each names the step, the attempt and the worker.
ACTION_EVENTS = ("action_started", "action_completed", "action_error")

# The contract's playbook, verbatim.
HELLO_PATH = "examples/hello_world"
HELLO_YAML = """\
apiVersion: noetl.io/v1
kind: Playbook
metadata:
  name: hello_world
  path: examples/hello_world
workload:
  message: "Hello World"
workflow:
  - step: start
    next:
      - step: greet
  - step: greet
    type: python
    code: |
      def main(message):
          return {"status": "success", "data": {"message": message}}
    data:
      message: "{{ workload.message }}"
    next:
      - step: end
  - step: end
"""


# --------------------------------------------------------------------------- playbooks


def playbook(
    path: str,
    workflow: list[dict[str, Any]],
    *,
    workload: dict[str, Any] | None = None,
    runtime: str | None = None,
) -> dict[str, Any]:
    document: dict[str, Any] = {
        "apiVersion": "noetl.io/v1",
        "kind": "Playbook",
        "metadata": {"name": path.rsplit("/", 1)[-1], "path": path},
        "workload": workload or {},
        "workflow": workflow,
    }
    if runtime is not None:
        document["runtime"] = runtime
    return document


def python_step(
    name: str, code: str, *, data: dict[str, Any] | None = None, next: Any = None, **extra: Any
) -> dict:
    step: dict[str, Any] = {"step": name, "type": "python", "code": code, **extra}
    if data is not None:
        step["data"] = data
    if next is not None:
        step["next"] = next
    return step


def to_end(*names: str) -> list[dict[str, str]]:
    return [{"step": n} for n in (names or ("end",))]


# --------------------------------------------------------------------------- worker processes


def _cli_worker_works() -> bool:
    script = Path(sys.executable).parent / "noetl"
    if not script.exists():
        return False
    try:
        done = subprocess.run([str(script), "worker", "--help"], capture_output=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def worker_argv(use_cli: bool, name: str, runtime: str, capacity: int) -> list[str]:
    if use_cli:
        script = str(Path(sys.executable).parent / "noetl")
        return [script, "worker", "--name", name, "--runtime", runtime, "--capacity", str(capacity)]
    code = (
        "import asyncio, logging\n"
        "logging.basicConfig(level='INFO')\n"
        "from noetl.settings import Settings\n"
        "from noetl.worker.main import run_worker\n"
        f"asyncio.run(run_worker(Settings(), name={name!r}, runtime={runtime!r}, capacity={capacity}))\n"
    )
    return [sys.executable, "-c", code]


@dataclass
class Worker:
    name: str
    runtime: str
    popen: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def alive(self) -> bool:
        return self.popen.poll() is None

    def worker_id_prefix(self) -> str:
        """Events name the worker `<pool>@<host>:<pid>`."""
        return f"{self.name}@"

    def ran(self, worker_field: str | None) -> bool:
        return (
            bool(worker_field)
            and worker_field.startswith(self.name + "@")
            and worker_field.endswith(f":{self.pid}")
        )

    def signal(self, sig: int) -> None:
        if self.alive:
            os.kill(self.pid, sig)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    async def logged(self, text: str, timeout: float = 15.0) -> None:
        """Wait until the worker's output holds `text` (how a test knows a signal has landed)."""
        deadline = time.monotonic() + timeout
        while text not in self.output():
            if time.monotonic() > deadline or not self.alive:
                pytest.fail(f"worker {self.name} never logged {text!r}:\n{self.output()[-3000:]}")
            await asyncio.sleep(0.02)

    async def exited(self, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while self.popen.poll() is None:
            if time.monotonic() > deadline:
                pytest.fail(f"worker {self.name} still running after {timeout}s:\n{self.output()[-3000:]}")
            await asyncio.sleep(0.05)
        return self.popen.returncode


class Workers:
    def __init__(self, root: Path, nats_url: str, db: Db) -> None:
        self.root = root
        self.nats_url = nats_url
        self.db = db
        self.all: list[Worker] = []
        self.use_cli = _cli_worker_works()

    def start(self, name: str, *, runtime: str = "python", capacity: int = 4, **env: str) -> Worker:
        log = self.root / f"worker-{name}.log"
        full_env = {
            **os.environ,
            "PYTHONUNBUFFERED": "1",
            "NOETL_NATS_URL": self.nats_url,
            **WORKER_ENV,
            # DuckDB files are per execution id, which starts again with each test session.
            "NOETL_WORKER_DATA_DIR": str(self.root / "worker-data"),
            **env,
        }
        with log.open("wb") as out:
            popen = subprocess.Popen(
                worker_argv(self.use_cli, name, runtime, capacity),
                env=full_env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        worker = Worker(name, runtime, popen, log)
        self.all.append(worker)
        return worker

    async def ready(self, *workers: Worker, timeout: float = 30.0) -> None:
        """Each worker's pool is registered (status ready, with this process's pid)."""
        deadline = time.monotonic() + timeout
        for worker in workers:
            while True:
                if not worker.alive:
                    pytest.fail(f"worker {worker.name} exited at start:\n{worker.output()[-3000:]}")
                row = await self.db.one(
                    "SELECT status FROM runtime_components WHERE kind = 'worker_pool' AND name = %s "
                    "AND (runtime->>'pid')::int = %s",
                    worker.name,
                    worker.pid,
                )
                if row is not None and row["status"] == "ready":
                    break
                if time.monotonic() > deadline:
                    pytest.fail(f"worker {worker.name} never registered:\n{worker.output()[-3000:]}")
                await asyncio.sleep(0.05)

    async def started(self, *specs: tuple[str, str], **env: str) -> list[Worker]:
        """Start workers (name, runtime) side by side and wait until all are registered."""
        workers = [self.start(name, runtime=runtime, **env) for name, runtime in specs]
        await self.ready(*workers)
        return workers

    def by_worker_field(self, worker_field: str | None) -> Worker:
        for worker in self.all:
            if worker.ran(worker_field):
                return worker
        raise AssertionError(f"no worker of this test ran as {worker_field!r}")

    def logs(self) -> str:
        return "\n".join(f"----- {w.name} (pid {w.pid})\n{w.output()[-2500:]}" for w in self.all)

    def cleanup(self) -> None:
        for worker in self.all:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(worker.pid, signal.SIGKILL)  # the worker and its sandbox children
            with contextlib.suppress(subprocess.TimeoutExpired):
                worker.popen.wait(10)


# --------------------------------------------------------------------------- the stack


def process_gone(pid: int) -> bool:
    """True when `pid` is not a running process (gone, or a zombie no one reaped yet)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


def flat(event: dict[str, Any]) -> dict[str, Any]:
    """An event as the tests read it: its fields, with `type`, and its step, attempt and worker."""
    meta = event.get("meta") or {}
    return {
        **event,
        "type": event["event_type"],
        "step": None if event["event_type"].startswith("execution_") else event["node_name"],
        "attempt": meta.get("attempt"),
        "job_id": meta.get("job_id"),
        "worker": event["worker_id"],
    }


def events_of(detail: dict[str, Any], event_type: str | None = None, step: str | None = None) -> list[dict]:
    """The execution's events, oldest first, filtered by type and step."""
    found = []
    for event in map(flat, detail["events"]):
        if event_type is not None and event["type"] != event_type:
            continue
        if step is not None and event["step"] != step:
            continue
        found.append(event)
    return found


CONTROL_NODES = ("start", "end", "router")


def action_events(detail: dict[str, Any], event_type: str) -> list[dict]:
    """The events of one type about steps that do work (not start, end or routers)."""
    return [e for e in events_of(detail, event_type) if e["node_type"] not in CONTROL_NODES and e["step"]]


def types_of(detail: dict[str, Any], step: str | None = None) -> list[str]:
    return [e["type"] for e in events_of(detail, step=step)]


@dataclass
class WorkerStack:
    servers: Servers
    client: httpx.AsyncClient
    db: Db
    nc: Any
    workers: Workers
    root: Path
    main: Worker | None = None
    _counter: list[int] = field(default_factory=lambda: [0])

    @property
    def js(self) -> Any:
        return self.nc.jetstream()

    def scratch(self, label: str) -> Path:
        """A fresh directory the steps (other processes) and the test both see."""
        self._counter[0] += 1
        path = self.root / f"{label}-{self._counter[0]}"
        path.mkdir(parents=True)
        return path

    async def until(
        self,
        check: Callable[[], Awaitable[Any]],
        *,
        timeout: float = 30.0,
        what: str = "",
        interval: float = 0.05,
    ) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            result = await check()
            if result:
                return result
            if time.monotonic() > deadline:
                pytest.fail(
                    f"timed out after {timeout}s waiting for {what}: last {result!r}\n{self.workers.logs()}"
                )
            await asyncio.sleep(interval)

    async def register(self, document: dict[str, Any]) -> dict[str, Any]:
        response = await self.client.post("/api/catalog/register", json={"content": yaml.safe_dump(document)})
        assert response.status_code == 200, response.text
        return response.json()

    async def run(self, path: str, **parameters: Any) -> str:
        response = await self.client.post(
            "/api/executions/run", json={"path": path, "parameters": parameters}
        )
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["status"] == "running", body
        return body["execution_id"]

    async def detail(self, execution_id: str) -> dict[str, Any]:
        response = await self.client.get(f"/api/executions/{execution_id}")
        assert response.status_code == 200, response.text
        return response.json()

    async def finished(self, execution_id: str, timeout: float = 30.0) -> dict[str, Any]:
        async def check() -> dict[str, Any] | None:
            detail = await self.detail(execution_id)
            return detail if detail["status"] in TERMINAL else None

        return await self.until(check, timeout=timeout, what=f"execution {execution_id} to end")

    async def event(
        self,
        execution_id: str,
        event_type: str,
        step: str | None = None,
        count: int = 1,
        timeout: float = 30.0,
    ) -> list[dict[str, Any]]:
        """Wait until the execution has at least `count` such events; returns them."""

        async def check() -> list[dict[str, Any]] | None:
            found = events_of(await self.detail(execution_id), event_type, step)
            return found if len(found) >= count else None

        return await self.until(
            check, timeout=timeout, what=f"{count} {event_type} of {step} in {execution_id}"
        )

    async def hello_on(self, worker: Worker | None = None) -> dict[str, Any]:
        """Run the contract's hello-world playbook (registered by `wx`) and wait for it to complete."""
        detail = await self.finished(await self.run(HELLO_PATH))
        assert detail["status"] == "completed", detail
        if worker is not None:
            (started,) = events_of(detail, "action_started")
            assert worker.ran(started["worker"]), started
        return detail

    async def publish_json(self, subject: str, payload: dict[str, Any], msg_id: str) -> None:
        await self.js.publish(
            subject, json.dumps(payload).encode(), headers={"Nats-Msg-Id": msg_id}, timeout=5
        )


async def reset_jobs(servers: Servers) -> None:
    """Empty the domain tables and the jobs stream, and delete the jobs stream's durables."""
    async with await psycopg.AsyncConnection.connect(servers.dsn, autocommit=True) as conn:
        await conn.execute(f"TRUNCATE {', '.join(DOMAIN_TABLES)} CASCADE")
    client = await nats.connect(servers.nats_url, connect_timeout=5)
    try:
        js = client.jetstream()
        try:
            names = [c.name for c in await js.consumers_info(subjects.JOBS_STREAM)]
        except NotFoundError:
            return
        for name in names:
            with contextlib.suppress(NotFoundError):
                await js.delete_consumer(subjects.JOBS_STREAM, name)
        await js.purge_stream(subjects.JOBS_STREAM)
    finally:
        await client.close()


@pytest.fixture(scope="module")
async def wx(servers: Servers, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[WorkerStack]:
    """The module's stack with one python worker pool, `w-main` (capacity 4), already registered."""
    await reset_state(servers)
    await reset_jobs(servers)
    root = tmp_path_factory.mktemp("workers")
    settings = servers.settings()
    async with contextlib.AsyncExitStack() as exits:
        _, client = await exits.enter_async_context(facade(settings))
        consumers = ConsumerTask(STACK_CONSUMERS, settings)
        await consumers.start()
        exits.push_async_callback(consumers.stop)
        conn = await psycopg.AsyncConnection.connect(servers.dsn, autocommit=True, row_factory=dict_row)
        exits.push_async_callback(conn.close)
        nc = await nats.connect(servers.nats_url, connect_timeout=5)
        exits.push_async_callback(nc.close)
        db = Db(conn)
        workers = Workers(root, servers.nats_url, db)
        exits.callback(workers.cleanup)
        stack = WorkerStack(servers, client, db, nc, workers, root)
        response = await client.post("/api/catalog/register", json={"content": HELLO_YAML})
        assert response.status_code == 200, response.text
        (stack.main,) = await workers.started(("w-main", "python"))
        yield stack
    await reset_jobs(servers)
