"""`noetl dev` as a person uses it, and misuses it: it says `ready` only when every part is, refuses
a wrong server address and a data directory in use at once, restarts a part that dies, lets a
running step finish on Ctrl-C, and leaves nothing running when it is killed."""

from __future__ import annotations

import asyncio
import fcntl
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import httpx
from conftest import ConsumerTask, Db, Proc, Processes, Servers, alive, children_of, noetl_command, parent_of
from helpers_execution import DOMAIN_CONSUMERS

from noetl.dev import LOCK_FILE
from noetl.embedded import free_port

SLOW_STEP = """\
apiVersion: noetl.io/v1
kind: Playbook
metadata: {name: nap, path: dev/nap}
workflow:
  - step: start
    next: [{step: nap}]
  - step: nap
    type: python
    code: |
      def main():
          import time
          time.sleep(3)
          return {"status": "success", "data": {"slept": 3}}
    next: [{step: end}]
  - step: end
"""


def dev_argv(data_dir: Path, *more: str) -> list[str]:
    ports = ["--port", str(free_port()), "--nats-port", str(free_port()), "--pg-port", str(free_port())]
    return ["--log-level", "warning", "dev", "--data-dir", str(data_dir), *ports, *more]


def said(proc: Proc, text: str, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while text not in proc.output():
        assert proc.popen.poll() is None, proc.output()
        assert time.monotonic() < deadline, f"never said {text!r}:\n{proc.output()}"
        time.sleep(0.05)


def api_url(proc: Proc) -> str:
    said(proc, "noetl dev: ready")
    found = re.search(r"API +(http://\S+)", proc.output())
    assert found, proc.output()
    return found.group(1)


def run_noetl(*args: str, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*noetl_command(), *args], capture_output=True, text=True, timeout=timeout, env={**os.environ, **env}
    )


def test_a_wrong_server_address_is_refused_at_once_never_ready(servers: Servers, scratch_dir: Path) -> None:
    url = f"nats://127.0.0.1:{free_port()}"
    wrong_nats = run_noetl(*dev_argv(scratch_dir), env={"NOETL_NATS_URL": url})
    assert wrong_nats.returncode == 1 and "ready" not in wrong_nats.stdout
    assert wrong_nats.stderr == (
        f"noetl: cannot connect to NATS at {url}: connection refused (set by NOETL_NATS_URL)\n"
    )
    port = free_port()
    wrong_pg = run_noetl(
        *dev_argv(scratch_dir),
        env={"NOETL_NATS_URL": servers.nats_url, "NOETL_PG_DSN": f"postgresql://postgres@127.0.0.1:{port}/x"},
    )
    assert wrong_pg.returncode == 1 and "ready" not in wrong_pg.stdout
    assert wrong_pg.stderr.startswith(f"noetl: cannot connect to PostgreSQL at 127.0.0.1:{port}/x: ")
    assert "Traceback" not in wrong_pg.stderr


