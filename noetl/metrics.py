"""Every Prometheus metric of NoETL, in one place, and the ways a process serves them.

The facade answers `GET /metrics` itself; a consumer process or a worker serves on a port of its
own (`--metrics-port`, `NOETL_METRICS_PORT`; 0 or unset: none). Events are counted where they
happen (requests, commands, beats, jobs); what the store or the bus holds (components, executions,
the outbox, what each durable consumer has pending) is read every `NOETL_METRICS_POLL_INTERVAL`
seconds by a task of each consumer process that serves metrics, as gauges: a count of rows is the
truth after a restart, where a counter would start again from zero. Several processes may report
the same gauge: a dashboard takes their `max`.

Labels are bounded: a route is its template (`/api/executions/{execution_id}`), never the path
asked for; a command is its type; a durable its name.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter as Tally
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    start_http_server,
)
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from noetl.problems import Problem

log = logging.getLogger(__name__)

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)
JOB_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0)

# --------------------------------------------------------------------------- the facade

HTTP_REQUESTS = Counter(
    "noetl_http_requests", "HTTP requests the facade answered", ["method", "route", "status"]
)
HTTP_SECONDS = Histogram(
    "noetl_http_request_duration_seconds",
    "Time from a request's arrival to its response's start",
    ["method", "route"],
    buckets=LATENCY_BUCKETS,
)
LATE_REPLIES = Counter(
    "noetl_http_late_replies",
    "Commands answered 202: no outcome within NOETL_API_REPLY_TIMEOUT",
    ["type"],
)

# --------------------------------------------------------------------------- the consumers

COMMANDS = Counter(
    "noetl_commands",
    "Commands a consumer handled, by outcome: applied, failed (an error outcome), replayed "
    "(a redelivery answered from the record), dead_letter",
    ["consumer", "type", "outcome"],
)
DEAD_LETTERS = Counter("noetl_dead_letters", "Messages set aside as dead letters", ["consumer"])
BATCH_SIZE = Histogram(
    "noetl_consumer_batch_size", "Messages per batch a consumer applied", ["consumer"], buckets=BATCH_BUCKETS
)
APPLY_SECONDS = Histogram(
    "noetl_consumer_apply_seconds",
    "Time to apply one batch: its transaction, replies and acks",
    ["consumer"],
    buckets=LATENCY_BUCKETS,
)
HEARTBEATS = Counter("noetl_heartbeats_absorbed", "Heartbeats written to the registry")
OUTBOX_PUBLISHED = Counter("noetl_outbox_published", "Events the relay published")
OUTBOX_BACKLOG = Gauge("noetl_outbox_backlog", "Events committed and not yet published")
OUTBOX_LAG = Gauge("noetl_outbox_lag_seconds", "Age of the oldest event not yet published (0: none)")
PENDING = Gauge(
    "noetl_consumer_pending", "Messages not yet delivered to a durable consumer", ["stream", "durable"]
)
ACK_PENDING = Gauge(
    "noetl_consumer_ack_pending", "Messages delivered and not yet acked", ["stream", "durable"]
)
COMPONENTS = Gauge("noetl_components", "Registered components", ["kind", "status"])
EXECUTIONS = Gauge("noetl_executions", "Executions", ["status"])

# --------------------------------------------------------------------------- the workers

JOBS = Counter(
    "noetl_jobs",
    "Jobs a worker ended: completed, failed, exhausted (its last delivery, never run), handed_back",
    ["runtime", "outcome"],
)
JOBS_RUNNING = Gauge("noetl_jobs_running", "Jobs a worker runs now (its capacity in use)", ["runtime"])
WORKER_CAPACITY = Gauge("noetl_worker_capacity", "Jobs a worker may run at once", ["runtime"])
JOB_SECONDS = Histogram(
    "noetl_job_duration_seconds", "Time a worker spent on one job", ["runtime"], buckets=JOB_BUCKETS
)


def count_commands(consumer: str, counted: Iterable[tuple[str, str]]) -> None:
    """(type, outcome) pairs of one committed batch, one increment per distinct pair; its dead
    letters count in `noetl_dead_letters` too."""
    for (command_type, outcome), n in Tally(counted).items():
        COMMANDS.labels(consumer, command_type, outcome).inc(n)
        if outcome == "dead_letter":
            DEAD_LETTERS.labels(consumer).inc(n)


# --------------------------------------------------------------------------- serving


def exposition() -> tuple[bytes, str]:
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


async def metrics_endpoint(_: Request) -> Response:
    """The text exposition of this process's metrics."""
    body, media_type = exposition()
    return Response(body, media_type=media_type)


