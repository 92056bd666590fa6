"""`noetl dev --auth`: every door locked on the embedded stack. The secrets are made once, kept
0600 and reused on the next start; the API wants a token with the right role; each part is its
own NATS user with only its subjects, and nothing else gets in; the consumers are their own
database role; and no token, password or secret value shows in a log line or an event."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import secrets
import signal
import stat
import time
from pathlib import Path
from typing import Any

import httpx
import nats
import psycopg
import pytest
from conftest import Proc, Processes
from nats.errors import NoServersError
from test_dev import api_url, dev_argv, run_noetl

from noetl.access import DATABASE_FILE, NATS_FILE, TOKENS_FILE
from noetl.bus import subjects
from noetl.facade.auth import ROLES

ROOT = Path(__file__).resolve().parent.parent


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def wait_status(client: httpx.Client, execution: str, token: str) -> dict[str, Any]:
    deadline = time.monotonic() + 60
    while True:
        detail = client.get(f"/api/executions/{execution}", headers=bearer(token)).json()
        if detail["status"] in ("completed", "failed", "cancelled"):
            return detail
        assert time.monotonic() < deadline, detail
        time.sleep(0.2)


def nats_port(proc: Proc) -> int:
    line = next(line for line in proc.output().splitlines() if "noetl dev: NATS" in line)
    return int(line.split("nats://127.0.0.1:")[1].split()[0])


async def bus_checks(url: str, users: dict[str, dict[str, str]]) -> None:
    """Nobody gets on without a user; a worker may not publish a catalog command; a subscriber
    may publish nothing of the system's; the facade may."""
    with pytest.raises((NoServersError, nats.errors.Error, OSError)):
        await nats.connect(url, connect_timeout=3, allow_reconnect=False, max_reconnect_attempts=0)
    for part, allowed in (("worker", False), ("subscriber", False), ("facade", True)):
        errors: list[Exception] = []

        async def on_error(exc: Exception) -> None:
            errors.append(exc)  # noqa: B023 - each connection's own list, used before the next

        nc = await nats.connect(url, **users[part], error_cb=on_error, allow_reconnect=False)
        try:
            await nc.publish(subjects.CATALOG_REGISTER, b"{}")
            await nc.flush()
            deadline = time.monotonic() + 5
            while not allowed and not errors:
                assert time.monotonic() < deadline, f"{part} published a catalog command"
                await asyncio.sleep(0.05)
            assert allowed != any("permissions violation" in str(e).lower() for e in errors), (part, errors)
        finally:
            await nc.close()