def test_dev_refuses_a_second_start_restarts_a_dead_part_and_dies_whole_on_sigkill(
    processes: Processes, scratch_dir: Path
) -> None:
    data = scratch_dir / "data"
    dev = processes.start(dev_argv(data), {})
    api = api_url(dev)
    # A python step leaves a sandbox child in the worker: a grandchild that must die too.
    with httpx.Client(base_url=api, timeout=30) as client:
        # `ready` came once every part was: the worker is registered, the API reaches the bus.
        pools = client.get("/api/worker/pools").json()["items"]
        assert [(p["name"], p["status"]) for p in pools] == [("local", "ready")]
        assert client.get("/ready").status_code == 200
        # The web console's URL is printed, and its page is there.
        console = re.search(r"console +(http://\S+)", dev.output())
        assert console and console.group(1) == f"{api}/ui", dev.output()
        page = client.get(console.group(1))
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        hello = (Path(__file__).resolve().parent.parent / "examples" / "hello_world.yaml").read_text()
        assert client.post("/api/catalog/register", json={"content": hello}).status_code == 200
        eid = client.post("/api/executions/run", json={"path": "examples/hello_world"}).json()["execution_id"]
        deadline = time.monotonic() + 60
        while client.get(f"/api/executions/{eid}").json()["status"] != "completed":
            assert time.monotonic() < deadline
            time.sleep(0.1)

    # The data directory is in use: refused at once, naming the process that holds it.
    started = time.monotonic()
    second = run_noetl(*dev_argv(data), env={})
    assert time.monotonic() - started < 15
    assert second.returncode == 1
    assert re.fullmatch(
        rf"noetl: the data directory {re.escape(str(data))} is in use by pid {dev.pid} \(noetl --log-level "
        r"warning dev --data-dir .*\); stop it, or pass another --data-dir\n",
        second.stderr,
    ), second.stderr

    # Every part runs in a session of its own: a terminal's Ctrl-C reaches only noetl dev.
    direct = {pid for pid in children_of(dev.pid) if parent_of(pid) == dev.pid}
    assert len(direct) == 5, direct  # nats-server, postgres, consumers, one worker, the API
    assert all(os.getsid(pid) == pid for pid in direct)

    # A part that dies is reported and started again.
    consumers = next(p for p in direct if b"consumer" in Path(f"/proc/{p}/cmdline").read_bytes())
    os.kill(consumers, signal.SIGKILL)
    said(dev, "consumers exited with signal SIGKILL; restarting in 1s")
    said(dev, "consumers ready again")

    everything = children_of(dev.pid)
    assert len(everything) > len(direct)  # postgres' own processes, the worker's sandbox child
    dev.signal(signal.SIGKILL)
    deadline = time.monotonic() + 60
    while left := {pid for pid in everything if alive(pid)}:
        assert time.monotonic() < deadline, f"still running after noetl dev was killed: {left}"
        time.sleep(0.1)
    with (data / LOCK_FILE).open() as lock:  # and with the last server, the lock is gone too
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)


async def test_ctrl_c_lets_a_running_step_finish(clean: Servers, processes: Processes, db: Db) -> None:
    env = {
        "NOETL_NATS_URL": clean.nats_url,
        "NOETL_PG_DSN": clean.consumer_dsn,
        "NOETL_WORKER_GRACE_SECONDS": "20",
    }
    dev = processes.start(["--log-level", "warning", "dev", "--port", str(free_port())], env)
    api = await asyncio.to_thread(api_url, dev)
    async with httpx.AsyncClient(base_url=api, timeout=30) as client:
        assert (await client.post("/api/catalog/register", json={"content": SLOW_STEP})).status_code == 200
        eid = (await client.post("/api/executions/run", json={"path": "dev/nap"})).json()["execution_id"]

    async def step_running() -> bool:
        types = await db.all("SELECT type FROM events WHERE entity->>'execution_id' = %s", eid)
        return "action_started" in {row["type"] for row in types}

    deadline = time.monotonic() + 30
    while not await step_running():
        assert time.monotonic() < deadline, dev.output()
        await asyncio.sleep(0.05)
    os.killpg(dev.pid, signal.SIGINT)  # as a terminal's Ctrl-C: to the whole foreground group
    assert await asyncio.to_thread(dev.wait, 60) == 0
    output = dev.output()
    assert "noetl dev: stopping" in output and "noetl dev: stopped" in output
    assert "KeyboardInterrupt" not in output and "Traceback" not in output, output

    # Whatever the step reported is applied (now, if the consumers stopped first).
    consumers = ConsumerTask(DOMAIN_CONSUMERS, clean.settings())
    await consumers.start()
    try:
        deadline = time.monotonic() + 30
        while (row := await db.one("SELECT status FROM executions WHERE execution_id = %s", int(eid)))[
            "status"
        ] != "completed":
            assert time.monotonic() < deadline, row
            await asyncio.sleep(0.1)
    finally:
        await consumers.stop()
    types = [
        row["type"]
        for row in await db.all(
            "SELECT type FROM events WHERE entity->>'execution_id' = %s ORDER BY event_id", eid
        )
    ]
    assert types.count("action_started") == 1 and "action_error" not in types, types
    assert "step_completed" in types
