"""Prometheus metrics, read from real servers: the facade's `/metrics`, a consumer process and a
worker each on its own `--metrics-port`. Every check is a delta over what the action caused."""

from __future__ import annotations

import signal
from collections.abc import Awaitable, Callable

import httpx
import pytest
from conftest import Processes, Servers, StackFactory, wait_for
from prometheus_client.parser import text_string_to_metric_families

from consumers.process import CONSUMER_NAMES
from noetl.embedded import free_port

HELLO = """\
apiVersion: noetl.io/v1
kind: Playbook
metadata:
  name: metrics_hello
  path: tests/metrics_hello
workflow:
  - step: start
    next:
      - step: greet
  - step: greet
    type: python
    code: |
      def main():
          return {"status": "success"}
    next:
      - step: end
  - step: end
"""

Labels = dict[str, str]


def sample(text: str, name: str, **labels: str) -> float:
    """The value of the sample `name` whose labels include `labels` (0 when there is none)."""
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    return 0.0


def scraper(url: str) -> Callable[[str], Awaitable[float]]:
    async def read(name: str, **labels: str) -> float:
        async with httpx.AsyncClient(timeout=5) as http:
            try:
                response = await http.get(url)
            except httpx.TransportError:
                return 0.0
        assert response.headers["content-type"].startswith("text/plain")
        return sample(response.text, name, **labels)

    return read


def process_env(servers: Servers) -> dict[str, str]:
    return {
        "NOETL_NATS_URL": servers.nats_url,
        "NOETL_PG_DSN": servers.consumer_dsn,
        "NOETL_CONSUMER_ACK_WAIT": "5",
        "NOETL_METRICS_POLL_INTERVAL": "0.5",
    }


