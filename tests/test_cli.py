"""The `noetl` client commands against a running stack: real `noetl api` and `noetl consumer`
processes on the session's NATS and PostgreSQL, and the real `noetl` command run as a subprocess."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import selectors
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import nats
import pytest
from conftest import Processes, Servers, noetl_command, read_stream, reset_state
from helpers_execution import iso, playbook, purge_jobs, truncate_domain

from consumers.process import CONSUMER_NAMES
from noetl.bus import subjects
from noetl.embedded import free_port

CLI_TIMEOUT = 60
# The worker pools of this module run only this runtime's jobs: other tests' playbooks (runtime
# python) stay queued, as the module's first tests expect.
CLI_RUNTIME = "cli"
CLI_WORKERS = 2
CLI_CONSUMERS = [name for name in CONSUMER_NAMES if name != "sweeper"]


@dataclass
class CliStack:
    port: int
    nats_url: str
    files: Path
    worker_pids: list[int]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def api(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30)


@pytest.fixture(scope="module")
def cli_stack(servers: Servers, tmp_path_factory: pytest.TempPathFactory) -> Iterator[CliStack]:
    """`noetl api`, `noetl consumer` (every consumer but the sweeper) and two `noetl worker`s of
    runtime `cli`, started without a name, for every test of this module."""
    asyncio.run(reset_state(servers))
    asyncio.run(truncate_domain(servers.dsn))
    asyncio.run(purge_jobs(servers.nats_url))
    root = tmp_path_factory.mktemp("cli")
    procs = Processes(root)
    bus_env = {"NOETL_NATS_URL": servers.nats_url}
    try:
        consumers = procs.start(
            ["--log-level", "warning", "consumer", *CLI_CONSUMERS],
            {**bus_env, "NOETL_PG_DSN": servers.consumer_dsn},
        )
        port = free_port()
        api = procs.start(["--log-level", "warning", "api", "--port", str(port)], bus_env)
        workers = [
            procs.start(
                ["--log-level", "warning", "worker", "--runtime", CLI_RUNTIME, "--capacity", "2"],
                {**bus_env, "NOETL_WORKER_HEARTBEAT_INTERVAL": "1"},
            )
            for _ in range(CLI_WORKERS)
        ]
        stack = CliStack(port, servers.nats_url, root, [w.pid for w in workers])
        deadline = time.monotonic() + 60
        with stack.api() as client:
            while True:
                for proc in (consumers, api, *workers):
                    assert proc.popen.poll() is None, proc.output()
                with contextlib.suppress(httpx.TransportError):
                    pools = client.get("/api/worker/pools", params={"runtime": CLI_RUNTIME})
                    if pools.status_code == 200 and pools.json()["count"] == CLI_WORKERS:
                        break
                assert time.monotonic() < deadline, api.output() + consumers.output()
                time.sleep(0.1)
        yield stack
    finally:
        for proc in procs.procs:
            proc.signal(signal.SIGTERM)
        for proc in procs.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(10)
        procs.cleanup()
        asyncio.run(purge_jobs(servers.nats_url))


def noetl(
    *args: str, env: dict[str, str] | None = None, timeout: float = CLI_TIMEOUT
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*noetl_command(), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def ok(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0, (
        f"exit {result.returncode}\nstdout: {result.stdout}\nstderr: {result.stderr}"
    )
    return result.stdout


def port_args(stack: CliStack) -> list[str]:
    return ["--host", "127.0.0.1", "--port", str(stack.port)]


def write(stack: CliStack, name: str, text: str) -> Path:
    path = stack.files / name
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def hello_file(cli_stack: CliStack) -> Path:
    return write(cli_stack, "hello.yaml", playbook(path="cli/hello", name="hello"))


@pytest.fixture(scope="module")
def registered(cli_stack: CliStack, hello_file: Path) -> dict:
    """The hello playbook registered once, through the CLI."""
    return json.loads(ok(noetl("register", str(hello_file), *port_args(cli_stack), "--json")))


# --------------------------------------------------------------------------- register and catalog


def test_register_and_catalog_register(cli_stack: CliStack) -> None:
    path = write(cli_stack, "reg.yaml", playbook(path="cli/reg"))
    out = ok(noetl("register", str(path), *port_args(cli_stack)))
    first_line, rest = out.split("\n", 1)
    assert first_line.startswith("registered cli/reg version 1 (catalog_id ")
    assert json.loads(rest)["version"] == 1

    body = json.loads(ok(noetl("catalog", "register", str(path), *port_args(cli_stack), "--json")))
    assert set(body) == {"status", "message", "path", "version", "catalog_id", "kind"}
    assert (body["status"], body["path"], body["version"], body["kind"]) == (
        "success",
        "cli/reg",
        2,
        "Playbook",
    )

    # NOETL_API_URL when neither --host nor --port is given.
    body = json.loads(
        ok(noetl("catalog", "register", str(path), "--json", env={"NOETL_API_URL": cli_stack.url}))
    )
    assert body["version"] == 3
    # The stored content is the file's text, byte for byte (it went as content_base64).
    with cli_stack.api() as client:
        entry = client.get("/api/catalog/playbooks/cli/reg").json()
    assert entry["content"] == path.read_text() and entry["version"] == 3


def test_register_bad_files(cli_stack: CliStack) -> None:
    missing = noetl("register", str(cli_stack.files / "nope.yaml"), *port_args(cli_stack))
    assert missing.returncode == 2 and "cannot read" in missing.stderr

    broken = write(cli_stack, "broken.yaml", "metadata:\n  path: x\n  name: [oops\nworkflow: []\n")
    result = noetl("register", str(broken), *port_args(cli_stack))
    assert result.returncode == 1 and result.stdout == ""
    assert "HTTP 400" in result.stderr and "line 4" in result.stderr

    not_playbook = write(
        cli_stack, "other.yaml", "kind: Foo\nmetadata: {path: x}\nworkflow: [{step: start}]\n"
    )
    result = noetl("catalog", "register", str(not_playbook), *port_args(cli_stack))
    assert result.returncode == 1 and "HTTP 400" in result.stderr and "Foo" in result.stderr


def test_catalog_list(cli_stack: CliStack, registered: dict) -> None:
    out = ok(noetl("catalog", "list", *port_args(cli_stack)))
    lines = out.strip().splitlines()
    assert lines[0].split() == ["PATH", "VERSION", "KIND", "CATALOG_ID", "CREATED_AT"]
    assert any(line.split()[:4] == ["cli/hello", "1", "Playbook", registered["catalog_id"]] for line in lines)
    assert re.fullmatch(r"\((1 entry|\d+ entries)\)", lines[-1])

    body = json.loads(ok(noetl("catalog", "list", *port_args(cli_stack), "--json")))
    entries = body["entries"]
    ids = [int(e["catalog_id"]) for e in entries]
    assert ids == sorted(ids, reverse=True)
    assert {"path", "kind", "version", "content", "payload", "meta", "created_at"} <= set(entries[0])
    typed = json.loads(
        ok(noetl("catalog", "list", "--resource-type", "Nothing", *port_args(cli_stack), "--json"))
    )
    assert typed == {"entries": []}


# --------------------------------------------------------------------------- execute


def status(stack: CliStack, execution_id: str) -> dict:
    return json.loads(ok(noetl("execute", "status", execution_id, *port_args(stack), "--json")))


def test_execute_playbook_prints_id_and_response(cli_stack: CliStack, registered: dict) -> None:
    out = ok(
        noetl("execute", "playbook", "cli/hello", *port_args(cli_stack), "--payload", '{"message": "cli"}')
    )
    first_line, rest = out.split("\n", 1)
    body = json.loads(rest)
    assert first_line == f"execution_id: {body['execution_id']}"
    assert body["playbook_id"] == "cli/hello" and body["status"] == "running"
    assert body["catalog_id"] == registered["catalog_id"] and body["version"] == "1"
    assert body["timestamp"] and body["start_time"]

    got = status(cli_stack, body["execution_id"])
    assert got["workload"]["message"] == "cli"
    assert got["events"][0]["event_type"] == "execution_start"

    human = ok(noetl("execute", "status", body["execution_id"], *port_args(cli_stack)))
    assert human.splitlines()[0] == f"execution {body['execution_id']}: running"


def test_execute_json_is_the_response_alone(cli_stack: CliStack, registered: dict) -> None:
    result = noetl("execute", "playbook", "cli/hello", *port_args(cli_stack), "--json")
    body = json.loads(ok(result))  # the whole of stdout is one JSON document
    assert result.stdout.count("\n") == 1
    assert set(body) >= {"execution_id", "id", "catalog_id", "path", "playbook_id", "status", "timestamp"}
    assert status(cli_stack, body["execution_id"])["workload"] == {
        "message": "Hello World",
        "nested": {"a": 1, "b": 2},
        "list": [1, 2],
    }


def test_execute_merge_and_input_file(cli_stack: CliStack, registered: dict) -> None:
    params = '{"nested": {"a": 9}}'
    shallow = json.loads(
        ok(noetl("execute", "playbook", "cli/hello", *port_args(cli_stack), "--payload", params, "--json"))
    )
    deep = json.loads(
        ok(
            noetl(
                "execute",
                "playbook",
                "cli/hello",
                *port_args(cli_stack),
                "--payload",
                params,
                "--merge",
                "--json",
            )
        )
    )
    assert status(cli_stack, shallow["execution_id"])["workload"]["nested"] == {"a": 9}
    assert status(cli_stack, deep["execution_id"])["workload"]["nested"] == {"a": 9, "b": 2}

    input_file = write(cli_stack, "input.json", '{"message": "from file", "nested": {"b": 5}}')
    from_file = json.loads(
        ok(
            noetl(
                "execute",
                "playbook",
                "cli/hello",
                *port_args(cli_stack),
                "--input",
                str(input_file),
                "--merge",
                "--json",
            )
        )
    )
    assert status(cli_stack, from_file["execution_id"])["workload"] == {
        "message": "from file",
        "nested": {"a": 1, "b": 5},
        "list": [1, 2],
    }
    # --payload wins over --input.
    both = json.loads(
        ok(
            noetl(
                "execute",
                "playbook",
                "cli/hello",
                *port_args(cli_stack),
                "--input",
                str(input_file),
                "--payload",
                '{"message": "payload"}',
                "--json",
            )
        )
    )
    assert status(cli_stack, both["execution_id"])["workload"]["message"] == "payload"


def test_execute_errors(cli_stack: CliStack, registered: dict) -> None:
    unknown = noetl("execute", "playbook", "cli/none", *port_args(cli_stack), "--json")
    assert unknown.returncode == 1 and unknown.stdout == ""
    assert (
        "HTTP 404" in unknown.stderr
        and "catalog entry not found" in unknown.stderr
        and "cli/none" in unknown.stderr
    )

    not_object = noetl("execute", "playbook", "cli/hello", *port_args(cli_stack), "--payload", "[1, 2]")
    assert (
        not_object.returncode == 1 and "HTTP 422" in not_object.stderr and "parameters" in not_object.stderr
    )

    not_json = noetl("execute", "playbook", "cli/hello", *port_args(cli_stack), "--payload", "{oops")
    assert not_json.returncode == 2 and "--payload is not JSON" in not_json.stderr

    missing_input = noetl(
        "execute", "playbook", "cli/hello", *port_args(cli_stack), "--input", "/nonexistent.json"
    )
    assert missing_input.returncode == 2 and "cannot read" in missing_input.stderr

    gone = noetl("execute", "status", "987654321", *port_args(cli_stack))
    assert gone.returncode == 1 and "HTTP 404" in gone.stderr and "execution not found" in gone.stderr
    text_id = noetl("execute", "status", "abc/def", *port_args(cli_stack))
    assert text_id.returncode == 1 and "HTTP 404" in text_id.stderr

    nobody = noetl("execute", "status", "1", "--host", "127.0.0.1", "--port", str(free_port()))
    assert nobody.returncode == 1 and "cannot reach the API" in nobody.stderr


# --------------------------------------------------------------------------- events watch


# A run of cli/hello (no pool takes its runtime) and its cancel: its start, the `start` router,
# `greet` dispatched, then cancelled.
RUN_AND_CANCEL = ["execution_start", "step_started", "step_completed", "step_started", "execution_cancelled"]


def run_and_cancel(stack: CliStack) -> str:
    with stack.api() as client:
        eid = client.post("/api/executions/run", json={"path": "cli/hello"}).json()["execution_id"]
        assert client.post(f"/api/executions/{eid}/cancel", json={"reason": "cli"}).status_code == 200
    return eid


def watch(stack: CliStack, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    nats = [] if env else ["--nats-url", stack.nats_url]
    return noetl("events", "watch", *nats, *args, env=env)


def wait_stored(stack: CliStack, eid: str, count: int) -> None:
    """Until the execution's events are on the stream (the relay publishes right after commit)."""

    async def published() -> int:
        client = await nats.connect(stack.nats_url, connect_timeout=5)
        try:
            return len(await read_stream(client.jetstream(), subjects.execution_events(eid), idle=0.1))
        finally:
            await client.close()

    deadline = time.monotonic() + 20
    while asyncio.run(published()) < count:
        assert time.monotonic() < deadline, f"the events of execution {eid} never reached the stream"
        time.sleep(0.05)


