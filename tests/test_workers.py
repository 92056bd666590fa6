"""Issue 4: workers run executions. Real NATS, real PostgreSQL, real `noetl worker` processes.

One stack and one python worker pool (`w-main`) serve the whole module; the tests that kill or stop
workers use playbooks of their own runtime, served only by workers they start, so the main pool
lives through the module and keeps proving that a worker goes on serving after a failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import threading
from collections.abc import Iterator
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import yaml
from conftest import stream_events

from noetl.bus import subjects
from noetl.bus.envelope import Command
from noetl.contracts.jobs import StepReport

# Before the import: its asserts are rewritten like a conftest's (and pytest does not warn).
pytest.register_assert_rewrite("workers_support")
from workers_support import (  # noqa: E402
    ACTION_EVENTS,
    HELLO_PATH,
    LEASE_SECONDS,
    WorkerStack,
    action_events,
    events_of,
    playbook,
    process_gone,
    python_step,
    to_end,
    types_of,
)

pytest_plugins = ["workers_support"]

ECHO = "def main(**data):\n    data.pop('context')\n    return {'status': 'success', 'data': data}\n"

SLEEP = """
def main(pid_file, seconds):
    import os, time
    with open(pid_file, "w") as f:
        f.write(str(os.getpid()))
    time.sleep(seconds)
    return {"status": "success", "data": {"slept": seconds}}
"""

# Blocks until the test creates `release` (bounded): a step that is running for as long as the test
# needs, whatever the machine's speed. Each process that runs it leaves its pid in `pid_dir`.
GATE = """
def main(pid_dir, release, tag):
    import os, pathlib, time
    pathlib.Path(pid_dir, str(os.getpid())).touch()
    deadline = time.monotonic() + 60
    while not os.path.exists(release):
        if time.monotonic() > deadline:
            return {"status": "error", "error": "never released"}
        time.sleep(0.02)
    return {"status": "success", "data": {"tag": tag, "pid": os.getpid()}}
"""

# Two branches that each wait for the other to have started: they can only both succeed when they
# run at the same time.
BARRIER = """
def main(dir, me, other):
    import os, pathlib, time
    pathlib.Path(dir, me).touch()
    deadline = time.monotonic() + 20
    while not os.path.exists(os.path.join(dir, other)):
        if time.monotonic() > deadline:
            return {"status": "error", "error": me + " ran alone: " + other + " never started"}
        time.sleep(0.02)
    return {"status": "success", "data": {"branch": me}}
"""

# Fails until its `succeed_on`-th run (the count is kept in a file, across attempts).
FLAKY = """
def main(counter, succeed_on):
    import os
    n = int(open(counter).read()) + 1 if os.path.exists(counter) else 1
    with open(counter, "w") as f:
        f.write(str(n))
    if n < succeed_on:
        raise RuntimeError(f"attempt {n} fails")
    return {"status": "success", "data": {"attempts": n}}