async def test_every_part_counts_what_it_did(
    make_stack: StackFactory, processes: Processes, servers: Servers
) -> None:
    stack = await make_stack(consumers=False)
    consumer_port, worker_port = free_port(), free_port()
    env = process_env(servers)
    consumer_proc = processes.start(["consumer", *CONSUMER_NAMES, "--metrics-port", str(consumer_port)], env)
    worker_env = {"NOETL_NATS_URL": servers.nats_url, "NOETL_WORKER_HEARTBEAT_INTERVAL": "1"}
    worker_proc = processes.start(
        ["worker", "--name", "metrics-pool", "--metrics-port", str(worker_port)], worker_env
    )
    consumer = scraper(f"http://127.0.0.1:{consumer_port}/metrics")
    worker = scraper(f"http://127.0.0.1:{worker_port}/metrics")

    async def facade(name: str, **labels: str) -> float:
        response = await stack.client.get("/metrics")
        assert response.status_code == 200
        return sample(response.text, name, **labels)

    register = {"method": "POST", "route": "/api/catalog/register", "status": "200"}
    run = {"method": "POST", "route": "/api/executions/run", "status": "200"}
    applied = {"consumer": "catalog-commands", "type": "catalog.register", "outcome": "applied"}
    completed = {"runtime": "python", "outcome": "completed"}
    # Both processes serve once they are up; the worker's pool is registered before it takes jobs.
    await wait_for(
        lambda: worker("noetl_worker_capacity", runtime="python"), timeout=60, what="the worker's metrics"
    )
    await wait_for(
        lambda: consumer("noetl_components", kind="worker_pool", status="ready"),
        timeout=60,
        what="the registered pool, counted by the consumer process's poll",
    )
    before = {
        "register": await facade("noetl_http_requests_total", **register),
        "run": await facade("noetl_http_requests_total", **run),
        "applied": await consumer("noetl_commands_total", **applied),
        "completed": await worker("noetl_jobs_total", **completed),
    }

    reg = await stack.client.post("/api/catalog/register", json={"content": HELLO})
    assert reg.status_code == 200, reg.text
    started = await stack.client.post("/api/executions/run", json={"path": "tests/metrics_hello"})
    assert started.status_code == 200, started.text
    execution_id = started.json()["execution_id"]

    assert await facade("noetl_http_requests_total", **register) == before["register"] + 1
    assert await facade("noetl_http_requests_total", **run) == before["run"] + 1
    # The route's template, never the path asked for: bounded label values.
    await stack.client.get(f"/api/executions/{execution_id}")
    text = (await stack.client.get("/metrics")).text
    assert sample(text, "noetl_http_requests_total", route="/api/executions/{execution_id}") >= 1
    assert f"/api/executions/{execution_id}" not in text
    assert sample(text, "noetl_http_request_duration_seconds_count", route="/api/catalog/register") >= 1

    assert await consumer("noetl_commands_total", **applied) == before["applied"] + 1

    async def completed_count() -> float:
        value = await worker("noetl_jobs_total", **completed)
        return value if value > before["completed"] else 0.0

    await wait_for(completed_count, timeout=60, what="the worker's completed job")
    assert await worker("noetl_jobs_running", runtime="python") == 0

    async def finished() -> bool:
        response = await stack.client.get(f"/api/executions/{execution_id}")
        return response.json()["status"] == "completed"

    await wait_for(finished, timeout=60, what="the execution's end")
    await wait_for(
        lambda: consumer("noetl_commands_total", consumer="execution-commands", outcome="applied"),
        what="the execution consumer's applied commands",
    )
    assert await consumer("noetl_consumer_batch_size_count", consumer="catalog-commands") >= 1
    assert await consumer("noetl_outbox_published_total") >= 1

    # Polled from JetStream: every durable of the commands stream, with nothing left pending.
    async def polled() -> bool:
        async with httpx.AsyncClient(timeout=5) as http:
            text = (await http.get(f"http://127.0.0.1:{consumer_port}/metrics")).text
        series = {
            (s.labels["durable"], s.value)
            for f in text_string_to_metric_families(text)
            for s in f.samples
            if s.name == "noetl_consumer_ack_pending" and s.labels["stream"] == "NOETL_COMMANDS"
        }
        return ("catalog-commands", 0.0) in series and ("execution-commands", 0.0) in series

    await wait_for(polled, what="pending and ack-pending per durable")
    await wait_for(lambda: consumer("noetl_executions", status="completed"), what="executions by status")
    # Stopped as an operator would: a consumer process killed outright leaves its offload pool's
    # child (`consumers.offload`, a spawn context) behind.
    for proc in (worker_proc, consumer_proc):
        proc.signal(signal.SIGTERM)
        assert proc.wait(60) == 0, proc.output()


async def test_metrics_can_be_left_out_of_the_facade(make_stack: StackFactory) -> None:
    stack = await make_stack(consumers=False, api_metrics=False)
    assert (await stack.client.get("/metrics")).status_code == 404


@pytest.mark.parametrize("command", ["consumer", "worker"])
def test_a_metrics_port_in_use_is_one_line(command: str, processes: Processes, servers: Servers) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        args = ["consumer", "sweeper"] if command == "consumer" else ["worker", "--name", "taken"]
        proc = processes.start([*args, "--metrics-port", str(port)], process_env(servers))
        assert proc.wait(60) == 1
    output = proc.output()
    assert f"cannot serve metrics on 127.0.0.1:{port}" in output
    assert "Traceback" not in output


def test_the_dashboard_shows_only_metrics_that_exist() -> None:
    import json
    import re
    from pathlib import Path

    from noetl import metrics

    defined = {
        m._name
        for m in vars(metrics).values()
        if isinstance(m, metrics.Counter | metrics.Gauge | metrics.Histogram)
    }
    dashboard = json.loads((Path(__file__).parent.parent / "deploy/grafana/noetl.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    shown = {
        re.sub(r"_(total|bucket|sum|count)$", "", name) for e in exprs for name in re.findall(r"noetl_\w+", e)
    }
    assert shown <= defined, shown - defined
    assert defined <= shown, f"metrics without a panel: {defined - shown}"