def test_watch_replays_one_execution_in_order(cli_stack: CliStack, registered: dict) -> None:
    eid = run_and_cancel(cli_stack)
    other = run_and_cancel(cli_stack)
    wait_stored(cli_stack, other, 5)
    result = watch(
        cli_stack, "--execution", eid, "--from-seq", "1", "--count", "5", "--timeout", "20", "--json"
    )
    lines = ok(result).splitlines()
    events = [json.loads(line) for line in lines]
    assert [e["type"] for e in events] == RUN_AND_CANCEL
    assert all(e["entity"] == {"domain": "execution", "execution_id": eid} for e in events)
    assert set(events[0]) == {"id", "type", "time", "entity", "payload"}
    assert [int(e["id"]) for e in events] == sorted(int(e["id"]) for e in events)
    assert events[-1]["payload"]["context"] == {"reason": "cli"}
    assert f"following noetl.evt.execution.{eid}.*" in result.stderr

    # The human format: time, type, entity, payload on one line each.
    human = ok(watch(cli_stack, "--execution", eid, "--from-seq", "1", "--count", "5", "--timeout", "20"))
    first = human.splitlines()[0].split(" ", 3)
    iso(first[0])
    assert first[1] == "execution_start"
    assert first[2] == f"domain=execution,execution_id={eid}"
    assert json.loads(first[3])["status"] == "STARTED"

    # Stops by itself on --timeout even when fewer events came; the stream ends here.
    start = time.monotonic()
    few = ok(watch(cli_stack, "--execution", eid, "--from-seq", "1", "--timeout", "1.5", "--json"))
    assert len(few.splitlines()) == 5 and time.monotonic() - start < 15