def serve(host: str, port: int) -> Callable[[], None] | None:
    """Serve this process's metrics on `host:port` (a thread of prometheus_client); the stop.
    Port 0: none."""
    if not port:
        return None
    try:
        server, thread = start_http_server(port, addr=host)
    except OSError as exc:
        raise Problem(
            f"cannot serve metrics on {host}:{port} ({exc.strerror or exc}): "
            "choose another --metrics-port (NOETL_METRICS_PORT)"
        ) from None
    log.info("metrics on http://%s:%d/metrics", host, port)

    def stop() -> None:
        server.shutdown()
        server.server_close()
        thread.join(5)

    return stop


class HttpMetrics:
    """ASGI middleware: each request counted and timed by its route's template and its status.
    A request that matched no route (a 404, a 413 refused before routing) counts as `unmatched`.
    The labelled series are kept at hand: looking one up in prometheus_client takes a lock."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._timers: dict[tuple[str, str], Any] = {}
        self._counters: dict[tuple[str, str, int], Any] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def observed(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                key = (scope["method"], getattr(scope.get("route"), "path", "unmatched"))
                timer = self._timers.get(key) or self._timers.setdefault(key, HTTP_SECONDS.labels(*key))
                timer.observe(time.perf_counter() - started)
            await send(message)

        try:
            await self.app(scope, receive, observed)
        finally:
            key = (scope["method"], getattr(scope.get("route"), "path", "unmatched"), status)
            counter = self._counters.get(key)
            if counter is None:
                counter = self._counters.setdefault(key, HTTP_REQUESTS.labels(key[0], key[1], str(status)))
            counter.inc()


# --------------------------------------------------------------------------- polled gauges

COMPONENTS_SQL = "SELECT kind, status, count(*) AS n FROM runtime_components GROUP BY kind, status"
EXECUTIONS_SQL = "SELECT status, count(*) AS n FROM executions GROUP BY status"
OUTBOX_SQL = """
SELECT count(*) AS backlog, coalesce(extract(epoch FROM now() - min(e.created_at)), 0) AS lag
FROM outbox o JOIN events e USING (event_id)
"""


def _set_all(gauge: Gauge, rows: Iterable[tuple[tuple[str, ...], float]]) -> None:
    """Replace a gauge's series: a status no row has any more drops to nothing, not to a stale count."""
    gauge.clear()
    for labels, value in rows:
        gauge.labels(*labels).set(value)


async def poll_store(pool: Any) -> None:
    """Components, executions and the outbox, from three cheap counts."""
    async with pool.connection() as conn:
        components = await (await conn.execute(COMPONENTS_SQL)).fetchall()
        executions = await (await conn.execute(EXECUTIONS_SQL)).fetchall()
        outbox = await (await conn.execute(OUTBOX_SQL)).fetchone()
    _set_all(COMPONENTS, (((r["kind"], r["status"]), r["n"]) for r in components))
    _set_all(EXECUTIONS, (((r["status"],), r["n"]) for r in executions))
    OUTBOX_BACKLOG.set(outbox["backlog"])
    OUTBOX_LAG.set(float(outbox["lag"]))


async def poll_bus(js: Any, streams: Iterable[str]) -> None:
    """Pending and ack-pending of every durable consumer of `streams` (JetStream's consumer info)."""
    rows: list[tuple[tuple[str, str], int, int]] = []
    for stream in streams:
        try:
            infos = await js.consumers_info(stream)
        except Exception as exc:  # a stream not declared yet, or the bus away: next time
            log.debug("metrics: no consumer info for %s: %r", stream, exc)
            continue
        rows += [((stream, i.name), i.num_pending or 0, i.num_ack_pending or 0) for i in infos]
    _set_all(PENDING, ((labels, pending) for labels, pending, _ in rows))
    _set_all(ACK_PENDING, ((labels, ack_pending) for labels, _, ack_pending in rows))


async def poll(pool: Any, js: Any, streams: Iterable[str], interval: float, stop: asyncio.Event) -> None:
    """Read the polled gauges every `interval` seconds until `stop`; a failed read is logged and
    tried again next time."""
    streams = tuple(streams)
    while not stop.is_set():
        try:
            await poll_store(pool)
            await poll_bus(js, streams)
        except Exception as exc:
            log.warning("metrics: poll failed: %r", exc)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval)
