"""The facade against its own OpenAPI document: schemathesis generates requests for every operation
from the document (valid ones, and ones that break it), sends them to a real stack (`noetl api`
and `noetl consumer` processes on the session's NATS and PostgreSQL), and checks every answer:
no 5xx but 503, a documented status, and a body and headers that the document describes.

Bounded for CI: a fixed number of examples per operation, no shrinking of what fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterator

import httpx
import pytest
import schemathesis
from conftest import Processes, Servers, reset_state
from helpers_execution import b64, playbook, purge_jobs, truncate_domain
from hypothesis import HealthCheck, Phase, settings
from schemathesis import checks

from noetl.embedded import free_port
from noetl.facade.app import create_app
from noetl.settings import Settings

EXAMPLES = int(os.environ.get("OPENAPI_EXAMPLES", "40"))  # more for a longer hunt
# Event streams never end: they are tested by hand (tests/test_events_stream.py).
STREAMING = r"/events/stream$"


@pytest.fixture(scope="module")
def live_url(servers: Servers, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    asyncio.run(reset_state(servers))
    asyncio.run(truncate_domain(servers.dsn))
    procs = Processes(tmp_path_factory.mktemp("openapi"))
    bus = {"NOETL_NATS_URL": servers.nats_url}
    try:
        consumers = procs.start(
            ["--log-level", "error", "consumer", "runtime", "catalog", "execution", "credentials", "outbox"],
            {**bus, "NOETL_PG_DSN": servers.consumer_dsn},
        )
        port = free_port()
        api = procs.start(["--log-level", "error", "api", "--port", str(port)], bus)
        url = f"http://127.0.0.1:{port}"
        with httpx.Client(base_url=url, timeout=30) as client:
            deadline = time.monotonic() + 60
            while True:
                for proc in (consumers, api):
                    assert proc.popen.poll() is None, proc.output()
                with contextlib.suppress(httpx.TransportError):
                    if client.get("/api/catalog/list").status_code == 200:
                        break
                assert time.monotonic() < deadline, api.output() + consumers.output()
                time.sleep(0.1)
            # Something to find: a playbook, an execution, a pool.
            registered = client.post("/api/catalog/register", json={"content_base64": b64(playbook())})
            assert registered.status_code == 200, registered.text
            assert (
                client.post("/api/executions/run", json={"path": "examples/hello_world"}).status_code == 200
            )
            assert client.post("/api/worker/pool/register", json={"name": "pool-a"}).status_code == 200
        yield url
        for proc in (consumers, api):
            assert proc.popen.poll() is None, f"a process died under the generated requests: {proc.output()}"
    finally:
        for proc in procs.procs:
            proc.signal(signal.SIGTERM)
        for proc in procs.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(10)
        procs.cleanup()
        asyncio.run(purge_jobs(servers.nats_url))


# The document as the app serves it at /openapi.json (built here: the servers start later).
schema = schemathesis.openapi.from_dict(create_app(Settings()).openapi()).exclude(path_regex=STREAMING)


@schemathesis.check
def no_server_error_but_503(
    ctx: checks.CheckContext, response: schemathesis.Response, case: schemathesis.Case
) -> None:
    """503 says the bus or the store is away, and to retry; any other 5xx is a bug."""
    if response.status_code >= 500 and response.status_code != 503:
        raise AssertionError(
            f"{response.status_code} from {case.method} {case.formatted_path}: {response.text[:500]}"
        )


@schema.parametrize()
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=list(HealthCheck),
)
def test_every_operation_keeps_its_document(case: schemathesis.Case, live_url: str) -> None:
    case.call_and_validate(
        base_url=live_url,
        timeout=30,
        checks=[
            no_server_error_but_503,
            checks.status_code_conformance,
            checks.content_type_conformance,
            checks.response_headers_conformance,
            checks.response_schema_conformance,
            checks.negative_data_rejection,
        ],
        excluded_checks=[checks.not_a_server_error],
    )
