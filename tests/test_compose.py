"""docker-compose.yml against the code (Docker is not on the test machines): every consumer has its
service, every command parses as the `noetl` CLI parses it, NATS has a healthcheck the parts wait
for, the migration runs first, and scaled workers do not share a name."""

from __future__ import annotations

import asyncio
import os
import re
import socket
from pathlib import Path
from typing import Any

import nats
import pytest
import typer.main
import yaml

from consumers.process import CONSUMER_NAMES
from noetl.access import Access, deployment_nats_config, nats_password_variable, nats_user
from noetl.cli import app
from noetl.embedded import EmbeddedNats, free_port
from noetl.settings import Settings
from noetl.store.roles import CONSUMER_ROLE
from noetl.worker.main import default_name

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]
SERVERS = {"nats", "postgres"}
NOETL_SERVICES = {name: s for name, s in SERVICES.items() if name not in SERVERS}


def parse(argv: list[str]) -> tuple[list[str], dict[str, Any]]:
    """The subcommand `noetl` would run for `argv` and its parameters, parsed as the CLI parses
    them; nothing runs. A bad command or option raises the CLI's usage error."""
    command = typer.main.get_command(app)
    context = command.make_context("noetl", list(argv))
    path: list[str] = []
    while hasattr(command, "resolve_command"):
        # A group keeps the subcommand's name apart from the arguments that follow it.
        rest = [*context._protected_args, *context.args]
        name, command, rest = command.resolve_command(context, rest)
        context = command.make_context(name, rest, parent=context)
        path.append(name)
    return path, context.params


def command_of(service: dict[str, Any]) -> list[str]:
    argv = service["command"]
    assert isinstance(argv, list) and argv[0] == "noetl", argv
    return argv[1:]


def test_every_consumer_has_its_service_and_none_is_unknown() -> None:
    consumers: dict[str, list[str]] = {}
    for name, service in NOETL_SERVICES.items():
        path, params = parse(command_of(service))
        if path == ["consumer"]:
            unknown = set(params["names"]) - set(CONSUMER_NAMES)
            assert not unknown, f"service {name} runs unknown consumers {unknown}"
            consumers[name] = params["names"]
    assert sorted(consumers) == sorted(CONSUMER_NAMES)
    for name, names in consumers.items():
        assert names == [name], f"service {name} should run `noetl consumer {name}`, not {names}"


def test_every_command_parses_as_the_cli_parses_it() -> None:
    paths = {name: parse(command_of(service))[0] for name, service in NOETL_SERVICES.items()}
    assert paths["migrate"] == ["db", "migrate"]
    assert paths["api"] == ["api"] and paths["worker"] == ["worker"]
    assert {tuple(p) for p in paths.values()} == {("db", "migrate"), ("consumer",), ("api",), ("worker",)}
    _, api = parse(command_of(SERVICES["api"]))
    assert api["host"] == "0.0.0.0" and SERVICES["api"]["ports"] == [f"127.0.0.1:{api['port']}:{api['port']}"]
    with pytest.raises(Exception, match="No such option"):
        parse(["worker", "--no-such-option"])  # the check can fail


def test_nats_is_healthy_before_any_part_starts_and_the_migration_runs_first() -> None:
    nats = SERVICES["nats"]
    assert "--http_port" in nats["command"]
    port = nats["command"][nats["command"].index("--http_port") + 1]
    assert any(f":{port}/healthz" in part for part in nats["healthcheck"]["test"])
    for name, service in NOETL_SERVICES.items():
        depends = service["depends_on"]
        if name == "migrate":
            assert depends == {"postgres": {"condition": "service_healthy"}}
            assert service["restart"] == "no"
            continue
        assert depends["nats"] == {"condition": "service_healthy"}, name
        if "NOETL_PG_DSN" in service["environment"] or "POSTGRES_HOST" in service["environment"]:
            assert depends["migrate"] == {"condition": "service_completed_successfully"}, name
    assert "POSTGRES_HOST" not in SERVICES["api"]["environment"]  # the facade has no DB credentials