"""


def pids_in(directory: Any) -> list[int]:
    return sorted(int(p.name) for p in directory.iterdir())


def assert_step_events_carry_who(detail: dict[str, Any]) -> None:
    for event in events_of(detail):
        if event["type"] in ACTION_EVENTS:
            assert event.get("step"), event
            assert isinstance(event.get("attempt"), int) and event["attempt"] >= 1, event
            assert event.get("worker"), event


# --------------------------------------------------------------------------- the happy path


async def test_hello_world_completes_with_its_result(wx: WorkerStack) -> None:
    assert wx.main is not None
    execution_id = await wx.run(HELLO_PATH)
    detail = await wx.finished(execution_id)

    assert detail["status"] == "completed", detail
    assert detail["result"] == {"status": "success", "data": {"message": "Hello World"}}
    assert detail["error"] is None
    assert detail["progress"] == 100
    assert detail["end_time"] is not None
    assert [(e["type"], e["step"]) for e in events_of(detail)] == [
        ("execution_start", None),
        ("step_started", "start"),
        ("step_completed", "start"),
        ("step_started", "greet"),
        ("action_started", "greet"),
        ("action_completed", "greet"),
        ("step_completed", "greet"),
        ("step_started", "end"),
        ("step_completed", "end"),
        ("execution_complete", None),
    ]
    for event in events_of(detail, step="greet"):
        if event["type"].startswith("action_"):
            assert event["attempt"] == 1, event
            assert wx.main.ran(event["worker"]), event
    # Each event's status is that of what it is about (NoETL's spelling): the step's, then the
    # execution's; node_type is the step's type, `playbook` for the execution's own events.
    assert [(e["status"], e["node_type"]) for e in detail["events"]] == [
        ("STARTED", "playbook"),
        ("RUNNING", "start"),
        ("COMPLETED", "start"),
        ("RUNNING", "python"),
        ("RUNNING", "python"),
        ("COMPLETED", "python"),
        ("COMPLETED", "python"),
        ("RUNNING", "end"),
        ("COMPLETED", "end"),
        ("COMPLETED", "playbook"),
    ]
    fields = {
        "event_id",
        "event_type",
        "node_id",
        "node_name",
        "node_type",
        "status",
        "duration",
        "timestamp",
        "created_at",
        "context",
        "result",
        "error",
        "current_index",
        "current_item",
        "worker_id",
        "parent_event_id",
    }
    for event in detail["events"]:
        assert fields <= event.keys(), event
        assert isinstance(event["event_id"], str)
    by_id = {e["event_id"]: e for e in detail["events"]}
    started, action_started, action_completed, completed = events_of(detail, step="greet")
    assert started["node_id"] == f"{execution_id}:greet"
    # Each event names its cause: the step's events its start, the start the step before it.
    assert by_id[started["parent_event_id"]]["event_type"] == "step_completed"
    for event in (action_started, action_completed, completed):
        assert event["parent_event_id"] == started["event_id"], event
    # What the step ran with, as its worker rendered it.
    assert action_completed["context"] == {"input": {"message": "Hello World"}}
    assert completed["result"] == {"status": "success", "data": {"message": "Hello World"}}
    assert completed["duration"] >= action_completed["duration"] >= 0
    # Times are when things happened, each event its own.
    times = [
        datetime.fromisoformat(e["timestamp"]) for e in (started, action_started, action_completed, completed)
    ]
    assert times == sorted(times) and len(set(times)) > 1, times
    (complete,) = events_of(detail, "execution_complete")
    assert complete["result"] == detail["result"]
    assert complete["node_name"] == "hello_world" and complete["node_id"] == execution_id

    # A subscriber of the events stream sees the same story, in order.
    async def published() -> list[str] | None:
        events = await stream_events(wx.js, subjects.execution_events(execution_id))
        types = [e["type"] for e in events]
        return types if types and types[-1] == "execution_complete" else None

    assert await wx.until(published, what="the events on the stream") == types_of(detail)


async def test_templates_see_workload_execution_id_and_finished_steps(wx: WorkerStack) -> None:
    path = "tests/workers/templates"
    await wx.register(
        playbook(
            path,
            [
                {"step": "start", "next": to_end("greet")},
                python_step(
                    "greet",
                    'def main(message):\n    return {"status": "success", "data": {"message": message}}\n',
                    data={"message": "{{ workload.message }}"},
                    next=to_end("use"),
                ),
                python_step(
                    "use",
                    ECHO,
                    data={
                        "long": "{{ greet.result.data.message }}",
                        "short": "{{ greet.data.message }}",
                        "status": "{{ greet.status }}",
                        "count": "{{ workload.count }}",
                        "flag": "{{ workload.flag }}",
                        "nested": "{{ workload.nested }}",
                        "text": "{{ greet.data.message }} x{{ workload.count }}",
                        "execution": "{{ execution_id }}",
                        "plain": "no template here",
                    },
                    next=to_end(),
                ),
                {"step": "end"},
            ],
            workload={"message": "Hello World", "count": 1, "flag": True, "nested": {"a": [1, 2]}},
        )
    )
    execution_id = await wx.run(path, count=3)
    detail = await wx.finished(execution_id)

    assert detail["status"] == "completed", detail
    assert detail["result"] == {
        "status": "success",
        "data": {
            "long": "Hello World",
            "short": "Hello World",
            "status": "success",
            "count": 3,  # a single expression keeps its native type; parameters override the workload
            "flag": True,
            "nested": {"a": [1, 2]},
            "text": "Hello World x3",
            "execution": execution_id,
            "plain": "no template here",
        },
    }
    assert [e["step"] for e in action_events(detail, "step_completed")] == ["greet", "use"]


async def test_when_takes_true_branches_and_skips_false_ones(wx: WorkerStack) -> None:
    path = "tests/workers/when"
    true_when = {
        "t_native_true": "{{ workload.yes }}",
        "t_word": "{{ workload.word }}",
        "t_list": "{{ workload.items }}",
        "t_number": "{{ workload.two }}",
        "t_expr": "{{ probe.data.n > 1 }}",
        "t_yaml_true": True,
    }
    false_when = {
        "f_native_false": "{{ workload.off }}",
        "f_zero": "{{ workload.zero }}",
        "f_string_zero": "{{ workload.szero }}",
        "f_null": "{{ workload.nothing }}",
        "f_empty": "{{ workload.empty }}",
        "f_string_false": "{{ workload.sfalse }}",
        "f_string_none": "{{ workload.snone }}",
        "f_empty_list": "{{ workload.no_items }}",
        "f_literal_false": "false",
        "f_literal_zero": "0",
        "f_yaml_false": False,
        "f_expr": "{{ probe.data.n > 5 }}",
    }
    router_next = [{"step": name, "when": when} for name, when in {**true_when, **false_when}.items()]
    router_next.append({"step": "fallback"})  # no `when`: taken only when no `when` is true
    targets = [*true_when, *false_when, "fallback"]
    await wx.register(
        playbook(
            path,
            [
                {"step": "start", "next": to_end("probe")},
                python_step(
                    "probe",
                    'def main():\n    return {"status": "success", "data": {"n": 2}}\n',
                    next=to_end("router"),
                ),
                {"step": "router", "next": router_next},
                *[python_step(name, ECHO, data={"me": name}) for name in targets],
            ],
            workload={
                "yes": True,
                "word": "yes",
                "items": [1],
                "two": 2,
                "off": False,
                "zero": 0,
                "szero": "0",
                "nothing": None,
                "empty": "",
                "sfalse": "False",
                "snone": " None ",
                "no_items": [],
            },
        )
    )
    detail = await wx.finished(await wx.run(path))

    assert detail["status"] == "completed", detail
    assert detail["progress"] == 100
    started = sorted(e["step"] for e in action_events(detail, "step_started"))
    assert started == sorted(["probe", *true_when])
    completed = sorted(e["step"] for e in action_events(detail, "step_completed"))
    assert completed == started
    # The result is the last finished step's: one of the branches.
    assert detail["result"]["data"]["me"] in true_when
    assert_step_events_carry_who(detail)


async def test_fan_out_runs_branches_in_parallel(wx: WorkerStack) -> None:
    path = "tests/workers/fanout"
    meeting = wx.scratch("barrier")
    await wx.register(
        playbook(
            path,
            [
                {
                    "step": "start",
                    "next": [
                        {"step": "skipped", "when": "{{ workload.off }}"},
                        {"step": "left"},
                        {"step": "right"},
                    ],
                },
                python_step("skipped", ECHO, next=to_end()),
                python_step(
                    "left",
                    BARRIER,
                    data={"dir": str(meeting), "me": "left", "other": "right"},
                    next=to_end("after_left"),
                ),
                python_step(
                    "right",
                    BARRIER,
                    data={"dir": str(meeting), "me": "right", "other": "left"},
                    next=to_end(),
                ),
                python_step("after_left", ECHO, data={"saw": "{{ left.data.branch }}"}, next=to_end()),
                {"step": "end"},
            ],
            workload={"off": False},
        )
    )
    detail = await wx.finished(await wx.run(path))

    assert detail["status"] == "completed", detail
    completed = {e["step"]: e for e in action_events(detail, "step_completed")}
    assert set(completed) == {"left", "right", "after_left"}
    assert completed["left"]["result"]["data"] == {"branch": "left"}
    assert completed["right"]["result"]["data"] == {"branch": "right"}
    assert completed["after_left"]["result"]["data"] == {"saw": "left"}
    assert "skipped" not in {e["step"] for e in events_of(detail, "step_started")}
    assert sorted(p.name for p in meeting.iterdir()) == ["left", "right"]


async def test_when_that_cannot_render_fails_the_execution(wx: WorkerStack) -> None:
    path = "tests/workers/bad-when"
    await wx.register(
        playbook(
            path,
            [
                {"step": "start", "next": to_end("greet")},
                python_step(
                    "greet",
                    ECHO,
                    next=[{"step": "never", "when": "{{ workload.no_such_key.deeper }}"}, {"step": "end"}],
                ),
                python_step("never", ECHO, next=to_end()),
                {"step": "end"},
            ],
        )
    )
    detail = await wx.finished(await wx.run(path))

    assert detail["status"] == "failed", detail
    assert "when" in detail["error"] and "no_such_key" in detail["error"], detail["error"]
    assert types_of(detail)[-1] == "execution_failed"
    assert "never" not in {e["step"] for e in events_of(detail, "step_started")}


# --------------------------------------------------------------------------- http steps


class _Handler(BaseHTTPRequestHandler):
    def _answer(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _serve(self) -> None:
        url = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        if url.path == "/echo":
            echo = {
                "method": self.command,
                "path": url.path,
                "query": parse_qs(url.query),
                "token": self.headers.get("X-Token"),
                "json": json.loads(raw) if raw else None,
            }
            self._answer(200, json.dumps(echo).encode(), "application/json")
        elif url.path == "/broken":
            self._answer(503, b"down for maintenance", "text/plain")
        else:
            self._answer(404, b"no such page", "text/plain")

    do_GET = do_POST = do_PUT = _serve

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextlib.contextmanager
def http_server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


async def test_http_steps_against_a_local_server(wx: WorkerStack) -> None:
    ok_path, failing_path = "tests/workers/http-ok", "tests/workers/http-fail"
    await wx.register(
        playbook(
            ok_path,
            [
                {"step": "start", "next": to_end("call")},
                {
                    "step": "call",
                    "type": "http",
                    "method": "POST",
                    "url": "{{ workload.base }}/echo",
                    "params": {"q": "{{ workload.q }}"},
                    "headers": {"X-Token": "{{ workload.token }}"},
                    "json": {"hello": "{{ workload.message }}", "n": "{{ workload.n }}"},
                    "timeout": 10,
                    "next": to_end("soft"),
                },
                {
                    "step": "soft",
                    "type": "http",
                    "url": "{{ workload.base }}/broken",
                    "raise_for_status": False,
                    "next": to_end("use"),
                },
                python_step(
                    "use",
                    ECHO,
                    data={
                        "echo": "{{ call.data }}",
                        "status": "{{ call.status_code }}",
                        "soft_status": "{{ soft.status_code }}",
                        "soft_body": "{{ soft.data }}",
                    },
                    next=to_end(),
                ),
                {"step": "end"},
            ],
            workload={"message": "Hello World", "n": 2, "q": "1", "token": "secret"},
        )
    )
    await wx.register(
        playbook(
            failing_path,
            [
                {"step": "start", "next": to_end("call")},
                {
                    "step": "call",
                    "type": "http",
                    "url": "{{ workload.base }}/broken",
                    "next": to_end("after"),
                },
                python_step("after", ECHO, next=to_end()),
                {"step": "end"},
            ],
        )
    )
    with http_server() as base:
        ok = await wx.finished(await wx.run(ok_path, base=base))
        failing = await wx.finished(await wx.run(failing_path, base=base))

    assert ok["status"] == "completed", ok
    assert ok["result"]["data"] == {
        "echo": {
            "method": "POST",
            "path": "/echo",
            "query": {"q": ["1"]},
            "token": "secret",
            "json": {"hello": "Hello World", "n": 2},
        },
        "status": 200,
        "soft_status": 503,
        "soft_body": "down for maintenance",
    }
    (call,) = events_of(ok, "step_completed", "call")
    # NoETL's http result: the response's status, headers, url and time, and its body as `data`.
    assert call["result"]["headers"]["content-type"] == "application/json"
    assert call["result"]["status_code"] == 200
    assert call["result"]["url"] == f"{base}/echo?q=1"
    assert call["result"]["elapsed"] >= 0

    assert failing["status"] == "failed", failing
    assert "503" in failing["error"] and "call" in failing["error"], failing["error"]
    assert types_of(failing, "call") == ["step_started", "action_started", "action_error", "step_failed"]
    assert "after" not in {e["step"] for e in events_of(failing, "step_started")}


# --------------------------------------------------------------------------- failures


FAILURES = {
    "exception": (
        {"code": "def main():\n    raise ValueError('boom from the step')\n"},
        ["ValueError: boom from the step"],
    ),
    "status-error": (
        {"code": "def main():\n    return {'status': 'error', 'error': 'the data was bad'}\n"},
        ["the data was bad"],
    ),
    "missing-input": (
        {"code": "def main(absent):\n    return absent\n"},
        ["missing 1 required positional argument", "absent"],
    ),
    "template": (
        {"code": ECHO, "data": {"value": "{{ workload.missing_key }}"}},
        ["cannot render", "missing_key"],
    ),
}


@pytest.mark.parametrize("case", list(FAILURES))
async def test_a_failing_step_fails_the_execution_and_the_worker_keeps_serving(
    wx: WorkerStack, case: str
) -> None:
    spec, expected = FAILURES[case]
    path = f"tests/workers/fail-{case}"
    await wx.register(
        playbook(
            path,
            [
                {"step": "start", "next": to_end("bad")},
                {"step": "bad", "type": "python", **spec, "next": to_end("after")},
                python_step("after", ECHO, next=to_end()),
                {"step": "end"},
            ],
        )
    )
    detail = await wx.finished(await wx.run(path))

    assert detail["status"] == "failed", detail
    assert detail["result"] is None
    assert "bad" in detail["error"], detail["error"]
    for text in expected:
        assert text in detail["error"], detail["error"]
    assert types_of(detail, "bad") == ["step_started", "action_started", "action_error", "step_failed"]
    assert types_of(detail)[-1] == "execution_failed"
    assert "after" not in {e["step"] for e in events_of(detail, "step_started")}
    (error,) = events_of(detail, "action_error")
    assert error["step"] == "bad" and error["attempt"] == 1 and wx.main.ran(error["worker"]), error
    (failed,) = events_of(detail, "step_failed")
    assert failed["step"] == "bad" and failed["status"] == "FAILED", failed
    assert all(text in failed["error"] for text in expected), failed
    assert_step_events_carry_who(detail)

    await wx.hello_on(wx.main)


async def test_retries_count_attempts_and_succeed_on_a_later_one(wx: WorkerStack) -> None:
    path = "tests/workers/retry-ok"
    counter = wx.scratch("retry") / "count"
    await wx.register(
        playbook(
            path,
            [
                {"step": "start", "next": to_end("flaky")},
                python_step(
                    "flaky",
                    FLAKY,
                    data={"counter": str(counter), "succeed_on": 3},
                    retry={"max_attempts": 4, "delay": 0.2},
                    next=to_end(),
                ),
                {"step": "end"},
            ],
        )
    )
    detail = await wx.finished(await wx.run(path))

    assert detail["status"] == "completed", detail
    assert detail["result"] == {"status": "success", "data": {"attempts": 3}}
    assert counter.read_text() == "3"
    assert [(e["type"], e["attempt"]) for e in events_of(detail, step="flaky")] == [
        ("step_started", None),
        ("action_started", 1),
        ("action_error", 1),
        ("action_started", 2),
        ("action_error", 2),
        ("action_started", 3),
        ("action_completed", 3),
        ("step_completed", 3),
    ]
    errors = [e["error"] for e in events_of(detail, "action_error")]
    assert errors == ["RuntimeError: attempt 1 fails", "RuntimeError: attempt 2 fails"]


async def test_retries_exhausted_fail_the_execution(wx: WorkerStack) -> None:
    path = "tests/workers/retry-fail"
    counter = wx.scratch("retry") / "count"
    await wx.register(
        playbook(
            path,
            [
                {"step": "start", "next": to_end("flaky")},
                python_step(
                    "flaky",
                    FLAKY,
                    data={"counter": str(counter), "succeed_on": 99},
                    retry={"max_attempts": 2, "delay": 0.1},
                    next=to_end(),
                ),
                {"step": "end"},
            ],
        )
    )
    detail = await wx.finished(await wx.run(path))

    assert detail["status"] == "failed", detail
    assert "RuntimeError: attempt 2 fails" in detail["error"], detail["error"]
    assert counter.read_text() == "2"  # exactly max_attempts runs
    assert [(e["type"], e["attempt"]) for e in events_of(detail, step="flaky")] == [
        ("step_started", None),
        ("action_started", 1),
        ("action_error", 1),
        ("action_started", 2),
        ("action_error", 2),
        ("step_failed", 2),
    ]


async def test_a_step_that_times_out_fails_and_its_process_is_killed(wx: WorkerStack) -> None:
    path = "tests/workers/timeout"
    pid_file = wx.scratch("timeout") / "pid"
    await wx.register(
        playbook(
            path,
            [
                {"step": "start", "next": to_end("slow")},
                python_step(
                    "slow", SLEEP, data={"pid_file": str(pid_file), "seconds": 60}, timeout=1, next=to_end()
                ),
                {"step": "end"},
            ],
        )
    )
    detail = await wx.finished(await wx.run(path))

    assert detail["status"] == "failed", detail
    assert "timed out after 1s" in detail["error"] and "slow" in detail["error"], detail["error"]
    pid = int(pid_file.read_text())
    await wx.until(lambda: _async(process_gone(pid)), timeout=10, what=f"the step's process {pid} to end")
    await wx.hello_on(wx.main)


async def _async(value: Any) -> Any:
    return value


# --------------------------------------------------------------------------- cancel


async def test_cancel_stops_the_running_step(wx: WorkerStack) -> None:
    path = "tests/workers/cancel"
    pid_file = wx.scratch("cancel") / "pid"
    await wx.register(
        playbook(
            path,
            [
                {"step": "start", "next": to_end("nap")},
                python_step(
                    "nap",
                    SLEEP,
                    data={"pid_file": str(pid_file), "seconds": 60},
                    timeout=120,
                    next=to_end("after"),
                ),
                python_step("after", ECHO, next=to_end()),
                {"step": "end"},
            ],
        )
    )
    execution_id = await wx.run(path)
    await wx.event(execution_id, "action_started", "nap")
    await wx.until(lambda: _async(pid_file.exists() and pid_file.read_text()), what="the step to start")
    pid = int(pid_file.read_text())
    assert not process_gone(pid)

    response = await wx.client.post(f"/api/executions/{execution_id}/cancel", json={"reason": "test"})
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "cancelled"

    await wx.until(
        lambda: _async(process_gone(pid)), timeout=15, what=f"the step's process {pid} to be killed"
    )
    await wx.hello_on(wx.main)  # the worker takes the next job

    detail = await wx.detail(execution_id)
    assert detail["status"] == "cancelled", detail
    types = types_of(detail)
    assert types.count("execution_cancelled") == 1, types
    assert not {"execution_complete", "execution_failed"} & set(types)
    assert types_of(detail, "nap") == ["step_started", "action_started"]
    assert "after" not in {e["step"] for e in events_of(detail, "step_started")}
    job = await wx.db.one(
        "SELECT status FROM jobs WHERE execution_id = %s AND step = 'nap'", int(execution_id)
    )
    assert job == {"status": "abandoned"}


# --------------------------------------------------------------------------- bad input


async def test_an_undecodable_job_goes_to_the_dead_letters(wx: WorkerStack) -> None:
    subject = subjects.job("python")
    garbage = b"\xff\xfe this is not a job {"
    not_a_job = json.dumps(
        {
            "id": "1",
            "type": "job.dispatched",
            "time": "2024-01-01T00:00:00Z",
            "entity": {},
            "payload": {"nothing": "useful"},
        }
    ).encode()
    await wx.js.publish(subject, garbage, headers={"Nats-Msg-Id": "garbage-1"}, timeout=5)
    await wx.js.publish(subject, not_a_job, headers={"Nats-Msg-Id": "garbage-2"}, timeout=5)

    async def letters() -> list[dict[str, Any]] | None:
        rows = await wx.db.all("SELECT * FROM dead_letters WHERE subject = %s ORDER BY id", subject)
        return rows if len(rows) >= 2 else None

    rows = await wx.until(letters, what="two dead letters")
    assert sorted(bytes(r["data"]) for r in rows) == sorted([garbage, not_a_job])
    for row in rows:
        assert "undecodable" in row["reason"], row
        assert row["consumer"] == "jobs-python"

    await wx.hello_on(wx.main)  # the worker keeps serving
    # Each bad message was taken out of the queue once, not redelivered.
    assert await wx.db.value("SELECT count(*) FROM dead_letters WHERE subject = %s", subject) == 2

    async def announced() -> list[dict[str, Any]] | None:
        events = await stream_events(wx.js, subjects.DEAD_LETTER_EVENT)
        found = [e for e in events if e["payload"].get("subject") == subject]
        return found if len(found) >= 2 else None

    await wx.until(announced, what="dead-letter events for the jobs")


def _cycle_without_exit() -> dict[str, Any]:
    return playbook(
        "tests/workers/refused-cycle",
        [
            {"step": "start", "next": to_end("ping")},
            python_step("ping", ECHO, next=to_end("pong")),
            python_step("pong", ECHO, next=to_end("ping")),
            {"step": "end"},
        ],
    )


REFUSED = {
    "missing-step": (
        playbook(
            "tests/workers/refused-missing",
            [{"step": "start", "next": to_end("ghost")}, {"step": "end"}],
        ),
        ["missing", "ghost"],
    ),
    "no-main": (
        playbook(
            "tests/workers/refused-nomain", [python_step("begin", "x = 1\n", next=to_end()), {"step": "end"}]
        ),
        ["begin", "does not define main"],
    ),
    "python-syntax": (
        playbook(
            "tests/workers/refused-syntax",
            [python_step("begin", "def main(:\n", next=to_end()), {"step": "end"}],
        ),
        ["begin", "does not compile", "line 1"],
    ),
    "template-syntax": (
        playbook(
            "tests/workers/refused-template",
            [python_step("begin", ECHO, data={"x": "{{ workload.x }"}, next=to_end()), {"step": "end"}],
        ),
        ["begin", "does not parse"],
    ),
    "unknown-type": (
        playbook(
            "tests/workers/refused-type",
            [{"step": "begin", "type": "cobol", "next": to_end()}, {"step": "end"}],
        ),
        ["begin", "unknown type 'cobol'"],
    ),
    "retry-not-a-number": (
        playbook(
            "tests/workers/refused-retry",
            [python_step("begin", ECHO, retry={"max_attempts": "x"}, next=to_end()), {"step": "end"}],
        ),
        ["begin", "retry.max_attempts"],
    ),
    "cycle-without-exit": (_cycle_without_exit(), ["cycle", "ping", "pong"]),
}


@pytest.mark.parametrize("case", list(REFUSED))
async def test_registration_refuses_a_broken_workflow(wx: WorkerStack, case: str) -> None:
    document, expected = REFUSED[case]
    response = await wx.client.post("/api/catalog/register", json={"content": yaml.safe_dump(document)})
    assert 400 <= response.status_code < 500, response.text
    detail = response.json()["detail"]
    assert isinstance(detail, str), detail
    for text in expected:
        assert text in detail, detail
    path = document["metadata"]["path"]
    assert (await wx.client.get(f"/api/catalog/playbooks/{path}")).status_code == 404


async def test_registration_accepts_a_cycle_with_an_exit(wx: WorkerStack) -> None:
    path = "tests/workers/loop"
    counter = wx.scratch("loop") / "count"
    count_code = (
        "def main(counter):\n"
        "    import os\n"
        "    n = int(open(counter).read()) + 1 if os.path.exists(counter) else 1\n"
        "    open(counter, 'w').write(str(n))\n"
        "    return {'status': 'success', 'data': {'n': n}}\n"
    )
    await wx.register(
        playbook(
            path,
            [
                {"step": "start", "next": to_end("tick")},
                python_step(
                    "tick",
                    count_code,
                    data={"counter": str(counter)},
                    next=[{"step": "end", "when": "{{ tick.data.n >= 3 }}"}, {"step": "tick"}],
                ),
                {"step": "end"},
            ],
        )
    )
    detail = await wx.finished(await wx.run(path))
    assert detail["status"] == "completed", detail
    assert detail["result"] == {"status": "success", "data": {"n": 3}}
    assert len(events_of(detail, "step_completed", "tick")) == 3


# --------------------------------------------------------------------------- workers that die or stop


async def test_a_worker_killed_mid_step_and_the_execution_completes_once_on_another(wx: WorkerStack) -> None:
    runtime = "recovery"
    path = "tests/workers/recovery"
    scratch = wx.scratch("recovery")
    pid_dir, release = scratch / "pids", scratch / "release"
    pid_dir.mkdir()
    await wx.register(
        playbook(
            path,
            [
                {"step": "start", "next": to_end("work")},
                python_step(
                    "work",
                    GATE,
                    data={"pid_dir": str(pid_dir), "release": str(release), "tag": "real"},
                    next=to_end(),
                ),
                {"step": "end"},
            ],
            runtime=runtime,
        )
    )
    await wx.workers.started(("r1", runtime), ("r2", runtime))
    execution_id = await wx.run(path)

    (first,) = await wx.event(execution_id, "action_started", "work")
    victim = wx.workers.by_worker_field(first["worker"])
    await wx.until(lambda: _async(pids_in(pid_dir)), what="the first attempt to start")
    victim.signal(signal.SIGKILL)
    assert await victim.exited(10) == -signal.SIGKILL
    # Its step's process dies with it, and does not run on next to the retried attempt.
    (orphan,) = pids_in(pid_dir)
    await wx.until(
        lambda: _async(process_gone(orphan)), timeout=10, what=f"the step's process {orphan} to die"
    )

    # The lease runs out and the job goes to the other worker.
    second = (await wx.event(execution_id, "action_started", "work", count=2, timeout=30))[1]
    survivor = wx.workers.by_worker_field(second["worker"])
    assert survivor is not victim and survivor.runtime == runtime

    # A late report of the dead attempt (its first delivery) says it completed: it changes nothing.
    job = await wx.db.one(
        "SELECT job_id, delivery FROM jobs WHERE execution_id = %s AND step = 'work'", int(execution_id)
    )
    assert job is not None and job["delivery"] >= 2, job
    late = StepReport(
        job_id=str(job["job_id"]),
        execution_id=execution_id,
        step="work",
        kind="completed",
        attempt=1,
        delivery=1,
        worker=first["worker"],
        result={"status": "success", "data": {"tag": "late"}},
    )
    command = Command(
        id=late.request_id(),
        type=subjects.command_type(subjects.EXECUTION_REPORT),
        payload=late.model_dump(mode="json"),
    )
    await wx.publish_json(subjects.EXECUTION_REPORT, command.model_dump(mode="json"), late.request_id())

    async def applied() -> dict[str, Any] | None:
        return await wx.db.one(
            "SELECT outcome FROM processed_commands WHERE request_id = %s", late.request_id()
        )

    outcome = (await wx.until(applied, what="the late report to be applied"))["outcome"]
    assert outcome["result"]["status"].startswith("ignored"), outcome
    still = await wx.detail(execution_id)
    assert still["status"] == "running", still
    assert not events_of(still, "step_completed", "work")

    release.touch()
    detail = await wx.finished(execution_id)
    assert detail["status"] == "completed", detail
    (completed,) = events_of(detail, "step_completed", "work")
    assert survivor.ran(completed["worker"]), completed
    assert completed["result"]["data"]["tag"] == "real"
    assert detail["result"] == completed["result"]
    assert types_of(detail).count("execution_complete") == 1
    assert len(events_of(detail, "action_started")) == 2  # one per delivery: no third one
    assert len(events_of(detail, "step_started", "work")) == 1
    row = await wx.db.one(
        "SELECT status, worker, delivery, result FROM jobs WHERE job_id = %s", job["job_id"]
    )
    assert row is not None and row["status"] == "completed" and survivor.ran(row["worker"]), row
    assert row["result"]["data"]["tag"] == "real"
    assert len(pids_in(pid_dir)) == 2  # the step ran once in each worker's sandbox


async def test_a_step_whose_worker_dies_on_every_delivery_fails_the_execution(wx: WorkerStack) -> None:
    """With NOETL_JOB_MAX_DELIVER=2: the first delivery kills its worker; the last one is not run
    but fails the step, so the execution ends instead of waiting forever."""
    runtime = "poison"
    path = "tests/workers/poison"
    kill_worker = "def main():\n    import os, signal\n    os.kill(os.getppid(), signal.SIGKILL)\n"
    await wx.register(
        playbook(
            path,
            [
                {"step": "start", "next": to_end("crash")},
                python_step("crash", kill_worker, next=to_end()),
                {"step": "end"},
            ],
            runtime=runtime,
        )
    )
    pool = await wx.workers.started(("x1", runtime), ("x2", runtime), NOETL_JOB_MAX_DELIVER="2")
    execution_id = await wx.run(path)
    detail = await wx.finished(execution_id, timeout=30 + 4 * LEASE_SECONDS)
    assert detail["status"] == "failed", detail
    assert "delivered 2 times" in detail["error"], detail["error"]
    assert [w.alive for w in pool].count(True) == 1  # one died running it; the other refused
    # Its start is told only if it ran past NOETL_WORKER_START_REPORT_DELAY before the kill (on a
    # busy machine it may): at most once, for the delivery that ran. It never ended.
    assert len(events_of(detail, "action_started", "crash")) <= 1
    assert not events_of(detail, "action_completed", "crash")
    (failed,) = events_of(detail, "step_failed", "crash")
    assert "delivered 2 times" in failed["error"]
    row = await wx.db.one(
        "SELECT status, delivery FROM jobs WHERE execution_id = %s AND step = 'crash'", int(execution_id)
    )
    assert row is not None and row["status"] == "failed" and row["delivery"] == 2, row


async def test_a_step_reports_its_start_apart_only_when_it_runs_long(wx: WorkerStack) -> None:
    """A step that ends within NOETL_WORKER_START_REPORT_DELAY (0.1 s) reports once, its start
    with its end; a longer one reports its start first. Both tell the same story in events."""
    assert wx.main is not None
    path = "tests/workers/quick-and-slow"
    await wx.register(
        playbook(
            path,
            [
                {"step": "start", "next": to_end("quick")},
                python_step("quick", "def main():\n    return {'status': 'success'}\n", next=to_end("slow")),
                python_step(
                    "slow",
                    "def main():\n    import time\n    time.sleep(0.6)\n    return {'status': 'success'}\n",
                    next=to_end(),
                ),
                {"step": "end"},
            ],
        )
    )
    detail = await wx.finished(await wx.run(path))
    assert detail["status"] == "completed", detail
    for step in ("quick", "slow"):
        assert types_of(detail, step) == [
            "step_started",
            "action_started",
            "action_completed",
            "step_completed",
        ]
    reports = await wx.db.all(
        "SELECT j.step, p.outcome->'result'->>'status' AS kind FROM jobs j"
        " JOIN processed_commands p ON p.request_id LIKE 'job-' || j.job_id || '-%%'"
        " WHERE j.execution_id = %s AND j.kind = 'action' ORDER BY p.processed_at",
        int(detail["execution_id"]),
    )
    assert [(r["step"], r["kind"]) for r in reports] == [
        ("quick", "completed"),
        ("slow", "started"),
        ("slow", "completed"),
    ]
    slow = [datetime.fromisoformat(e["timestamp"]) for e in events_of(detail, step="slow")]
    assert (slow[2] - slow[1]).total_seconds() >= 0.4  # its start was told while it ran


async def test_a_pool_runs_at_most_capacity_jobs_at_once(wx: WorkerStack) -> None:
    runtime = "narrow"
    path = "tests/workers/narrow"
    scratch = wx.scratch("narrow")
    pid_dir, release = scratch / "pids", scratch / "release"
    pid_dir.mkdir()
    branches = ["a", "b", "c"]
    await wx.register(
        playbook(
            path,
            [
                {"step": "start", "next": to_end(*branches)},
                *[
                    python_step(
                        name,
                        GATE,
                        data={"pid_dir": str(pid_dir), "release": str(release), "tag": name},
                        next=to_end(),
                    )
                    for name in branches
                ],
                {"step": "end"},
            ],
            runtime=runtime,
        )
    )
    narrow = wx.workers.start("n1", runtime=runtime, capacity=2)
    await wx.workers.ready(narrow)

    execution_id = await wx.run(path)
    await wx.event(execution_id, "action_started", count=2)
    await asyncio.sleep(LEASE_SECONDS)  # room for a third to start, were capacity not honoured
    detail = await wx.detail(execution_id)
    assert len(events_of(detail, "action_started")) == 2, types_of(detail)

    release.touch()
    detail = await wx.finished(execution_id)
    assert detail["status"] == "completed", detail
    assert sorted(e["step"] for e in action_events(detail, "step_completed")) == branches


async def _pool_status(wx: WorkerStack, runtime: str) -> dict[str, str]:
    response = await wx.client.get("/api/worker/pools", params={"runtime": runtime})
    assert response.status_code == 200, response.text
    return {item["name"]: item["status"] for item in response.json()["items"]}


async def test_a_stopped_worker_finishes_its_step_takes_no_new_jobs_and_deregisters(wx: WorkerStack) -> None:
    runtime = "drain"
    slow_path, quick_path = "tests/workers/drain-slow", "tests/workers/drain-quick"
    pid_file = wx.scratch("drain") / "pid"
    await wx.register(
        playbook(
            slow_path,
            [
                {"step": "start", "next": to_end("slow")},
                # Longer than the lease: the worker's renewals keep it from being redelivered.
                python_step(
                    "slow",
                    SLEEP,
                    data={"pid_file": str(pid_file), "seconds": LEASE_SECONDS * 1.5},
                    next=to_end(),
                ),
                {"step": "end"},
            ],
            runtime=runtime,
        )
    )
    await wx.register(
        playbook(
            quick_path,
            [
                {"step": "start", "next": to_end("quick")},
                python_step("quick", ECHO, next=to_end()),
                {"step": "end"},
            ],
            runtime=runtime,
        )
    )
    await wx.workers.started(("d1", runtime), ("d2", runtime))
    slow_id = await wx.run(slow_path)
    (started,) = await wx.event(slow_id, "action_started", "slow")
    stopping = wx.workers.by_worker_field(started["worker"])
    stopping.signal(signal.SIGTERM)
    await stopping.logged("SIGTERM received")

    # Dispatched while the stopping worker still has a fetch out: not one of them may run there.
    quick_ids = [await wx.run(quick_path) for _ in range(4)]
    for quick_id in quick_ids:
        quick = await wx.finished(quick_id)
        assert quick["status"] == "completed", quick
        for event in events_of(quick, "action_started"):
            assert not stopping.ran(event["worker"]), f"a stopping worker took a new job: {event}"

    slow = await wx.finished(slow_id)
    assert slow["status"] == "completed", slow
    assert slow["result"]["data"] == {"slept": LEASE_SECONDS * 1.5}
    assert len(events_of(slow, "action_started")) == 1  # neither redelivered nor handed back
    (completed,) = events_of(slow, "step_completed", "slow")
    assert stopping.ran(completed["worker"]) and completed["attempt"] == 1, completed

    assert await stopping.exited(30) == 0
    statuses = await wx.until(
        lambda: _offline(wx, runtime, stopping.name), what=f"{stopping.name} to be offline"
    )
    other = ({"d1", "d2"} - {stopping.name}).pop()
    assert statuses[other] == "ready", statuses


async def _offline(wx: WorkerStack, runtime: str, name: str) -> dict[str, str] | None:
    statuses = await _pool_status(wx, runtime)
    return statuses if statuses.get(name) == "offline" else None


async def test_a_stopped_worker_hands_back_a_step_that_outlives_the_grace_period(wx: WorkerStack) -> None:
    runtime = "handback"
    path = "tests/workers/handback"
    scratch = wx.scratch("handback")
    pid_dir, release = scratch / "pids", scratch / "release"
    pid_dir.mkdir()
    await wx.register(
        playbook(
            path,
            [
                {"step": "start", "next": to_end("work")},
                python_step(
                    "work",
                    GATE,
                    data={"pid_dir": str(pid_dir), "release": str(release), "tag": "handed"},
                    next=to_end(),
                ),
                {"step": "end"},
            ],
            runtime=runtime,
        )
    )
    await wx.workers.started(("h1", runtime), ("h2", runtime), NOETL_WORKER_GRACE_SECONDS="0.5")
    execution_id = await wx.run(path)
    (first,) = await wx.event(execution_id, "action_started", "work")
    stopping = wx.workers.by_worker_field(first["worker"])
    await wx.until(lambda: _async(pids_in(pid_dir)), what="the first attempt to start")
    (first_pid,) = pids_in(pid_dir)
    stopping.signal(signal.SIGTERM)

    second = (await wx.event(execution_id, "action_started", "work", count=2, timeout=30))[1]
    taker = wx.workers.by_worker_field(second["worker"])
    assert taker is not stopping
    assert await stopping.exited(30) == 0
    assert process_gone(first_pid)  # the handed-back attempt's process was stopped with it
    await wx.until(lambda: _offline(wx, runtime, stopping.name), what=f"{stopping.name} to be offline")

    release.touch()
    detail = await wx.finished(execution_id)
    assert detail["status"] == "completed", detail
    (completed,) = events_of(detail, "step_completed", "work")
    assert taker.ran(completed["worker"]), completed
    assert not [e for e in events_of(detail, "action_completed") if stopping.ran(e["worker"])]
    assert types_of(detail).count("execution_complete") == 1
