"""NATS users per part, with the permissions of `noetl.bus.permissions`: what each part's connection
may not do is refused by nats-server (and never lands in a stream), and the whole system runs end to
end with every part on its own user and the facade behind tokens, with no token, password or secret
in any process's output. A nats-server of its own, with a config file, on 127.0.0.1."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import os
import secrets
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import nats
import pytest
from conftest import Processes, Servers, noetl_command, wait_for
from nats.aio.client import Client as NATS

from noetl.bus import permissions, subjects
from noetl.bus.connection import nats_options
from noetl.bus.events import follow
from noetl.bus.streams import ensure_streams
from noetl.crypto import generate_key
from noetl.embedded import EmbeddedNats, free_port
from noetl.facade import auth
from noetl.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
ALL = permissions.Permissions(publish=(">",), subscribe=(">",))


@dataclass
class AuthedNats:
    server: EmbeddedNats
    passwords: dict[str, str]

    @property
    def url(self) -> str:
        return self.server.url

    def env(self, part: str) -> dict[str, str]:
        return {"NOETL_NATS_USER": part, "NOETL_NATS_PASSWORD": self.passwords[part]}


@pytest.fixture(scope="module")
def authed(scratch: Path) -> Iterator[AuthedNats]:
    root = scratch / "nats-auth"
    root.mkdir()
    passwords = {name: secrets.token_urlsafe(18) for name in (*permissions.PARTS, "inspector")}
    users = [
        (permissions.User(p, password=passwords[p]), permissions.PERMISSIONS[p]) for p in permissions.PARTS
    ]
    users.append((permissions.User("inspector", password=passwords["inspector"]), ALL))  # the test's own eyes
    config = root / "nats.conf"
    config.write_text(permissions.grants(users))
    server = EmbeddedNats(root / "store", free_port(), config=config)
    server.start()
    try:
        yield AuthedNats(server, passwords)
    finally:
        server.stop()


@contextlib.asynccontextmanager
async def connected(authed: AuthedNats, user: str) -> AsyncIterator[tuple[NATS, list[str]]]:
    errors: list[str] = []

    async def remember(exc: Exception) -> None:
        errors.append(str(exc))

    settings = Settings(nats_user=user, nats_password=authed.passwords[user])
    nc = await nats.connect(authed.url, error_cb=remember, connect_timeout=5, **nats_options(settings))
    try:
        yield nc, errors
    finally:
        await nc.close()


async def _stream_count(authed: AuthedNats, stream: str) -> int:
    async with connected(authed, "inspector") as (nc, _):
        return (await nc.jetstream().stream_info(stream)).state.messages


async def _refused(authed: AuthedNats, user: str, subject: str) -> None:
    async with connected(authed, user) as (nc, errors):
        await nc.publish(subject, b"{}")
        await nc.flush()
        await wait_for(lambda: asyncio.sleep(0, errors), 5, what=f"{user} refused on {subject}")
        assert "permissions violation" in errors[0].lower(), errors
        assert subject.lower() in errors[0]


@pytest.fixture(scope="module")
async def streams(authed: AuthedNats) -> AuthedNats:
    async with connected(authed, "facade") as (nc, errors):
        await ensure_streams(nc.jetstream(), 1)  # the facade declares them, as at its start
        assert not errors
    return authed


@pytest.mark.parametrize(
    ("user", "subject"),
    [
        ("worker", subjects.CATALOG_REGISTER),
        ("worker", subjects.EXECUTION_RUN),
        ("worker", subjects.EXECUTION_CANCEL),
        ("worker", subjects.CREDENTIALS_REGISTER),
        ("worker", "noetl.evt.execution.1.execution_complete"),
        ("worker", "noetl.job.python"),
        ("subscriber", subjects.RUNTIME_REGISTER),
        ("subscriber", subjects.EXECUTION_RUN),
        ("subscriber", "noetl.hb.worker_pool.a"),
        ("subscriber", "noetl.evt.system.dead_letter"),
        ("subscriber", subjects.QUERY_CREDENTIALS_RESOLVE),
        ("facade", subjects.EXECUTION_REPORT),
        ("facade", "noetl.evt.execution.1.execution_complete"),
        ("facade", "noetl.job.python"),
        ("consumer", subjects.CATALOG_REGISTER),
    ],
)
async def test_a_part_cannot_publish_what_it_does_not_send(
    streams: AuthedNats, user: str, subject: str
) -> None:
    before = {s: await _stream_count(streams, s) for s in (subjects.COMMANDS_STREAM, subjects.EVENTS_STREAM)}
    await _refused(streams, user, subject)
    after = {s: await _stream_count(streams, s) for s in before}
    assert after == before, f"{subject} from {user} landed in a stream"


@pytest.mark.parametrize(
    ("user", "subject"),
    [
        ("worker", "noetl.qry.>"),
        ("worker", "noetl.cmd.>"),
        ("subscriber", "noetl.evt.>"),
        ("subscriber", "noetl.reply.>"),
        ("facade", "noetl.qry.>"),
    ],
)
async def test_a_part_cannot_listen_where_it_has_no_business(
    streams: AuthedNats, user: str, subject: str
) -> None:
    async with connected(streams, user) as (nc, errors):
        await nc.subscribe(subject)
        await nc.flush()
        await wait_for(lambda: asyncio.sleep(0, errors), 5, what=f"{user} refused {subject}")
        assert "permissions violation for subscription" in errors[0].lower(), errors


async def test_a_worker_cannot_pull_commands(streams: AuthedNats) -> None:
    await _refused(
        streams, "worker", f"$JS.API.CONSUMER.MSG.NEXT.{subjects.COMMANDS_STREAM}.runtime-commands"
    )
    await _refused(streams, "worker", f"$JS.API.CONSUMER.DURABLE.CREATE.{subjects.COMMANDS_STREAM}.mine")
    await _refused(streams, "subscriber", f"$JS.API.CONSUMER.DURABLE.CREATE.{subjects.JOBS_STREAM}.mine")


async def test_a_subscriber_follows_the_events(streams: AuthedNats) -> None:
    async with connected(streams, "subscriber") as (nc, errors):
        following = follow(nc.jetstream(), subjects.EVENTS_ALL, idle=0.2)
        assert await anext(following) is None  # subscribed, nothing there yet
        await following.aclose()
        assert not errors, errors


# --------------------------------------------------------------------------- the whole, with auth on


def _wait_http(client: httpx.Client, procs: list[Any], token: str) -> None:
    deadline = time.monotonic() + 60
    while True:
        for proc in procs:
            assert proc.popen.poll() is None, proc.output()
        with contextlib.suppress(httpx.TransportError):
            answer = client.get("/api/catalog/list", headers={"Authorization": f"Bearer {token}"})
            if answer.status_code == 200:
                return
        assert time.monotonic() < deadline, "".join(p.output() for p in procs)
        time.sleep(0.2)


def _not_the_end(line: str) -> bool:
    return not line.startswith("event: execution_complete")


def test_a_playbook_runs_with_every_part_on_its_own_user(
    streams: AuthedNats, clean: Servers, processes: Processes
) -> None:
    tokens = {role: secrets.token_urlsafe(24) for role in auth.ROLES}
    digests = json.dumps({role: auth.digest(token) for role, token in tokens.items()})
    secret = "tok-" + secrets.token_urlsafe(16)
    key = generate_key()
    bus = {"NOETL_NATS_URL": streams.url}
    consumers = processes.start(
        ["consumer", "runtime", "catalog", "execution", "credentials", "outbox"],
        {**bus, **streams.env("consumer"), "NOETL_PG_DSN": clean.consumer_dsn, "NOETL_CREDENTIALS_KEY": key},
    )
    port = free_port()
    api = processes.start(
        ["api", "--port", str(port)],
        {**bus, **streams.env("facade"), "NOETL_API_TOKENS": digests, "NOETL_CREDENTIALS_KEY": key},
    )
    worker = processes.start(["worker", "--name", "authed"], {**bus, **streams.env("worker")})
    parts = [consumers, api, worker]
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            _wait_http(client, parts, tokens["reader"])

            def as_(role: str) -> dict[str, str]:
                return {"Authorization": f"Bearer {tokens[role]}"}

            credential = {"name": "api_token", "type": "generic", "data": {"token": secret}}
            assert (
                client.post("/api/credentials", json=credential, headers=as_("operator")).status_code == 403
            )
            answer = client.post("/api/credentials", json=credential, headers=as_("admin"))
            assert answer.status_code == 200, answer.text
            content = base64.b64encode((ROOT / "examples/secrets.yaml").read_bytes()).decode()
            register = {"content_base64": content}
            assert (
                client.post("/api/catalog/register", json=register, headers=as_("worker")).status_code == 403
            )
            answer = client.post("/api/catalog/register", json=register, headers=as_("operator"))
            assert answer.status_code == 200, answer.text
            run = client.post(
                "/api/executions/run", json={"path": "examples/secrets"}, headers=as_("operator")
            )
            assert run.status_code == 200, run.text
            execution = run.json()["execution_id"]

            deadline = time.monotonic() + 60
            while True:
                detail = client.get(f"/api/executions/{execution}", headers=as_("reader")).json()
                if detail["status"] in ("completed", "failed", "cancelled"):
                    break
                assert time.monotonic() < deadline, detail
                time.sleep(0.2)
            assert detail["status"] == "completed", detail
            assert detail["result"]["looks_like_a_token"] is True
            stream = f"/api/executions/{execution}/events/stream"
            with client.stream("GET", stream, headers=as_("reader")) as sse:
                assert sse.status_code == 200
                seen = [line for line in itertools.takewhile(_not_the_end, sse.iter_lines())]
            assert any(line.startswith("event: ") for line in seen), seen
            pools = client.get("/api/worker/pools", headers=as_("reader")).json()
            assert [p["name"] for p in pools["items"]] == ["authed"], pools
            events = json.dumps(detail["events"])
        # A subscriber follows the events straight from NATS.
        watch = subprocess.run(
            [*noetl_command(), "events", "watch", "--from-seq", "1", "--count", "3", "--timeout", "20"],
            env={**os.environ, **bus, **streams.env("subscriber")},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert watch.returncode == 0, watch.stderr
        assert len(watch.stdout.splitlines()) == 3, watch.stdout + watch.stderr
        watched = watch.stdout + watch.stderr
    finally:
        for proc in parts:
            proc.signal(signal.SIGTERM)
        for proc in parts:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(20)
    logs = "".join(proc.output() for proc in parts) + watched
    assert "violation" not in logs.lower(), logs
    for value in [*tokens.values(), *streams.passwords.values(), secret, key]:
        assert value not in logs, "a secret is in a process's output"
        assert value not in events