def test_scaled_workers_take_names_of_their_own() -> None:
    _, worker = parse(command_of(SERVICES["worker"]))
    assert worker["name"] is None, "a fixed --name would be shared by every copy under --scale"
    assert "NOETL_WORKER_NAME" not in SERVICES["worker"]["environment"]
    # Without a name each process takes one from its host (a container's own) and pid.
    assert default_name(Settings()) == f"{socket.gethostname()}-{os.getpid()}"
    assert default_name(Settings(worker_name="pool-a")) == "pool-a"


# --------------------------------------------------------------------------- auth on


PART_OF = {"api": "facade", "worker": "worker"} | {name: "consumer" for name in CONSUMER_NAMES}
REFERENCE = re.compile(r"^\$\{(?P<name>[A-Z_]+):\?[^}]+\}$")


def test_every_part_is_its_own_nats_user_and_every_secret_comes_from_the_environment() -> None:
    for name, part in PART_OF.items():
        env = SERVICES[name]["environment"]
        assert env["NOETL_NATS_USER"] == nats_user(part), name
        found = REFERENCE.match(env["NOETL_NATS_PASSWORD"])
        assert found and found["name"] == nats_password_variable(part), (name, env["NOETL_NATS_PASSWORD"])
    consumer = SERVICES["runtime"]["environment"]
    assert consumer["POSTGRES_USER"] == CONSUMER_ROLE
    assert REFERENCE.match(consumer["POSTGRES_PASSWORD"])["name"] == "NOETL_CONSUMER_DB_PASSWORD"
    assert REFERENCE.match(SERVICES["api"]["environment"]["NOETL_API_TOKENS"])["name"] == "NOETL_API_TOKENS"
    assert "NOETL_CONSUMER_DB_PASSWORD" in SERVICES["migrate"]["environment"]  # it gives the role a login
    secrets_ = [
        (service, key, value)
        for service, spec in SERVICES.items()
        for key, value in spec.get("environment", {}).items()
        if key.endswith(("PASSWORD", "TOKENS"))
    ]
    assert all(REFERENCE.match(value) for _, _, value in secrets_), secrets_
    # What compose asks of the environment is what `noetl auth init` writes, no more, no less.
    asked = {REFERENCE.match(value)["name"] for _, _, value in secrets_}
    written = {line.split("=", 1)[0] for line in Access.generate().compose_env().splitlines()}
    assert asked == written


def test_the_nats_users_file_is_the_codes_and_nats_server_takes_it(
    scratch_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    nats_service = SERVICES["nats"]
    mount = next(v for v in nats_service["volumes"] if v.startswith("./deploy/nats/auth.conf:"))
    config = ROOT / mount.split(":")[0]
    assert nats_service["command"][:2] == ["--config", mount.split(":")[1]]
    text = config.read_text()
    assert text[text.index("authorization {") :] == deployment_nats_config(), (
        "regenerate deploy/nats/auth.conf"
    )
    access = Access.generate()
    for part, login in access.nats.items():
        assert (
            f"${{{nats_password_variable(part)}:?"
            in nats_service["environment"][nats_password_variable(part)]
        )
        monkeypatch.setenv(nats_password_variable(part), login.password)
    server = EmbeddedNats(scratch_dir / "nats", free_port(), config=config)
    server.start()
    try:
        asyncio.run(_connect_each(server.url, access))
    finally:
        server.stop()


async def _connect_each(url: str, access: Access) -> None:
    for login in access.nats.values():
        nc = await nats.connect(url, user=login.user, password=login.password, allow_reconnect=False)
        await nc.close()
    with pytest.raises(Exception, match=r"[Aa]uthorization"):
        await nats.connect(url, user=nats_user("facade"), password="wrong", allow_reconnect=False)