def test_watch_by_type_since_id_and_since(cli_stack: CliStack, registered: dict) -> None:
    first = run_and_cancel(cli_stack)
    second = run_and_cancel(cli_stack)
    wait_stored(cli_stack, second, 5)

    def events(*args: str, env: dict[str, str] | None = None) -> list[dict]:
        return [json.loads(line) for line in ok(watch(cli_stack, *args, "--json", env=env)).splitlines()]

    # Everything stored; --timeout ends it (no --count).
    everything = events("--from-seq", "1", "--timeout", "1")
    cancels = [e for e in everything if e["type"] == "execution_cancelled"]
    assert [e["entity"]["execution_id"] for e in cancels][-2:] == [first, second]

    by_type = events("--type", "execution_cancelled", "--from-seq", "1", "--count", str(len(cancels)))
    assert by_type == cancels

    [first_cancel] = [e for e in cancels if e["entity"]["execution_id"] == first]
    after = events("--since-id", first_cancel["id"], "--count", "5", "--timeout", "20")
    assert after == [e for e in everything if int(e["id"]) > int(first_cancel["id"])]
    assert [(e["type"], e["entity"]["execution_id"]) for e in after] == [(t, second) for t in RUN_AND_CANCEL]

    # --since: a duration ago, or an ISO time; NOETL_NATS_URL instead of --nats-url.
    env = {"NOETL_NATS_URL": cli_stack.nats_url}
    assert events("--since", "1h", "--count", str(len(everything)), "--timeout", "20", env=env) == everything
    future = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    assert events("--since", future, "--timeout", "0.5", env=env) == []

    bad = watch(cli_stack, "--since", "yesterday-ish", "--timeout", "1")
    assert bad.returncode == 2 and "--since" in bad.stderr
    exclusive = watch(cli_stack, "--since", "1h", "--from-seq", "1")
    assert exclusive.returncode == 2