def test_dev_with_auth_locks_every_door(processes: Processes, scratch_dir: Path) -> None:
    data = scratch_dir / "data"
    folder = data / "credentials"
    dev = processes.start(dev_argv(data, "--auth"), {})
    api = api_url(dev)
    assert f"a token per role in {folder / TOKENS_FILE} (send one as NOETL_API_TOKEN)" in dev.output()
    for name in (TOKENS_FILE, NATS_FILE, DATABASE_FILE):
        assert stat.S_IMODE((folder / name).stat().st_mode) == 0o600, name
    tokens = json.loads((folder / TOKENS_FILE).read_text())
    users = json.loads((folder / NATS_FILE).read_text())
    database = json.loads((folder / DATABASE_FILE).read_text())
    assert sorted(tokens) == sorted(ROLES) and all(len(t) >= 32 for t in tokens.values())
    assert sorted(users) == ["consumer", "facade", "subscriber", "worker"]
    assert all(sorted(u) == ["password", "user"] for u in users.values())

    secret = "tok-" + secrets.token_urlsafe(16)
    with httpx.Client(base_url=api, timeout=30) as client:
        # Without a token: only /health and /ready.
        assert client.get("/health").status_code == 200 and client.get("/ready").status_code == 200
        answer = client.get("/api/catalog/list")
        assert answer.status_code == 401 and answer.headers["www-authenticate"] == "Bearer"
        assert client.get("/api/worker/pools", headers=bearer("not-a-token")).status_code == 401
        # Each role does what it needs and no more.
        credential = {"name": "api_token", "type": "generic", "data": {"token": secret}}
        assert (
            client.post("/api/credentials", json=credential, headers=bearer(tokens["operator"])).status_code
            == 403
        )
        assert (
            client.post("/api/credentials", json=credential, headers=bearer(tokens["admin"])).status_code
            == 200
        )
        content = base64.b64encode((ROOT / "examples/secrets.yaml").read_bytes()).decode()
        register = {"content_base64": content}
        assert (
            client.post("/api/catalog/register", json=register, headers=bearer(tokens["reader"])).status_code
            == 403
        )
        assert (
            client.post(
                "/api/catalog/register", json=register, headers=bearer(tokens["operator"])
            ).status_code
            == 200
        )
        pools = client.get("/api/worker/pools", headers=bearer(tokens["reader"])).json()["items"]
        assert [(p["name"], p["status"]) for p in pools] == [("local", "ready")]

    # The CLI sends NOETL_API_TOKEN: the operator runs and waits, the reader may not run.
    env = {"NOETL_API_URL": api}
    ran = run_noetl(
        "execute", "playbook", "examples/secrets", "--wait", env=env | {"NOETL_API_TOKEN": tokens["operator"]}
    )
    assert ran.returncode == 0, ran.stdout + ran.stderr
    refused = run_noetl(
        "execute", "playbook", "examples/secrets", env=env | {"NOETL_API_TOKEN": tokens["reader"]}
    )
    assert refused.returncode != 0 and "403" in refused.stdout + refused.stderr
    listed = run_noetl("executions", "list", "--json", env=env | {"NOETL_API_TOKEN": tokens["reader"]})
    assert listed.returncode == 0, listed.stderr
    execution = str(json.loads(listed.stdout)["items"][0]["execution_id"])
    with httpx.Client(base_url=api, timeout=30) as client:
        detail = wait_status(client, execution, tokens["reader"])
        assert detail["status"] == "completed" and detail["result"]["looks_like_a_token"] is True

    port = nats_port(dev)
    asyncio.run(bus_checks(f"nats://127.0.0.1:{port}", users))

    # The consumers are on their own role; nothing they wrote holds a secret.
    owner = f"postgresql://postgres@127.0.0.1:{dev_pg_port(dev)}/postgres"
    with psycopg.connect(owner) as conn:
        roles = {
            row[0]
            for row in conn.execute("SELECT DISTINCT usename FROM pg_stat_activity WHERE usename IS NOT NULL")
        }
        assert database["consumer"]["user"] in roles, roles
        written = "".join(row[0] for row in conn.execute("SELECT to_jsonb(e)::text FROM events e"))
        written += "".join(row[0] for row in conn.execute("SELECT to_jsonb(x)::text FROM executions x"))
    values = [
        *tokens.values(),
        *(u["password"] for u in users.values()),
        database["consumer"]["password"],
        secret,
    ]
    logs = dev.output() + "".join(p.read_text(errors="replace") for p in data.rglob("*.log"))
    for value in values:
        assert value not in logs, "a secret is in a log"
        assert value not in written, "a secret is in an event or an execution"

    # The secrets are made once: a restart keeps them.
    dev.signal(signal.SIGTERM)
    assert dev.wait(60) == 0
    again = processes.start(dev_argv(data, "--auth"), {})
    api = api_url(again)
    assert json.loads((folder / TOKENS_FILE).read_text()) == tokens
    with httpx.Client(base_url=api, timeout=30) as client:
        assert client.get("/api/catalog/list", headers=bearer(tokens["reader"])).status_code == 200
    os.chmod(folder / TOKENS_FILE, 0o644)
    again.signal(signal.SIGTERM)
    assert again.wait(60) == 0
    unsafe = run_noetl(*dev_argv(data, "--auth"), env={})
    assert unsafe.returncode == 1
    assert (
        unsafe.stderr
        == f"noetl: {folder / TOKENS_FILE} may be read by others: chmod 600 it, or make new secrets\n"
    )


def dev_pg_port(proc: Proc) -> int:
    line = next(line for line in proc.output().splitlines() if "noetl dev: PostgreSQL" in line)
    return int(line.split("@127.0.0.1:")[1].split("/")[0])


def test_auth_init_writes_a_deployments_secrets(scratch_dir: Path) -> None:
    folder = scratch_dir / "secrets"
    made = run_noetl("auth", "init", "--dir", str(folder), env={})
    assert made.returncode == 0, made.stderr
    tokens = json.loads((folder / TOKENS_FILE).read_text())
    compose = (folder / "compose.env").read_text()
    assert stat.S_IMODE((folder / "compose.env").stat().st_mode) == 0o600
    variables = dict(line.split("=", 1) for line in compose.splitlines())
    assert sorted(variables) == sorted(
        [f"NOETL_NATS_{part.upper()}_PASSWORD" for part in ("facade", "consumer", "worker", "subscriber")]
        + ["NOETL_API_TOKENS", "NOETL_CONSUMER_DB_PASSWORD", "POSTGRES_PASSWORD"]
    )
    assert all(token not in compose for token in tokens.values())  # digests only
    assert all(token not in made.stdout + made.stderr for token in tokens.values())
    again = run_noetl("auth", "init", "--dir", str(folder), env={})
    assert again.returncode == 0 and json.loads((folder / TOKENS_FILE).read_text()) == tokens
