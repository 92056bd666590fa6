"""The Kubernetes material in deploy/k8s against the code (no cluster on the test machines): every
consumer has its Deployment, every command parses as the `noetl` CLI parses it, every setting the
manifests set is one the code reads, the API is probed on /health and /ready, and every
container says what it needs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from test_compose import parse

from consumers.process import CONSUMER_NAMES
from noetl.access import helm_nats_users, nats_password_variable, nats_user
from noetl.bus.permissions import PARTS
from noetl.settings import Settings

K8S = Path(__file__).resolve().parent.parent / "deploy" / "k8s"
DOCS = [d for d in yaml.safe_load_all((K8S / "noetl.yaml").read_text()) if d]
WORKLOADS = {d["metadata"]["name"]: d for d in DOCS if d["kind"] in ("Deployment", "Job")}
SETTINGS = {f"NOETL_{name.upper()}" for name in Settings.model_fields}


def containers(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return doc["spec"]["template"]["spec"]["containers"]


def test_every_consumer_has_its_deployment() -> None:
    running: dict[str, list[str]] = {}
    for name, doc in WORKLOADS.items():
        for container in containers(doc):
            path, params = parse(container["command"][1:])
            if path == ["consumer"]:
                running[name] = params["names"]
    assert sorted(n for names in running.values() for n in names) == sorted(CONSUMER_NAMES)
    for name, names in running.items():
        assert name == f"noetl-consumer-{names[0]}" and len(names) == 1, (name, names)


def test_commands_settings_probes_and_resources() -> None:
    paths = {name: parse(containers(doc)[0]["command"][1:])[0] for name, doc in WORKLOADS.items()}
    assert paths["noetl-migrate"] == ["db", "migrate"] and paths["noetl-api"] == ["api"]
    assert paths["noetl-worker-python"] == ["worker"]
    config = next(d for d in DOCS if d["kind"] == "ConfigMap")
    assert set(config["data"]) <= SETTINGS, set(config["data"]) - SETTINGS
    assert len(config["data"]["NOETL_NATS_URL"].split(",")) == 3  # every server of the cluster
    for doc in WORKLOADS.values():
        for container in containers(doc):
            names = {e["name"] for e in container.get("env", [])}
            assert names <= SETTINGS, names - SETTINGS
            assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]
    api = containers(WORKLOADS["noetl-api"])[0]
    assert api["livenessProbe"]["httpGet"]["path"] == "/health"
    assert api["readinessProbe"]["httpGet"]["path"] == "/ready"
    # Workers hold no database credentials.
    worker = containers(WORKLOADS["noetl-worker-python"])[0]
    assert all("secretRef" not in source for source in worker["envFrom"])


def test_the_nats_and_postgres_values_replicate() -> None:
    nats = yaml.safe_load((K8S / "nats-values.yaml").read_text())
    assert nats["config"]["cluster"] == {"enabled": True, "replicas": 3}
    assert nats["config"]["jetstream"]["fileStore"]["enabled"] is True
    pg = yaml.safe_load((K8S / "postgres-cluster.yaml").read_text())
    assert pg["kind"] == "Cluster" and pg["spec"]["instances"] == 3


def test_every_part_is_its_own_nats_user_on_the_cluster() -> None:
    """nats-server's users come from the code, and each part connects as its own, its password
    from the Secret the server reads it from too."""
    nats = yaml.safe_load((K8S / "nats-values.yaml").read_text())
    assert nats["config"]["merge"]["authorization"]["users"] == helm_nats_users()
    for part in PARTS:
        variable = nats_password_variable(part)
        secret = {"secretKeyRef": {"name": "noetl-secrets", "key": variable}}
        assert nats["container"]["env"][variable] == {"valueFrom": secret}
    part_of = {"noetl-api": "facade", "noetl-worker-python": "worker"} | {
        f"noetl-consumer-{name}": "consumer" for name in CONSUMER_NAMES
    }
    for name, part in part_of.items():
        env = {e["name"]: e for e in containers(WORKLOADS[name])[0]["env"]}
        assert env["NOETL_NATS_USER"]["value"] == nats_user(part), name
        key = env["NOETL_NATS_PASSWORD"]["valueFrom"]["secretKeyRef"]["key"]
        assert key == nats_password_variable(part), name