def test_watch_prints_live_events(cli_stack: CliStack, registered: dict) -> None:
    """With no replay option only new events, as they happen."""
    run_and_cancel(cli_stack)  # an old one, which must not show
    proc = subprocess.Popen(
        [
            *noetl_command(),
            "events",
            "watch",
            "--nats-url",
            cli_stack.nats_url,
            "--count",
            "6",
            "--timeout",
            "30",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        selector = selectors.DefaultSelector()
        selector.register(proc.stderr, selectors.EVENT_READ)
        assert selector.select(timeout=20), "the watcher never said it was following"
        assert "following noetl.evt.>" in proc.stderr.readline()
        out = ok(noetl("register", str(cli_stack.files / "hello.yaml"), *port_args(cli_stack), "--json"))
        version = json.loads(out)["version"]
        eid = run_and_cancel(cli_stack)
        stdout, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0
    lines = [line.split(" ", 3) for line in stdout.splitlines()]
    assert [(line[1], line[2]) for line in lines] == [
        ("catalog.registered", "domain=catalog,path=cli/hello"),
        *[(t, f"domain=execution,execution_id={eid}") for t in RUN_AND_CANCEL],
    ]
    assert json.loads(lines[0][3])["version"] == version


def test_watch_without_nats_fails_fast(cli_stack: CliStack) -> None:
    result = noetl(
        "events", "watch", "--nats-url", f"nats://127.0.0.1:{free_port()}", "--timeout", "5", timeout=30
    )
    assert result.returncode == 1 and "cannot connect to NATS" in result.stderr


def test_help_lists_the_client_commands() -> None:
    out = ok(noetl("--help"))
    for command in ("register", "catalog", "execute", "events"):
        assert command in out


# --------------------------------------------------------------------------- the daily work

TWO_STEPS = """\
apiVersion: noetl.io/v1
kind: Playbook
metadata: {name: two, path: cli/two}
runtime: cli
workload: {word: hi}
workflow:
  - step: start
    next: [{step: first}]
  - step: first
    type: python
    code: |
      def main(word):
          return {"status": "success", "data": {"word": word}}
    data: {word: "{{ workload.word }}"}
    next: [{step: second}]
  - step: second
    type: python
    code: |
      def main(word):
          return {"status": "success", "data": {"loud": word.upper()}}
    data: {word: "{{ first.data.word }}"}
    next: [{step: end}]
  - step: end
"""

FAILS = """\
apiVersion: noetl.io/v1
kind: Playbook
metadata: {name: fails, path: cli/fails}
runtime: cli
workflow:
  - step: start
    next: [{step: boom}]
  - step: boom
    type: python
    code: |
      def main():
          raise ValueError("no luck")
    next: [{step: end}]
  - step: end
"""

SLOW = """\
apiVersion: noetl.io/v1
kind: Playbook
metadata: {name: slow, path: cli/slow}
runtime: cli
workload: {seconds: 60}
workflow:
  - step: start
    next: [{step: nap}]
  - step: nap
    type: python
    timeout: 120
    code: |
      def main(seconds):
          import time
          time.sleep(seconds)
          return {"status": "success"}
    data: {seconds: "{{ workload.seconds }}"}
    next: [{step: end}]
  - step: end
"""


@pytest.fixture(scope="module")
def daily(cli_stack: CliStack) -> CliStack:
    """The playbooks of these tests, registered."""
    for name, text in (("two.yaml", TWO_STEPS), ("fails.yaml", FAILS), ("slow.yaml", SLOW)):
        ok(noetl("register", str(write(cli_stack, name, text)), *port_args(cli_stack)))
    return cli_stack


def no_traceback(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert "Traceback" not in result.stderr + result.stdout, result.stderr
    return result


def running(stack: CliStack, path: str) -> str:
    """Start `path` and return its id once its first step runs on a worker."""
    eid = json.loads(ok(noetl("execute", "playbook", path, *port_args(stack), "--json")))["execution_id"]
    deadline = time.monotonic() + 30
    while "action_started" not in {e["event_type"] for e in status(stack, eid)["events"]}:
        assert time.monotonic() < deadline, status(stack, eid)
        time.sleep(0.1)
    return eid


def test_execute_wait_prints_each_step_and_exits_0_when_it_completes(daily: CliStack) -> None:
    result = no_traceback(noetl("execute", "playbook", "cli/two", *port_args(daily), "--wait"))
    lines = ok(result).splitlines()
    assert re.fullmatch(r"execution (\d+): cli/two version 1", lines[0]), lines
    eid = lines[0].split()[1].rstrip(":")
    steps = [line.split() for line in lines[1:3]]
    assert [(s[0], s[1]) for s in steps] == [("first", "completed"), ("second", "completed")]
    assert all(re.fullmatch(r"\d+(\.\d+)?s", s[2]) for s in steps), steps
    assert re.fullmatch(rf"execution {eid} completed in \S+", lines[3]), lines
    assert json.loads(lines[4]) == {"status": "success", "data": {"loud": "HI"}}
    assert status(daily, eid)["status"] == "completed"


def test_execute_wait_json_is_the_final_execution_alone(daily: CliStack) -> None:
    result = noetl(
        "execute", "playbook", "cli/two", *port_args(daily), "--payload", '{"word": "yo"}', "--wait", "--json"
    )
    body = json.loads(ok(result))  # the whole of stdout is one document
    assert result.stdout.count("\n") == 1
    assert body["status"] == "completed" and body["result"]["data"] == {"loud": "YO"}
    assert "step_completed" in [e["event_type"] for e in body["events"]]


def test_execute_wait_exits_1_when_the_execution_fails(daily: CliStack) -> None:
    result = no_traceback(noetl("execute", "playbook", "cli/fails", *port_args(daily), "--wait"))
    assert result.returncode == 1, result
    assert "  boom  failed" in result.stdout
    assert re.search(r"noetl: execution \d+ failed: .*no luck", result.stderr), result.stderr


def test_execute_wait_exits_3_when_cancelled_and_4_when_it_runs_past_the_timeout(daily: CliStack) -> None:
    started = time.monotonic()
    late = no_traceback(
        noetl("execute", "playbook", "cli/slow", *port_args(daily), "--wait", "--timeout", "1.5")
    )
    assert late.returncode == 4 and "still running after 1.5s" in late.stderr, late
    assert time.monotonic() - started < 30
    eid = late.stdout.split()[1].rstrip(":")
    cancelled = ok(noetl("execution", "cancel", eid, "--reason", "enough", *port_args(daily)))
    assert cancelled.splitlines()[0] == f"execution {eid}: cancelled"

    waiter = subprocess.Popen(
        [*noetl_command(), "execute", "playbook", "cli/slow", *port_args(daily), "--wait"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        with daily.api() as client:
            deadline = time.monotonic() + 30
            while True:
                items = client.get("/api/executions", params={"path": "cli/slow", "status": "running"}).json()
                if items["items"]:
                    break
                assert time.monotonic() < deadline
                time.sleep(0.1)
        other = items["items"][0]["execution_id"]
        body = json.loads(ok(noetl("execution", "cancel", other, *port_args(daily), "--json")))
        assert body["status"] == "cancelled"
        out, err = waiter.communicate(timeout=30)
    finally:
        if waiter.poll() is None:
            waiter.kill()
            waiter.wait()
    assert waiter.returncode == 3, (out, err)
    assert f"noetl: execution {other} was cancelled" in err and "Traceback" not in err


def test_executions_list_filters_by_status_and_path(daily: CliStack) -> None:
    eid = json.loads(ok(noetl("execute", "playbook", "cli/two", *port_args(daily), "--wait", "--json")))[
        "execution_id"
    ]
    lines = ok(noetl("executions", "list", "--path", "cli/two", *port_args(daily))).splitlines()
    assert lines[0].split() == ["ID", "PATH", "VERSION", "STATUS", "STARTED", "DURATION"]
    rows = [line.split() for line in lines[1:-1]]
    assert rows and all(row[1] == "cli/two" and row[3] == "completed" for row in rows), rows
    assert rows[0][0] == eid  # newest first
    assert re.fullmatch(r"\(\d+ executions?\)", lines[-1])

    body = json.loads(ok(noetl("executions", "list", "--status", "failed", *port_args(daily), "--json")))
    assert body["items"] and {i["status"] for i in body["items"]} == {"failed"}
    assert {i["path"] for i in body["items"]} == {"cli/fails"}
    limited = json.loads(ok(noetl("executions", "list", "--limit", "1", *port_args(daily), "--json")))
    assert len(limited["items"]) == 1


def test_execution_show_lists_its_steps_with_status_and_duration(daily: CliStack) -> None:
    eid = json.loads(ok(noetl("execute", "playbook", "cli/two", *port_args(daily), "--wait", "--json")))[
        "execution_id"
    ]
    lines = ok(noetl("execution", "show", eid, *port_args(daily))).splitlines()
    assert lines[0] == f"execution {eid}: completed (cli/two version 1)"
    assert lines[1].startswith("started ")
    header = lines.index(next(line for line in lines if line.startswith("STEP")))
    assert lines[header].split() == ["STEP", "STATUS", "ATTEMPTS", "DURATION", "WORKER"]
    steps = [line.split() for line in lines[header + 1 : header + 3]]
    assert [s[:3] for s in steps] == [["first", "completed", "1"], ["second", "completed", "1"]]
    worker_pids = {int(s[4].rsplit(":", 1)[1]) for s in steps}
    assert worker_pids <= set(daily.worker_pids)
    label, result = lines[header + 3].split(" ", 1)
    assert label == "result:" and json.loads(result) == {"status": "success", "data": {"loud": "HI"}}

    body = json.loads(ok(noetl("execution", "show", eid, *port_args(daily), "--json")))
    assert body["execution_id"] == eid and body["status"] == "completed"
    missing = no_traceback(noetl("execution", "show", "987654321", *port_args(daily)))
    assert missing.returncode == 1 and "HTTP 404" in missing.stderr


def test_pools_list_shows_each_worker_with_its_liveness(daily: CliStack) -> None:
    body = json.loads(ok(noetl("pools", "list", "--runtime", CLI_RUNTIME, *port_args(daily), "--json")))
    names = sorted(item["name"] for item in body["items"])
    # Started without --name, each worker took a name of its own: host and pid.
    assert names == sorted(f"{socket.gethostname()}-{pid}" for pid in daily.worker_pids)
    lines = ok(noetl("pools", "list", "--runtime", CLI_RUNTIME, *port_args(daily))).splitlines()
    assert lines[0].split() == ["NAME", "RUNTIME", "STATUS", "CAPACITY", "LAST", "BEAT", "HOST", "PID"]
    for line in lines[1:-1]:
        name, runtime, state, capacity, age, ago, host, pid = line.split()
        assert (runtime, state, capacity, ago, host) == ("cli", "ready", "2", "ago", socket.gethostname())
        assert name == f"{host}-{pid}" and float(age.rstrip("s")) < 30
    assert lines[-1] == f"({CLI_WORKERS} pools)"
    none = json.loads(
        ok(
            noetl(
                "pools", "list", "--status", "offline", "--runtime", CLI_RUNTIME, *port_args(daily), "--json"
            )
        )
    )
    assert none["items"] == []


def test_version_and_help_on_every_option() -> None:
    from importlib.metadata import version

    assert ok(noetl("--version")).strip() == f"noetl {version('noetl-control-plane')}"

    import typer.main

    from noetl.cli import app

    missing: list[str] = []

    def visit(command, path: str) -> None:
        if not (command.help or "").strip():
            missing.append(path)
        for param in command.params:
            if not (getattr(param, "help", None) or "").strip() and param.name != "help":
                missing.append(f"{path} {param.name}")
        for name, sub in getattr(command, "commands", {}).items():
            visit(sub, f"{path} {name}")

    root = typer.main.get_command(app)
    visit(root, "noetl")
    assert missing == []
    assert {"executions", "execution", "pools", "execute", "events", "dev", "worker"} <= set(root.commands)


def test_a_bad_argument_is_a_usage_error_without_a_traceback(cli_stack: CliStack) -> None:
    for args in (
        ["executions", "list", "--limit", "0"],
        ["execute", "playbook"],
        ["consumer", "nobody"],
        ["worker", "--capacity", "none"],
        ["pools", "list", "--bogus"],
    ):
        result = no_traceback(noetl(*args, *port_args(cli_stack)))
        assert result.returncode == 2 and "Usage:" in result.stderr, (args, result.stderr)
    unknown = noetl("consumer", "nobody", "runtime")
    message = " ".join(re.sub(r"[│╭╮╰╯─]", " ", unknown.stderr).split())  # out of rich's box
    assert "unknown nobody; choose from " + ", ".join(CONSUMER_NAMES) in message
