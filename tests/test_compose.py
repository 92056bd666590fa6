"""docker-compose.yml against the code (Docker is not on the test machines): every consumer has its
service, every command parses as the `noetl` CLI parses it, NATS has a healthcheck the parts wait
for, the migration runs first, and scaled workers do not share a name."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

import pytest
import typer.main
import yaml

from consumers.process import CONSUMER_NAMES
from noetl.cli import app
from noetl.settings import Settings
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
