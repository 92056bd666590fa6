"""The usual mistakes, made as a person makes them, against real `noetl` processes: each gets one
clear line (what, where, which setting), long-running parts warn on every retry with backoff, and
no command prints a traceback for an expected condition."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import time
from datetime import UTC, datetime

import httpx
import nats
import pytest
from conftest import Proc, Processes, Servers, noetl_command

from noetl.bus import subjects
from noetl.bus.envelope import Event
from noetl.bus.streams import ensure_streams
from noetl.embedded import free_port


def closed_nats() -> str:
    return f"nats://127.0.0.1:{free_port()}"


def closed_postgres() -> tuple[str, str]:
    port = free_port()
    return f"postgresql://postgres@127.0.0.1:{port}/postgres", f"127.0.0.1:{port}/postgres"


def noetl(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*noetl_command(), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def retry_warnings(proc: Proc, count: int, timeout: float = 30) -> list[str]:
    """The first `count` "retrying" lines the process logged (it is still running)."""
    deadline = time.monotonic() + timeout
    while True:
        found = [line for line in proc.output().splitlines() if "retrying in" in line]
        if len(found) >= count:
            return found[:count]
        assert proc.popen.poll() is None, proc.output()
        assert time.monotonic() < deadline, proc.output()
        time.sleep(0.05)


def backoff(lines: list[str]) -> list[float]:
    return [float(re.search(r"retrying in ([\d.]+)s", line).group(1)) for line in lines]


def interrupt(proc: Proc) -> int:
    """Ctrl-C, as a terminal sends it; the exit code."""
    proc.signal(signal.SIGINT)
    code = proc.wait(30)
    assert "Traceback" not in proc.output(), proc.output()
    return code


def test_a_consumer_warns_on_each_retry_while_postgres_is_unreachable(
    servers: Servers, processes: Processes
) -> None:
    dsn, where = closed_postgres()
    proc = processes.start(["consumer", "runtime"], {"NOETL_NATS_URL": servers.nats_url, "NOETL_PG_DSN": dsn})
    lines = retry_warnings(proc, 3)
    for line in lines:
        assert (
            "WARNING" in line
            and (
                f"cannot connect to PostgreSQL at {where}: Connection refused "
                "(set by NOETL_PG_DSN or POSTGRES_*); retrying in"
            )
            in line
        ), line
    assert backoff(lines) == [0.5, 1.0, 2.0]
    assert interrupt(proc) == 130


def test_a_consumer_and_a_worker_warn_while_nats_is_unreachable_in_json_too(
    servers: Servers, processes: Processes
) -> None:
    url = closed_nats()
    consumer = processes.start(
        ["consumer", "catalog"], {"NOETL_NATS_URL": url, "NOETL_PG_DSN": servers.consumer_dsn}
    )
    worker = processes.start(["worker"], {"NOETL_NATS_URL": url, "NOETL_LOG_FORMAT": "json"})
    expected = f"cannot connect to NATS at {url}: connection refused (set by NOETL_NATS_URL)"
    assert all(expected in line for line in retry_warnings(consumer, 2))
    records = [json.loads(line) for line in retry_warnings(worker, 2)]  # one object per line
    assert [r["level"] for r in records] == ["WARNING", "WARNING"]
    assert records[0]["message"] == f"{expected}; retrying in 0.5s"
    assert records[1]["logger"] == "noetl.worker.main"
    assert interrupt(consumer) == 130
    assert interrupt(worker) == 130


async def test_the_api_answers_503_and_warns_while_nats_is_unreachable(processes: Processes) -> None:
    url, port = closed_nats(), free_port()
    api = processes.start(["api", "--port", str(port)], {"NOETL_NATS_URL": url})
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
        deadline = time.monotonic() + 30
        while True:
            try:
                ready = await client.get("/ready")
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline and api.popen.poll() is None, api.output()
                await asyncio.sleep(0.1)
        assert ready.status_code == 503
        assert (await client.get("/health")).status_code == 200
    lines = await asyncio.to_thread(retry_warnings, api, 2)
    assert all(f"cannot connect to NATS at {url}: connection refused" in line for line in lines)
    assert backoff(lines) == [0.5, 1.0]
    api.signal(signal.SIGTERM)
    assert await asyncio.to_thread(api.wait, 30) in (0, -signal.SIGTERM)
    assert "Traceback" not in api.output()


def test_migrate_says_in_one_line_what_is_wrong() -> None:
    dsn, where = closed_postgres()
    down = noetl("db", "migrate", env={"NOETL_PG_DSN": dsn})
    assert down.returncode == 1 and down.stdout == ""
    assert down.stderr == (
        f"noetl: cannot connect to PostgreSQL at {where}: Connection refused "
        "(set by NOETL_PG_DSN or POSTGRES_*)\n"
    )
    secret = noetl("db", "migrate", env={"NOETL_PG_DSN": dsn.replace("postgres@", "postgres:hunter2@")})
    assert secret.returncode == 1 and "hunter2" not in secret.stderr  # never the password

    nothing = noetl("db", "migrate")
    assert (nothing.returncode, nothing.stderr) == (
        1,
        "noetl: no database configured: set NOETL_PG_DSN or POSTGRES_HOST\n",
    )


def test_a_bad_setting_is_named() -> None:
    lease = noetl("db", "migrate", env={"NOETL_JOB_LEASE_SECONDS": "soon"})
    assert lease.returncode == 2
    assert lease.stderr.startswith("noetl: bad setting NOETL_JOB_LEASE_SECONDS: "), lease.stderr
    assert len(lease.stderr.splitlines()) == 1
    fmt = noetl("pools", "list", env={"NOETL_LOG_FORMAT": "xml"})
    assert fmt.returncode == 2 and "bad setting NOETL_LOG_FORMAT" in fmt.stderr


async def stored_events(url: str, count: int) -> None:
    client = await nats.connect(url, connect_timeout=5)
    try:
        js = client.jetstream()
        await ensure_streams(js, 1)
        for i in range(count):
            event = Event(
                id=f"err-{i}",
                type="step_completed",
                time=datetime.now(UTC),
                entity={"domain": "execution", "execution_id": "900"},
                payload={"step": "s", "n": i},
            )
            await js.publish(subjects.execution_event("900", event.type), event.model_dump_json().encode())
    finally:
        await client.close()


async def test_events_watch_ends_quietly_on_count_closed_pipe_and_ctrl_c(
    clean: Servers, processes: Processes
) -> None:
    await stored_events(clean.nats_url, 300)
    watch = [*noetl_command(), "events", "watch", "--nats-url", clean.nats_url, "--from-seq", "1"]

    counted = await asyncio.to_thread(noetl, *watch[len(noetl_command()) :], "--count", "3")
    assert counted.returncode == 0 and len(counted.stdout.splitlines()) == 3
    assert "Traceback" not in counted.stderr and "Task exception" not in counted.stderr, counted.stderr

    shell = " ".join(watch) + " --timeout 20 | head -n 2; echo status=${PIPESTATUS[0]} >&2"
    piped = await asyncio.to_thread(
        subprocess.run, ["bash", "-c", shell], capture_output=True, text=True, timeout=60
    )
    assert len(piped.stdout.splitlines()) == 2
    assert "status=0" in piped.stderr and "Traceback" not in piped.stderr, piped.stderr
    assert "Exception ignored" not in piped.stderr, piped.stderr

    live = processes.start(["events", "watch", "--nats-url", clean.nats_url], {})
    deadline = time.monotonic() + 30
    while "following" not in live.output():
        assert time.monotonic() < deadline and live.popen.poll() is None, live.output()
        await asyncio.sleep(0.05)
    assert await asyncio.to_thread(interrupt, live) == 130

    nobody = await asyncio.to_thread(noetl, "events", "watch", "--nats-url", "nats://127.0.0.1:1", timeout=30)
    assert nobody.returncode == 1
    assert nobody.stderr == (
        "noetl: cannot connect to NATS at nats://127.0.0.1:1: connection refused (set by NOETL_NATS_URL)\n"
    )


@pytest.mark.parametrize("args", [["executions", "list"], ["pools", "list"], ["execution", "cancel", "1"]])
def test_an_unreachable_api_is_one_line(args: list[str]) -> None:
    port = free_port()
    result = noetl(*args, "--port", str(port))
    assert result.returncode == 1
    assert result.stderr.startswith(f"noetl: cannot reach the API at http://localhost:{port}/api/")
    assert len(result.stderr.splitlines()) == 1
