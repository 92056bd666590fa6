"""Benchmark of the runtime registry: registration over HTTP, heartbeats on the bus, memory.

    python -m bench.runtime            # the full run (about 10 minutes)
    python -m bench.runtime --quick    # the same figures, shorter windows (under 2 minutes)

Everything runs on 127.0.0.1 and is started here: nats-server with JetStream and a durable
PostgreSQL (fsync on), the facade (uvicorn running `noetl.facade.app:create_app`), the runtime
consumer and outbox relay (`noetl consumer runtime outbox`), and the baseline app
(`bench/baseline_app.py`, its own uvicorn). Load comes from separate processes started by this
one (`--role http-load`, `--role hb-load`); every load loop is bounded in time and in count.

1. Registration: 64 keep-alive HTTP clients POST /api/worker/pool/register, alternating between
   the facade and the baseline for several rounds, against the same PostgreSQL.
2. Heartbeats: simulated workers publish on core NATS exactly what `noetl worker` publishes
   (a Command envelope of type runtime.heartbeat carrying a Heartbeat, on the component's own
   heartbeat subject, without headers), over 100,000 registered components, at stepped rates;
   a sample of components is polled in SQL to measure publish-to-row lag.
3. Peak RSS of the facade and of the consumer process, sampled during both.

The table goes to stdout, the whole record to bench/results/runtime-<time>.json.
See bench/README.md for what each figure means.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HOST = "127.0.0.1"
ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = Path(__file__).resolve().parent / "results"
REGISTER_PATH = "/api/worker/pool/register"
# The same server settings for the facade and the baseline.
UVICORN_FLAGS = [
    "--host",
    HOST,
    "--loop",
    "uvloop",
    "--http",
    "httptools",
    "--no-access-log",
    "--log-level",
    "warning",
    "--timeout-keep-alive",
    "60",
]
HB_PREFIX = "hb-"
HB_CONSUMER = "runtime-heartbeats"
CMD_CONSUMER = "runtime-commands"
# Statements the bench itself sends carry this mark and are left out of the statement counts.
MARK = "bench-probe"

FULL = {
    "rounds": 3,
    "duration": 20.0,
    "warmup": 3.0,
    "hb_duration": 30.0,
    "hb_warmup": 5.0,
    "hb_drain": 15.0,
    "hb_rates": "10000,15000,20000,22000,25000,30000,35000,40000,50000,60000",
    "hb_refine": 1,
}
QUICK = {
    "rounds": 2,
    "duration": 8.0,
    "warmup": 2.0,
    "hb_duration": 6.0,
    "hb_warmup": 2.0,
    "hb_drain": 4.0,
    "hb_rates": "10000,20000,30000",
    "hb_refine": 0,
}


@dataclass(frozen=True)
class Comparison:
    """A registration run that sets the facade against itself with one feature off (in place of
    the baseline): the other app's label, how the two are titled, and the least throughput ratio
    (on/off) that passes."""

    other: str
    titles: tuple[str, str]
    target: float
    env_off: dict[str, str]


COMPARISONS = {
    "metrics": Comparison(
        "facade-nometrics",
        ("facade, metrics on", "facade, metrics off"),
        0.95,
        {"NOETL_API_METRICS": "false"},
    ),
    # The facade with auth checks a bearer token on every request; the other has no tokens.
    "auth": Comparison("facade-noauth", ("facade, auth on", "facade, auth off"), 0.90, {}),
}
TOKEN_ENV = "BENCH_TOKEN"


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile of an unsorted list; None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, math.ceil(q / 100 * len(ordered)) - 1))
    return ordered[rank]


def install_uvloop() -> None:
    try:
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    except ImportError:
        pass


# --------------------------------------------------------------------------------------------
# Role: http-load. A keep-alive HTTP/1.1 client per connection, written on raw asyncio streams so
# that the generator costs a few tens of microseconds of CPU per request (httpx costs ~10x that,
# which on a small machine would be taken from the servers under test).
# --------------------------------------------------------------------------------------------

BODY = (
    '{"name":"%s-%d-%d","runtime":"python","capacity":4,"labels":{"zone":"bench","tier":"%d"},'
    '"pid":%d,"hostname":"bench-host"}'
)
RESPONSE_KEYS = {"status", "name", "runtime_id", "kind", "runtime"}


def content_length(head: bytes) -> int:
    lower = head.lower()
    at = lower.find(b"\r\ncontent-length:")
    if at < 0:
        raise ValueError("response without content-length")
    end = lower.find(b"\r\n", at + 2)
    return int(lower[at + 17 : end].strip())


async def http_load(opts: argparse.Namespace) -> dict[str, Any]:
    perf = time.perf_counter
    start = perf()
    warm_end = start + opts.warmup
    end = warm_end + opts.duration
    per_client_keys = max(1, opts.keyspace // opts.concurrency)
    token = os.environ.get(TOKEN_ENV)
    authorization = f"Authorization: Bearer {token}\r\n" if token else ""
    head = (
        f"POST {REGISTER_PATH} HTTP/1.1\r\nHost: {opts.host}:{opts.port}\r\n{authorization}"
        "Content-Type: application/json\r\nContent-Length: %d\r\n\r\n"
    ).encode()
    latencies: list[float] = []
    statuses: Counter[int] = Counter()
    errors: Counter[str] = Counter()
    state = {"issued": 0, "completed_total": 0, "shape_errors": 0}
    cpu0 = time.process_time()

    async def client(cid: int) -> None:
        reader: asyncio.StreamReader | None = None
        writer: asyncio.StreamWriter | None = None
        i = 0
        while perf() < end and state["issued"] < opts.max_requests:
            if writer is None:
                try:
                    reader, writer = await asyncio.open_connection(opts.host, opts.port)
                except OSError as exc:
                    errors[f"connect: {exc.__class__.__name__}"] += 1
                    await asyncio.sleep(0.05)
                    continue
            assert reader is not None
            state["issued"] += 1
            body = (BODY % (opts.prefix, cid, i % per_client_keys, i % 7, 1000 + i % 30000)).encode()
            i += 1
            t0 = perf()
            try:
                writer.write(head % len(body) + body)
                response_head = await reader.readuntil(b"\r\n\r\n")
                status = int(response_head[9:12])
                length = content_length(response_head)
                data = await reader.readexactly(length) if length else b""
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as exc:
                errors[exc.__class__.__name__] += 1
                writer.close()
                writer = None
                continue
            t1 = perf()
            state["completed_total"] += 1
            if b"connection: close" in response_head.lower():
                writer.close()
                writer = None
            if status == 200 and i % 50 == 1:
                try:
                    doc = json.loads(data)
                    if set(doc) != RESPONSE_KEYS or not isinstance(doc["runtime_id"], str):
                        state["shape_errors"] += 1
                except ValueError:
                    state["shape_errors"] += 1
            if warm_end <= t1 <= end:
                statuses[status] += 1
                latencies.append(t1 - t0)
        if writer is not None:
            writer.close()

    await asyncio.gather(*(client(c) for c in range(opts.concurrency)))
    cpu = time.process_time() - cpu0
    ok = statuses.get(200, 0)
    return {
        "window_s": opts.duration,
        "completed": sum(statuses.values()),
        "completed_total": state["completed_total"],
        "ok": ok,
        "throughput": ok / opts.duration,
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "errors": dict(errors),
        "shape_errors": state["shape_errors"],
        "loadgen_cpu_s": cpu,
        "latencies_us": [int(x * 1e6) for x in latencies],
    }


# --------------------------------------------------------------------------------------------
# Role: hb-load. Simulated workers beat on core NATS at a paced rate; a sample of components is
# polled in SQL to see when each beat reaches its row.
# --------------------------------------------------------------------------------------------


class FramePublisher:
    """Core NATS publishes written as protocol frames, one write per burst.

    The server gets the same bytes a worker's nats.py client sends (`PUB <subject> <size>`, the
    payload, no headers), for about a third of nats.py's CPU per message: on a 2-core machine the
    generator's CPU is taken from the servers under test. Server PINGs are answered.
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self._pongs: asyncio.Queue[None] = asyncio.Queue()
        self._reading = asyncio.ensure_future(self._read())

    @classmethod
    async def connect(cls, url: str) -> FramePublisher:
        host, port = url.removeprefix("nats://").rsplit(":", 1)
        reader, writer = await asyncio.open_connection(host, int(port))
        info = await reader.readline()
        if not info.startswith(b"INFO "):
            raise RuntimeError(f"not a NATS server at {url}: {info[:80]!r}")
        writer.write(b'CONNECT {"verbose":false,"pedantic":false,"name":"bench-hb-load"}\r\n')
        publisher = cls(reader, writer)
        await publisher.flush()
        return publisher

    async def _read(self) -> None:
        while line := await self.reader.readline():
            if line.startswith(b"PING"):
                self.writer.write(b"PONG\r\n")
            elif line.startswith(b"PONG"):
                self._pongs.put_nowait(None)
            elif line.startswith(b"-ERR"):
                raise RuntimeError(f"nats-server: {line.decode().strip()}")

    def publish(self, frames: list[bytes]) -> None:
        self.writer.write(b"".join(frames))

    async def flush(self, timeout: float = 10.0) -> None:
        """Until the server has read everything written so far."""
        self.writer.write(b"PING\r\n")
        await self.writer.drain()
        await asyncio.wait_for(self._pongs.get(), timeout)

    async def close(self) -> None:
        self._reading.cancel()
        self.writer.close()
        await self.writer.wait_closed()


HB_TEMPLATE = (
    '{"id":"%s%x","type":"runtime.heartbeat","time":"%s",'
    '"payload":{"kind":"worker_pool","name":"%s","sent_at":"%s"}}'
)
LAG_SQL = (
    f"SELECT /* {MARK} */ name, heartbeat FROM runtime_components "
    "WHERE kind = 'worker_pool' AND name = ANY(%s)"
)


async def db_snapshot(conn: Any) -> dict[str, Any]:
    """Cumulative counters of the database; the difference of two is a window's work."""
    snap: dict[str, Any] = {}
    cur = await conn.execute(
        f"SELECT /* {MARK} */ xact_commit, xact_rollback, tup_updated, tup_inserted "
        "FROM pg_stat_database WHERE datname = current_database()"
    )
    snap["db"] = await cur.fetchone()
    cur = await conn.execute(
        f"SELECT /* {MARK} */ n_tup_upd, n_tup_hot_upd, n_tup_ins FROM pg_stat_user_tables "
        "WHERE relname = 'runtime_components'"
    )
    snap["table"] = await cur.fetchone()
    cur = await conn.execute(f"SELECT /* {MARK} */ wal_records, wal_fpi, wal_bytes::bigint FROM pg_stat_wal")
    snap["wal"] = await cur.fetchone()
    try:
        cur = await conn.execute(
            f"SELECT /* {MARK} */ queryid, calls, rows, total_exec_time, "
            "left(regexp_replace(query, '\\s+', ' ', 'g'), 90) AS query FROM pg_stat_statements "
            f"WHERE query NOT LIKE '%%{MARK}%%'"
        )
        snap["statements"] = {str(r[0]): list(r[1:]) for r in await cur.fetchall()}
    except Exception:  # pg_stat_statements is not loaded: the xact counters still tell a story
        snap["statements"] = None
    return snap


def db_delta(
    a: dict[str, Any], b: dict[str, Any], seconds: float, per: float | None = None
) -> dict[str, Any]:
    """Rates over a window (per second), and per unit of work when `per` is given."""
    out: dict[str, Any] = {
        "xact_per_s": (b["db"][0] - a["db"][0]) / seconds,
        "rows_updated_per_s": (b["table"][0] - a["table"][0]) / seconds,
        "hot_update_share": _ratio(b["table"][1] - a["table"][1], b["table"][0] - a["table"][0]),
        "wal_mb_per_s": (b["wal"][2] - a["wal"][2]) / seconds / 1e6,
        "wal_fpi_per_s": (b["wal"][1] - a["wal"][1]) / seconds,
    }
    if a["statements"] is not None and b["statements"] is not None:
        top = []
        total = 0
        for qid, (calls, rows, ms, query) in b["statements"].items():
            calls0, rows0, ms0, _ = a["statements"].get(qid, (0, 0, 0.0, query))
            if calls - calls0 <= 0:
                continue
            total += calls - calls0
            top.append(
                {
                    "query": query,
                    "calls_per_s": (calls - calls0) / seconds,
                    "rows_per_call": (rows - rows0) / (calls - calls0),
                    "mean_ms": (ms - ms0) / (calls - calls0),
                    "exec_ms_per_s": (ms - ms0) / seconds,
                }
            )
        top.sort(key=lambda t: -t["exec_ms_per_s"])
        out["statements_per_s"] = total / seconds
        out["top_statements"] = top[:8]
        if per:
            out["statements_per_unit"] = total / per
    else:
        out["statements_per_s"] = None
    if per:
        out["xact_per_unit"] = (b["db"][0] - a["db"][0]) / per
    return out


def _ratio(a: float, b: float) -> float | None:
    return a / b if b else None


async def hb_load(opts: argparse.Namespace) -> dict[str, Any]:
    import nats
    import psycopg

    from noetl.bus import subjects
    from noetl.bus.envelope import Command
    from noetl.contracts.runtime import Heartbeat
    from noetl.settings import servers_of

    perf = time.perf_counter
    n = opts.components
    names = [f"{HB_PREFIX}{i:06d}" for i in range(n)]
    subj = [subjects.heartbeat("worker_pool", name) for name in names]
    id_prefix = f"hb{os.getpid():x}r{opts.rate}-"
    # What we publish must be what a worker publishes: check one against the contracts.
    ts = datetime.now(UTC).isoformat()
    probe = Command.model_validate_json(HB_TEMPLATE % (id_prefix, 0, ts, names[0], ts))
    Heartbeat.model_validate(probe.payload)
    assert probe.type == subjects.HEARTBEAT_TYPE

    servers = servers_of(opts.nats_url)
    nc = await nats.connect(servers, max_reconnect_attempts=3)
    js = nc.jetstream()
    frames = await FramePublisher.connect(servers[0])  # a cluster replicates what one node takes
    pub_heads = [f"PUB {subject} ".encode() for subject in subj]
    lag_conn = await psycopg.AsyncConnection.connect(opts.dsn, autocommit=True)
    stats_conn = await psycopg.AsyncConnection.connect(opts.dsn, autocommit=True)

    step = max(1, n // opts.sample)
    sampled = set(range(0, n, step))
    # component -> (sent_at, publish time, published inside the window)
    pending: dict[int, tuple[datetime, float, bool]] = {}
    lags: list[float] = []
    counters = {"published": 0, "window_samples": 0}
    start = perf()
    warm_end = start + opts.warmup
    end = warm_end + opts.duration
    cpu0 = time.process_time()
    max_burst = max(1, int(opts.rate * 0.05))

    async def publisher() -> None:
        pos = 0
        seq = 0
        while True:
            now = perf()
            if now >= end or counters["published"] >= opts.max_beats:
                break
            due = int((now - start) * opts.rate) - counters["published"]
            burst = min(due, max_burst)
            if burst > 0:
                sent = datetime.now(UTC)
                stamp = sent.isoformat()
                in_window = warm_end <= now
                out: list[bytes] = []
                for _ in range(burst):
                    i = pos
                    pos = pos + 1 if pos + 1 < n else 0
                    seq += 1
                    # As a worker beats (noetl.worker.pool): no headers.
                    payload = (HB_TEMPLATE % (id_prefix, seq, stamp, names[i], stamp)).encode()
                    out += (pub_heads[i], b"%d\r\n" % len(payload), payload, b"\r\n")
                    if i in sampled and i not in pending:
                        pending[i] = (sent, now, in_window)
                        if in_window:
                            counters["window_samples"] += 1
                frames.publish(out)
                counters["published"] += burst
            await frames.writer.drain()
            await asyncio.sleep(0.002)
        await frames.flush()

    async def poller() -> None:
        while True:
            if pending:
                batch = list(pending)
                cur = await lag_conn.execute(LAG_SQL, ([names[i] for i in batch],))
                rows = await cur.fetchall()
                seen = perf()
                for name, beat in rows:
                    i = int(name[len(HB_PREFIX) :])
                    entry = pending.get(i)
                    if entry is not None and beat is not None and beat >= entry[0]:
                        del pending[i]
                        if entry[2]:
                            lags.append(seen - entry[1])
            await asyncio.sleep(opts.poll_interval)

    async def snapshot() -> dict[str, Any]:
        t = perf()
        ci = await js.consumer_info(subjects.HEARTBEATS_STREAM, HB_CONSUMER)
        si = await js.stream_info(subjects.HEARTBEATS_STREAM)
        return {
            "t": t,
            "published": counters["published"],
            "stream_last_seq": si.state.last_seq,
            "ack_floor": ci.ack_floor.stream_seq if ci.ack_floor else 0,
            "num_pending": ci.num_pending,
            "num_ack_pending": ci.num_ack_pending,
            "pg": await db_snapshot(stats_conn),
        }

    pub_task = asyncio.create_task(publisher())
    poll_task = asyncio.create_task(poller())
    await asyncio.sleep(max(0.0, warm_end - perf()))
    s0 = await snapshot()
    await asyncio.sleep(max(0.0, end - perf()))
    s1 = await snapshot()
    await pub_task
    # Drain: every sampled beat of the window must show up; the backlog must empty.
    drain_end = perf() + opts.drain
    for _ in range(int(opts.drain / 0.05) + 1):
        if perf() >= drain_end or not any(entry[2] for entry in pending.values()):
            break
        await asyncio.sleep(0.05)
    unresolved = sum(1 for entry in pending.values() if entry[2])
    backlog_left = None
    while perf() < drain_end + 5:
        ci = await js.consumer_info(subjects.HEARTBEATS_STREAM, HB_CONSUMER)
        backlog_left = ci.num_pending + ci.num_ack_pending
        if backlog_left == 0:
            break
        await asyncio.sleep(0.1)
    poll_task.cancel()
    cpu = time.process_time() - cpu0
    await frames.close()
    await nc.close()
    await lag_conn.close()
    await stats_conn.close()

    seconds = s1["t"] - s0["t"]
    all_lags = lags + [math.inf] * unresolved
    p99 = percentile(all_lags, 99)
    published_rate = (s1["published"] - s0["published"]) / seconds
    acked_rate = (s1["ack_floor"] - s0["ack_floor"]) / seconds
    rows = s1["pg"]["table"][0] - s0["pg"]["table"][0]
    db = db_delta(s0["pg"], s1["pg"], seconds, per=rows or None)
    # A beat is absorbed when its row is written. The stream keeps one beat per component, so a
    # backlog drops superseded beats and the ack floor alone would overstate the work done.
    absorbed_rate = min(acked_rate, db["rows_updated_per_s"])
    backlog_end = s1["num_pending"] + s1["num_ack_pending"]
    sustained = (
        p99 is not None
        and p99 < opts.lag_limit
        and unresolved == 0
        and absorbed_rate >= 0.95 * published_rate
        and backlog_end < max(1000, published_rate * opts.lag_limit)
    )
    return {
        "target_rate": opts.rate,
        "window_s": seconds,
        "published_rate": published_rate,
        "stored_rate": (s1["stream_last_seq"] - s0["stream_last_seq"]) / seconds,
        "acked_rate": acked_rate,
        "absorbed_rate": absorbed_rate,
        "rows_updated_rate": db["rows_updated_per_s"],
        "lag_samples": len(lags),
        "lag_unresolved": unresolved,
        "lag_p50_s": percentile(lags, 50),
        "lag_p90_s": percentile(lags, 90),
        "lag_p99_s": None if p99 is None or math.isinf(p99) else p99,
        "lag_max_s": max(lags) if lags else None,
        "backlog_at_window_end": backlog_end,
        "backlog_after_drain": backlog_left,
        "generator_kept_up": published_rate >= 0.97 * opts.rate,
        "sustained": sustained,
        "db": db,
        "loadgen_cpu_s": cpu,
    }


# --------------------------------------------------------------------------------------------
# Role: consumer (only when the `noetl` CLI is not there to run `noetl consumer`).
# --------------------------------------------------------------------------------------------


def run_consumer_role(names: list[str]) -> None:
    import logging

    from consumers.process import run_process
    from noetl.settings import Settings

    logging.basicConfig(level=logging.WARNING)
    install_uvloop()
    asyncio.run(run_process(names, Settings()))


# --------------------------------------------------------------------------------------------
# The orchestrator: servers, processes, phases, the table.
# --------------------------------------------------------------------------------------------


PHASES = ("registration", "heartbeats", "listing")


class Sampler(threading.Thread):
    """Samples RSS of the processes under test; peaks are kept per phase."""

    def __init__(self, interval: float = 0.2) -> None:
        super().__init__(daemon=True, name="rss-sampler")
        self.interval = interval
        self.procs: dict[str, Any] = {}
        self.phase = "setup"
        self.peaks: dict[str, dict[str, int]] = {}
        self._halt = threading.Event()  # not `_stop`: threading.Thread has a method of that name
        self._lock = threading.Lock()

    def track(self, label: str, pid: int) -> None:
        import psutil

        with self._lock:
            self.procs[label] = psutil.Process(pid)

    def run(self) -> None:
        while not self._halt.wait(self.interval):
            with self._lock:
                items = list(self.procs.items())
            for label, proc in items:
                try:
                    rss = proc.memory_info().rss
                except Exception:
                    continue
                phase = self.peaks.setdefault(self.phase, {})
                phase[label] = max(phase.get(label, 0), rss)

    def stop(self) -> None:
        self._halt.set()

    def cpu(self) -> dict[str, float]:
        """Cumulative CPU seconds per tracked process (PostgreSQL: the postmaster and its children)."""
        out: dict[str, float] = {}
        with self._lock:
            items = list(self.procs.items())
        for label, proc in items:
            try:
                group = [proc]
                if label == "postgres":
                    group += proc.children(recursive=True)
                total = 0.0
                for p in group:
                    try:
                        t = p.cpu_times()
                        total += t.user + t.system
                    except Exception:
                        pass
                out[label] = total
            except Exception:
                continue
        import psutil

        host = psutil.cpu_times()
        out[HOST_BUSY] = sum(host) - host.idle - getattr(host, "iowait", 0.0)
        return out


HOST_BUSY = "_host_busy"


def split_host(delta: dict[str, float], loadgen_cpu: float, seconds: float) -> dict[str, float]:
    """Pop the host's busy time out of `delta`: the cores busy in all, and outside the bench."""
    host = delta.pop(HOST_BUSY, 0.0)
    ours = sum(delta.values()) + loadgen_cpu
    return {
        "host_busy_cores": round(host / seconds, 3),
        "other_cores": round(max(0.0, host - ours) / seconds, 3),
    }


def cpu_delta(a: dict[str, float], b: dict[str, float]) -> dict[str, float]:
    return {k: round(b[k] - a.get(k, 0.0), 3) for k in b}


def child(argv: list[str], **popen: Any) -> subprocess.Popen[bytes]:
    """Every process the benchmarks start: it dies with the benchmark, also on SIGKILL or a
    SIGTERM that came too soon for `Bench.stop` (the servers do too: `noetl.embedded`)."""
    from noetl.children import die_with_parent

    return subprocess.Popen(argv, preexec_fn=die_with_parent(), **popen)


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.children: list[subprocess.Popen[bytes]] = []
        self.sampler = Sampler()
        self.workdir = Path(args.data_dir) if args.data_dir else Path(tempfile.mkdtemp(prefix="noetl-bench-"))
        self.logdir = self.workdir / "logs"
        self.nats: Any = None
        self.cluster: Any = None  # --cluster-compare: a 3-node cluster with replicas 3
        self.cluster_url = ""
        self.pg: Any = None
        self.nats_url = ""
        self.dsn = ""
        self.pgss = False
        self.token = secrets.token_urlsafe(32)  # the auth comparison's, made for this run

    # -- processes ------------------------------------------------------------------------

    def spawn(self, label: str, argv: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        self.logdir.mkdir(parents=True, exist_ok=True)
        logf = (self.logdir / f"{label}.log").open("ab")
        proc = child(argv, cwd=ROOT, env=env, stdout=logf, stderr=subprocess.STDOUT, start_new_session=True)
        logf.close()
        self.children.append(proc)
        self.sampler.track(label, proc.pid)
        return proc

    def base_env(self) -> dict[str, str]:
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("NOETL_", "POSTGRES_", "BENCH_", "PG")) and k != "PYTHONPATH"
        }
        env["PYTHONPATH"] = str(ROOT)
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def uvicorn(self, label: str, app: str, port: int, env: dict[str, str]) -> subprocess.Popen[bytes]:
        argv = [sys.executable, "-m", "uvicorn", app, "--factory", "--port", str(port), *UVICORN_FLAGS]
        return self.spawn(label, argv, env)

    def consumer_argv(self) -> list[str]:
        names = self.args.consumers.split(",")
        cli = Path(sys.executable).parent / "noetl"
        if self.args.consumer_launch == "cli" and cli.exists():
            from noetl.embedded import free_port

            metrics = ["--metrics-port", str(free_port())] if self.args.compare == "metrics" else []
            return [str(cli), "--log-level", "warning", "consumer", *names, *metrics]
        return [sys.executable, "-m", "bench.runtime", "--role", "consumer", *names]

    def role(
        self, role: str, extra: list[str], timeout: float, env: dict[str, str] | None = None
    ) -> dict[str, Any]:
        """Run a load generator to completion and return the JSON it prints."""
        argv = [sys.executable, "-m", "bench.runtime", "--role", role, *extra]
        env = self.base_env() | (env or {})
        proc = child(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.children.append(proc)
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            raise RuntimeError(f"{role} did not finish within {timeout:.0f}s") from None
        finally:
            self.children.remove(proc)
        if proc.returncode != 0:
            raise RuntimeError(f"{role} failed ({proc.returncode}): {err.decode()[-2000:]}")
        return json.loads(out.decode().strip().splitlines()[-1])

    # -- set-up -----------------------------------------------------------------------------

    def start_servers(self) -> None:
        """nats-server and a durable PostgreSQL with pg_stat_statements, migrated."""
        from noetl.embedded import EmbeddedNats, EmbeddedPostgres, free_port
        from noetl.store.migrate import migrate

        log(f"work directory {self.workdir}")
        self.nats = EmbeddedNats(self.workdir / "nats", free_port())
        self.nats_url = self.nats.start()
        self.sampler.track("nats", self.nats.proc.pid)
        self.pg = EmbeddedPostgres(self.workdir / "pg", free_port(), durable=True)
        self.dsn = self.pg.start()
        self.pgss = self.enable_pg_stat_statements()
        self.sampler.track("postgres", self.pg.proc.pid)
        log(f"nats {self.nats_url}, postgres {self.dsn} (durable, pg_stat_statements: {self.pgss})")
        asyncio.run(migrate(self.dsn))

    def start(self) -> None:
        from noetl.embedded import free_port

        args = self.args
        self.start_servers()

        consumer_env = self.base_env() | {"NOETL_NATS_URL": self.nats_url, "NOETL_PG_DSN": self.dsn}
        for i in range(args.consumer_procs):
            label = "consumer" if i == 0 else f"consumer{i + 1}"
            self.spawn(label, self.consumer_argv(), consumer_env)
        # The facade is given the bus and nothing else: no database credentials.
        self.facade_port = free_port()
        facade_env = self.base_env() | {"NOETL_NATS_URL": self.nats_url}
        comparison = self.comparison()
        if args.compare == "auth":
            from noetl.facade.auth import digest

            facade_env["NOETL_API_TOKENS"] = json.dumps({"admin": digest(self.token)})
        self.uvicorn("facade", "noetl.facade.app:create_app", self.facade_port, facade_env)
        self.baseline_port = free_port()
        self.uvicorn(
            "baseline",
            "bench.baseline_app:create_app",
            self.baseline_port,
            self.base_env()
            | {
                "BENCH_BASELINE_DSN": self.dsn,
                "BENCH_BASELINE_POOL_SIZE": str(args.baseline_pool),
                "BENCH_BASELINE_STYLE": args.baseline_style,
            },
        )
        self.ports = {"facade": self.facade_port, "baseline": self.baseline_port}
        if comparison is not None:
            # The same facade with the feature off, on the same bus and consumers.
            self.ports[comparison.other] = free_port()
            off_env = self.base_env() | {"NOETL_NATS_URL": self.nats_url} | comparison.env_off
            self.uvicorn(
                comparison.other, "noetl.facade.app:create_app", self.ports[comparison.other], off_env
            )
        if args.cluster_compare:
            self.start_cluster_side()
        self.sampler.track("orchestrator", os.getpid())
        self.sampler.start()
        self.wait_http(self.facade_port, "/ready", "facade")
        self.wait_http(self.baseline_port, "/health", "baseline")
        if comparison is not None:
            self.wait_http(self.ports[comparison.other], "/ready", comparison.other)
        asyncio.run(self.wait_consumers(self.nats_url))
        if args.cluster_compare:
            self.wait_http(self.ports["facade-cluster"], "/ready", "facade-cluster")
            asyncio.run(self.wait_consumers(self.cluster_url))
        self.check_responses()

    def start_cluster_side(self) -> None:
        """`--cluster-compare`: the same consumers and facade on a 3-node loopback cluster with
        every stream and durable replicated 3 times, sharing the store with the single node's."""
        from noetl.embedded import EmbeddedNatsCluster, free_port

        self.cluster = EmbeddedNatsCluster(self.workdir / "cluster")
        self.cluster_url = self.cluster.start()
        for node in self.cluster.nodes:
            self.sampler.track(f"nats-{node.server_name}", node.proc.pid)
        log(f"cluster {self.cluster_url} (replicas 3)")
        bus = {"NOETL_NATS_URL": self.cluster_url, "NOETL_STREAM_REPLICAS": "3"}
        self.spawn(
            "consumer-cluster", self.consumer_argv(), self.base_env() | bus | {"NOETL_PG_DSN": self.dsn}
        )
        self.ports["facade-cluster"] = free_port()
        self.uvicorn(
            "facade-cluster",
            "noetl.facade.app:create_app",
            self.ports["facade-cluster"],
            self.base_env() | bus,
        )

    def enable_pg_stat_statements(self) -> bool:
        import psycopg

        try:
            with psycopg.connect(self.dsn, autocommit=True) as conn:
                conn.execute("ALTER SYSTEM SET shared_preload_libraries = 'pg_stat_statements'")
                conn.execute("ALTER SYSTEM SET pg_stat_statements.max = 10000")
            self.pg.stop()
            self.pg.start()
            with psycopg.connect(self.dsn, autocommit=True) as conn:
                conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
            return True
        except Exception as exc:
            log(f"pg_stat_statements unavailable ({exc!r}); counting transactions only")
            return False

    def wait_http(self, port: int, path: str, what: str, timeout: float = 60) -> None:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for proc in self.children:
                if proc.poll() is not None:
                    raise RuntimeError(f"a child exited while starting: {proc.args} (logs in {self.logdir})")
            try:
                if httpx.get(f"http://{HOST}:{port}{path}", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"{what} not ready on port {port}")

    async def wait_consumers(self, url: str, timeout: float = 60, grace: float = 5) -> None:
        """Both durables exist and every consumer process has a pull request waiting on them
        (or, for consumers that do not leave one waiting, `grace` seconds have passed)."""
        import nats

        from noetl.bus import subjects
        from noetl.settings import servers_of

        nc = await nats.connect(servers_of(url))
        js = nc.jetstream()
        deadline = time.monotonic() + timeout
        declared: float | None = None
        try:
            while True:
                try:
                    cmd = await js.consumer_info(subjects.COMMANDS_STREAM, CMD_CONSUMER)
                    hb = await js.consumer_info(subjects.HEARTBEATS_STREAM, HB_CONSUMER)
                    declared = declared or time.monotonic()
                    if min(cmd.num_waiting, hb.num_waiting) >= self.args.consumer_procs:
                        return
                    if time.monotonic() - declared > grace:
                        return
                except Exception:
                    pass
                if time.monotonic() > deadline:
                    raise TimeoutError("the consumers did not start")
                await asyncio.sleep(0.2)
        finally:
            await nc.close()

    def check_responses(self) -> None:
        """Both apps answer a registration with the same shape."""
        import httpx

        body = {"name": "bench-shape-check", "runtime": "python", "capacity": 1}
        shapes = {}
        for label, port in (("facade", self.facade_port), ("baseline", self.baseline_port)):
            url = f"http://{HOST}:{port}{REGISTER_PATH}"
            r = httpx.post(url, json=body, timeout=10, headers=self.headers(label))
            if r.status_code != 200:
                raise RuntimeError(f"{label} answered {r.status_code}: {r.text}")
            doc = r.json()
            shapes[label] = sorted(doc)
            if not isinstance(doc["runtime_id"], str):
                raise RuntimeError(f"{label}: runtime_id is not a string: {doc}")
        if shapes["facade"] != shapes["baseline"]:
            raise RuntimeError(f"response shapes differ: {shapes}")

    def stop(self) -> None:
        from noetl.embedded import stop_process

        self.sampler.stop()
        for proc in reversed(self.children):
            try:
                stop_process(proc, timeout=15)
            except Exception as exc:
                log(f"could not stop {proc.args}: {exc!r}")
        self.children.clear()
        for server in (self.nats, self.cluster, self.pg):
            if server is not None:
                try:
                    server.stop()
                except Exception as exc:
                    log(f"could not stop a server: {exc!r}")
        if not self.args.keep:
            shutil.rmtree(self.workdir, ignore_errors=True)
        else:
            log(f"kept {self.workdir}")

    # -- phase 1: registration ---------------------------------------------------------------

    def db_snapshot(self) -> dict[str, Any]:
        async def go() -> dict[str, Any]:
            import psycopg

            async with await psycopg.AsyncConnection.connect(self.dsn, autocommit=True) as conn:
                return await db_snapshot(conn)

        return asyncio.run(go())

    def http_run(self, app: str, prefix: str, duration: float, warmup: float) -> dict[str, Any]:
        args = self.args
        port = self.ports[app]
        extra = [
            "--host",
            HOST,
            "--port",
            str(port),
            "--concurrency",
            str(args.clients),
            "--duration",
            str(duration),
            "--warmup",
            str(warmup),
            "--max-requests",
            str(args.max_requests),
            "--keyspace",
            str(args.keyspace),
            "--prefix",
            prefix,
        ]
        env = {TOKEN_ENV: self.token} if self.headers(app) else {}
        return self.role("http-load", extra, timeout=duration + warmup + 60, env=env)

    def headers(self, app: str) -> dict[str, str]:
        """What a request to `app` carries: the token, to the facade of the auth comparison."""
        return (
            {"Authorization": f"Bearer {self.token}"}
            if app == "facade" and self.args.compare == "auth"
            else {}
        )

    def comparison(self) -> Comparison | None:
        return COMPARISONS.get(self.args.compare) if self.args.compare else None

    def pair(self) -> tuple[str, str]:
        """The two apps the registration rounds alternate: the facade and the baseline, or with
        `--compare` the facade with a feature and without, or with `--cluster-compare` the
        facade on one node (replicas 1) and on a 3-node cluster (replicas 3)."""
        if self.args.cluster_compare:
            return ("facade", "facade-cluster")
        comparison = self.comparison()
        return ("facade", comparison.other if comparison else "baseline")

    def registration(self) -> dict[str, Any]:
        args = self.args
        self.sampler.phase = "registration"
        log("registration: warm-up run on each app (not counted)")
        pair = self.pair()
        for app in pair:
            self.http_run(app, f"warm-{app}", duration=args.warmup, warmup=0.5)
        runs = []
        for r in range(args.rounds):
            order = pair if r % 2 == 0 else pair[::-1]
            for app in order:
                cpu0, db0, t0 = self.sampler.cpu(), self.db_snapshot(), time.perf_counter()
                res = self.http_run(app, f"{app}-r{r}", duration=args.duration, warmup=args.warmup)
                cpu1, db1, t1 = self.sampler.cpu(), self.db_snapshot(), time.perf_counter()
                res["app"] = app
                res["round"] = r
                total = res["completed_total"] or 1
                used = cpu_delta(cpu0, cpu1)
                res["host"] = split_host(used, res["loadgen_cpu_s"], t1 - t0)
                res["cpu_ms_per_request"] = {k: round(v * 1000 / total, 3) for k, v in used.items()}
                res["cpu_ms_per_request"]["loadgen"] = round(res["loadgen_cpu_s"] * 1000 / total, 3)
                res["db"] = db_delta(db0, db1, t1 - t0, per=total)
                lat = res["latencies_us"]
                res["p50_ms"] = (percentile(lat, 50) or 0) / 1000
                res["p99_ms"] = (percentile(lat, 99) or 0) / 1000
                log(
                    f"  round {r + 1}/{args.rounds} {app:8s} {res['throughput']:8.1f} req/s  "
                    f"p50 {res['p50_ms']:.1f} ms  p99 {res['p99_ms']:.1f} ms  statuses {res['statuses']}"
                )
                runs.append(res)
        summary: dict[str, Any] = {}
        for app in pair:
            mine = [x for x in runs if x["app"] == app]
            lat = [v for x in mine for v in x["latencies_us"]]
            window = sum(x["window_s"] for x in mine)
            cpu_keys = set().union(*(x["cpu_ms_per_request"] for x in mine))
            summary[app] = {
                "throughput": sum(x["ok"] for x in mine) / window,
                "per_round": [round(x["throughput"], 1) for x in mine],
                "p50_ms": (percentile(lat, 50) or 0) / 1000,
                "p90_ms": (percentile(lat, 90) or 0) / 1000,
                "p99_ms": (percentile(lat, 99) or 0) / 1000,
                "max_ms": max(lat, default=0) / 1000,
                "requests": len(lat),
                "non_200": sum(v for x in mine for k, v in x["statuses"].items() if k != "200"),
                "client_errors": sum(sum(x["errors"].values()) for x in mine),
                "shape_errors": sum(x["shape_errors"] for x in mine),
                "cpu_ms_per_request": {
                    k: round(sum(x["cpu_ms_per_request"].get(k, 0) for x in mine) / len(mine), 3)
                    for k in sorted(cpu_keys)
                },
                "other_cores": mean_of(x["host"]["other_cores"] for x in mine),
                "db_statements_per_request": mean_of(x["db"].get("statements_per_unit") for x in mine),
                "db_xact_per_request": mean_of(x["db"].get("xact_per_unit") for x in mine),
            }
        f, b = summary[pair[0]], summary[pair[1]]
        summary["ratio"] = f["throughput"] / b["throughput"] if b["throughput"] else None
        summary["p99_ratio"] = f["p99_ms"] / b["p99_ms"] if b["p99_ms"] else None
        if args.cluster_compare:  # what replication costs: measured, not judged
            summary["pass"] = f["non_200"] == 0 and b["non_200"] == 0
        elif comparison := self.comparison():  # the cost of a feature: the ratio on/off
            summary["compare"] = args.compare
            summary["target"] = comparison.target
            summary["pass"] = bool(
                summary["ratio"] and summary["ratio"] >= comparison.target and f["non_200"] == 0
            )
        else:
            summary["pass"] = bool(
                summary["ratio"]
                and summary["ratio"] >= 1.3
                and f["p99_ms"] <= b["p99_ms"]
                and f["non_200"] == 0
            )
        for x in runs:
            del x["latencies_us"]
        return {"runs": runs, "summary": summary}

    # -- phase 2: heartbeats -----------------------------------------------------------------

    def seed_components(self, n: int) -> None:
        import psycopg

        log(f"heartbeats: inserting {n:,} worker pools")
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute(
                f"INSERT /* {MARK} */ INTO runtime_components "
                "(kind, name, status, capacity, labels, runtime, heartbeat) "
                "SELECT 'worker_pool', %s || lpad(i::text, 6, '0'), 'ready', 4, '{\"zone\": \"bench\"}', "
                "jsonb_build_object('type', 'python', 'pid', i, 'hostname', 'bench-host'), now() "
                "FROM generate_series(0, %s - 1) AS i ON CONFLICT (kind, name) DO NOTHING",
                (HB_PREFIX, n),
            )
            conn.execute(f"VACUUM /* {MARK} */ ANALYZE runtime_components")

    def hb_run(self, rate: int, nats_url: str | None = None) -> dict[str, Any]:
        args = self.args
        extra = [
            "--nats-url",
            nats_url or self.nats_url,
            "--dsn",
            self.dsn,
            "--rate",
            str(rate),
            "--components",
            str(args.hb_components),
            "--duration",
            str(args.hb_duration),
            "--warmup",
            str(args.hb_warmup),
            "--drain",
            str(args.hb_drain),
            "--sample",
            str(args.hb_sample),
            "--lag-limit",
            str(args.hb_lag_limit),
            "--poll-interval",
            str(args.hb_poll_interval),
        ]
        cpu0, t0 = self.sampler.cpu(), time.perf_counter()
        res = self.role("hb-load", extra, timeout=args.hb_warmup + args.hb_duration + args.hb_drain + 90)
        cpu1, t1 = self.sampler.cpu(), time.perf_counter()
        total = t1 - t0
        used = cpu_delta(cpu0, cpu1)
        res["host"] = split_host(used, res["loadgen_cpu_s"], total)
        res["cpu_share"] = {k: round(v / total, 3) for k, v in used.items()}
        res["cpu_share"]["loadgen"] = round(res["loadgen_cpu_s"] / total, 3)
        p99 = res["lag_p99_s"]
        log(
            f"  offered {rate:>7,}/s  published {res['published_rate']:>9,.0f}/s  "
            f"absorbed {res['absorbed_rate']:>9,.0f}/s  lag p50 {_fmt_s(res['lag_p50_s'])} "
            f"p99 {_fmt_s(p99)}  unresolved {res['lag_unresolved']}  "
            f"stmts/s {_fmt_num(res['db'].get('statements_per_s'))}  "
            f"{'sustained' if res['sustained'] else 'NOT sustained'}"
        )
        return res

    def heartbeats(self) -> dict[str, Any]:
        """Step the offered rate up; with `--cluster-compare` the same steps on one node and on
        the cluster, and the ratio of what each sustained."""
        self.sampler.phase = "heartbeats"
        self.seed_components(self.args.hb_components)
        single = self.hb_steps(self.nats_url)
        if not self.args.cluster_compare:
            return single
        log("heartbeats: the same steps on the 3-node cluster, replicas 3")
        cluster = self.hb_steps(self.cluster_url)
        # Compared at the highest offered rate both ran: what each absorbed, and its lag.
        ran = {s["target_rate"]: s for s in cluster["steps"]}
        common = max((s["target_rate"] for s in single["steps"] if s["target_rate"] in ran), default=None)
        mine = next((s for s in single["steps"] if s["target_rate"] == common), None)
        theirs = ran.get(common) if common is not None else None
        return single | {
            "cluster": cluster,
            "cluster_step": common,
            "cluster_ratio": mine["absorbed_rate"] / theirs["absorbed_rate"]
            if mine and theirs and theirs["absorbed_rate"]
            else None,
        }

    def hb_steps(self, nats_url: str) -> dict[str, Any]:
        args = self.args
        rates = [int(float(r)) for r in args.hb_rates.split(",") if r.strip()]
        steps = []
        failures = 0
        for rate in rates:
            steps.append(self.hb_run(rate, nats_url))
            if not steps[-1]["sustained"]:
                failures += 1
                if failures >= args.hb_max_failures:
                    break
        passed = [s for s in steps if s["sustained"]]
        failed = [s for s in steps if not s["sustained"]]
        for _ in range(args.hb_refine):
            if not passed or not failed:
                break
            lo = max(s["target_rate"] for s in passed)
            hi = (
                min(s["target_rate"] for s in failed if s["target_rate"] > lo)
                if any(s["target_rate"] > lo for s in failed)
                else None
            )
            if hi is None or hi - lo <= 2000:
                break
            mid = int(round((lo + hi) / 2 / 1000) * 1000)
            steps.append(self.hb_run(mid, nats_url))
            passed = [s for s in steps if s["sustained"]]
            failed = [s for s in steps if not s["sustained"]]
        best = max(passed, key=lambda s: s["absorbed_rate"], default=None)
        return {
            "components": args.hb_components,
            "steps": steps,
            "max_sustained_rate": best["absorbed_rate"] if best else 0.0,
            "max_sustained_step": best["target_rate"] if best else None,
            "pass": bool(best and best["absorbed_rate"] >= 20_000),
            "dead_letters": self.count_dead_letters(),
        }

    def listing(self) -> dict[str, Any]:
        """`GET /api/worker/pools` over every seeded pool: one answer, in parts over the bus."""
        import httpx

        self.sampler.phase = "listing"
        self.seed_components(self.args.hb_components)
        started = time.perf_counter()
        with httpx.Client(timeout=300) as client:
            response = client.get(
                f"http://{HOST}:{self.facade_port}/api/worker/pools", headers=self.headers("facade")
            )
        seconds = time.perf_counter() - started
        items = len(response.json()["items"]) if response.status_code == 200 else 0
        log(f"listing: {response.status_code}, {items:,} pools in {seconds:.2f} s")
        return {
            "status": response.status_code,
            "pools": items,
            "seconds": round(seconds, 3),
            "pass": response.status_code == 200 and items >= self.args.hb_components,
        }

    def count_dead_letters(self) -> int:
        import psycopg

        with psycopg.connect(self.dsn) as conn:
            row = conn.execute(f"SELECT /* {MARK} */ count(*) FROM dead_letters").fetchone()
            return int(row[0]) if row else 0

    # -- the whole run -------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        args = self.args
        started = datetime.now(UTC)
        self.start()
        result: dict[str, Any] = {
            "started": started.isoformat(),
            "mode": "quick" if args.quick else "full",
            "command": " ".join([Path(sys.executable).name, "-m", "bench.runtime", *sys.argv[1:]]),
            "config": {k: v for k, v in vars(args).items() if k not in ("role", "names")},
            "environment": environment(),
        }
        if not args.skip_registration:
            result["registration"] = self.registration()
        if not args.skip_heartbeats:
            result["heartbeats"] = self.heartbeats()
        result["listing"] = self.listing()
        self.sampler.phase = "done"
        result["peak_rss_mb"] = {
            phase: {k: round(v / 2**20, 1) for k, v in sorted(peaks.items())}
            for phase, peaks in self.sampler.peaks.items()
            if phase in PHASES
        }
        result["finished"] = datetime.now(UTC).isoformat()
        return result


def mean_of(values: Iterable[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return sum(vals) / len(vals) if vals else None


def _fmt_s(v: float | None) -> str:
    return "   inf" if v is None else f"{v * 1000:5.0f}ms"


def _fmt_num(v: float | None, digits: int = 0) -> str:
    return "n/a" if v is None else f"{v:,.{digits}f}"


def environment() -> dict[str, Any]:
    import psutil

    from noetl.embedded import nats_server_binary

    env: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
    }
    try:
        env["nats_server"] = subprocess.run(
            [nats_server_binary(), "--version"], capture_output=True, text=True, timeout=10
        ).stdout.strip()
    except Exception:
        pass
    return env


# --------------------------------------------------------------------------------------------
# The table.
# --------------------------------------------------------------------------------------------


def render(result: dict[str, Any]) -> str:
    lines: list[str] = []
    add = lines.append
    env = result["environment"]
    add("")
    add(f"NoETL runtime registry benchmark ({result['mode']}), {env['cpus']} CPUs, Python {env['python']}")
    add(f"command: {result['command']}")
    reg = result.get("registration")
    if reg:
        s = reg["summary"]
        cfg = result["config"]
        add("")
        add(
            f"1. Registration: POST {REGISTER_PATH}, {cfg['clients']} keep-alive clients, "
            f"{cfg['rounds']} rounds x {cfg['duration']:g} s per app, alternating"
        )
        add(
            f"   {'':22s} {'req/s':>9s} {'p50 ms':>8s} {'p99 ms':>8s} {'max ms':>8s} {'non-200':>8s}"
            f" {'DB stmt/req':>11s} {'DB xact/req':>11s} {'other load':>10s}   per round"
        )
        baseline_title = f"baseline ({cfg.get('baseline_style', 'tuned')})"
        comparison = COMPARISONS.get(s.get("compare", ""))
        clustered = "facade-cluster" in s
        rows = (
            tuple(zip(("facade", comparison.other), comparison.titles, strict=True))
            if comparison
            else (("facade", "1 node, replicas 1"), ("facade-cluster", "3 nodes, replicas 3"))
            if clustered
            else (("facade", "facade (bus)"), ("baseline", baseline_title))
        )
        for app, title in rows:
            x = s[app]
            add(
                f"   {title:22s} {x['throughput']:9,.1f} {x['p50_ms']:8.1f} {x['p99_ms']:8.1f} "
                f"{x['max_ms']:8.1f} {x['non_200']:8d} {_fmt_num(x['db_statements_per_request'], 2):>11s} "
                f"{_fmt_num(x['db_xact_per_request'], 2):>11s} {_fmt_num(x['other_cores'], 2):>10s}"
                f"   {x['per_round']}"
            )
        if clustered:
            p99 = 1 / s["p99_ratio"] if s["p99_ratio"] else float("nan")
            add(
                f"   replication cost, 1 node/3 nodes: throughput {s['ratio']:.2f}x, "
                f"p99 {p99:.2f}x longer on the cluster"
            )
        elif comparison:
            add(
                f"   ratio {s['compare']} on/off: throughput {s['ratio']:.3f}x "
                f"(target >= {comparison.target}x), p99 {s['p99_ratio']:.2f}x: "
                f"{'PASS' if s['pass'] else 'MISS'}"
            )
        else:
            add(
                f"   ratio facade/baseline: throughput {s['ratio']:.2f}x (target >= 1.30x), "
                f"p99 {s['p99_ratio']:.2f}x (target <= 1.00x): {'PASS' if s['pass'] else 'MISS'}"
            )
        add("   CPU ms per request, by process:")
        for app, _ in rows:
            cpu = s[app]["cpu_ms_per_request"]
            parts = ", ".join(
                f"{k} {v:.3f}" for k, v in sorted(cpu.items(), key=lambda kv: -kv[1]) if v >= 0.001
            )
            add(f"     {app:9s} {parts}")
    hb = result.get("heartbeats")
    if hb:
        cfg = result["config"]
        add("")
        add(
            f"2. Heartbeats on the bus: {hb['components']:,} registered components, "
            f"{cfg['hb_duration']:g} s per step, p99 lag limit {cfg['hb_lag_limit']:g} s"
        )
        add(
            f"   {'offered/s':>10s} {'published/s':>11s} {'absorbed/s':>10s} {'rows upd/s':>10s} "
            f"{'lag p50':>8s} {'lag p99':>8s} {'lag max':>8s} {'stmt/s':>7s} {'xact/s':>7s} "
            f"{'HOT%':>5s} {'backlog':>8s} {'other':>6s}  result"
        )
        for st in sorted(hb["steps"], key=lambda x: x["target_rate"]):
            db = st["db"]
            hot = db.get("hot_update_share")
            add(
                f"   {st['target_rate']:10,d} {st['published_rate']:11,.0f} {st['absorbed_rate']:10,.0f} "
                f"{st['rows_updated_rate']:10,.0f} {_fmt_s(st['lag_p50_s']):>8s} "
                f"{_fmt_s(st['lag_p99_s']):>8s} "
                f"{_fmt_s(st['lag_max_s']):>8s} {_fmt_num(db.get('statements_per_s')):>7s} "
                f"{db['xact_per_s']:7,.0f} {'' if hot is None else f'{hot * 100:4.0f}%':>5s} "
                f"{st['backlog_at_window_end']:8,d} {st['host']['other_cores']:6.2f}  "
                f"{'sustained' if st['sustained'] else 'not sustained'}"
                f"{'' if st['generator_kept_up'] else ' (generator behind)'}"
            )
        add(
            f"   max sustained: {hb['max_sustained_rate']:,.0f} heartbeats/s (target >= 20,000/s): "
            f"{'PASS' if hb['pass'] else 'MISS'}; dead letters: {hb['dead_letters']}"
        )
        best = next((s for s in hb["steps"] if s["target_rate"] == hb["max_sustained_step"]), None)
        if best:
            share = ", ".join(
                f"{k} {v:.2f}"
                for k, v in sorted(best["cpu_share"].items(), key=lambda kv: -kv[1])
                if v >= 0.01
            )
            add(f"   CPU cores busy at {best['target_rate']:,}/s: {share}")
            if best["db"].get("top_statements"):
                add("   top statements at that rate (calls/s, rows/call, mean ms):")
                for t in best["db"]["top_statements"][:5]:
                    add(
                        f"     {t['calls_per_s']:8.1f} {t['rows_per_call']:8.1f} {t['mean_ms']:8.2f}  "
                        f"{t['query'][:80]}"
                    )
    if hb and (cluster := hb.get("cluster")):
        add(
            f"   on 3 nodes, replicas 3: max sustained {cluster['max_sustained_rate']:,.0f} heartbeats/s; "
            f"absorbed, lag p99 per offered rate: "
            + ", ".join(
                f"{s['target_rate']:,}/s: {s['absorbed_rate']:,.0f}, {_fmt_s(s['lag_p99_s'])}"
                for s in cluster["steps"]
            )
        )
        add(
            f"   replication cost, absorbed 1 node/3 nodes at {hb['cluster_step'] or 0:,}/s offered: "
            f"{_fmt_num(hb['cluster_ratio'], 2)}x"
        )
    if listing := result.get("listing"):
        add("")
        status, pools, seconds = listing["status"], listing["pools"], listing["seconds"]
        add(f"   GET /api/worker/pools: {status}, {pools:,} pools in {seconds} s")
    rss = result.get("peak_rss_mb")
    if rss:
        add("")
        add("3. Peak RSS (MB)")
        phases = [p for p in PHASES if p in rss]
        labels = sorted({k for p in phases for k in rss[p]}, key=_rss_order)
        add(f"   {'process':18s}" + "".join(f"{p:>14s}" for p in phases))
        for label in labels:
            add(f"   {label:18s}" + "".join(f"{rss[p].get(label, 0):14.1f}" for p in phases))
    add("")
    return "\n".join(lines)


def _rss_order(label: str) -> tuple[int, str]:
    order = ["facade", "consumer", "baseline", "nats", "postgres"]
    for i, prefix in enumerate(order):
        if label.startswith(prefix):
            return (i, label)
    return (len(order), label)


# --------------------------------------------------------------------------------------------
# Command line.
# --------------------------------------------------------------------------------------------


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.runtime", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="short windows: finishes in under 2 minutes")
    p.add_argument("--data-dir", help="where the servers keep their data (default: a fresh temp dir)")
    p.add_argument("--keep", action="store_true", help="keep the data directory and the logs")
    p.add_argument("--json-out", help="write the JSON here (default bench/results/runtime-<time>.json)")
    p.add_argument("--skip-registration", action="store_true")
    p.add_argument("--skip-heartbeats", action="store_true")
    g = p.add_argument_group("processes")
    g.add_argument("--consumers", default="runtime,outbox", help="consumers in the consumer process(es)")
    g.add_argument("--consumer-procs", type=int, default=1, help="copies of the consumer process")
    g.add_argument(
        "--consumer-launch",
        choices=["module", "cli"],
        default="cli",
        help="module: consumers.process.run in a subprocess; cli: `noetl consumer ...`",
    )
    g.add_argument(
        "--compare",
        choices=sorted(COMPARISONS),
        help="registration: the facade with a feature against the same facade without, in place of "
        "the baseline; prints the ratio. metrics: NOETL_API_METRICS on/off (and the consumer serving "
        "its own); auth: a bearer token checked on every request, or no tokens",
    )
    g.add_argument(
        "--cluster-compare",
        action="store_true",
        help="registration and heartbeats on one node with replicas 1 against a 3-node loopback "
        "cluster with replicas 3, in the same run, in place of the baseline; prints the ratios",
    )
    g.add_argument(
        "--metrics-compare",
        dest="compare",
        action="store_const",
        const="metrics",
        help="the same as --compare metrics",
    )
    g.add_argument("--baseline-pool", type=int, default=16, help="the baseline's connection pool size")
    g.add_argument(
        "--baseline-style",
        choices=("original", "tuned"),
        default="original",
        help="original: the original's code path (a transaction, response_model); "
        "tuned: autocommit and a direct JSONResponse (see bench/baseline_app.py)",
    )
    g = p.add_argument_group("registration")
    g.add_argument("--clients", type=int, default=64, help="concurrent HTTP connections")
    g.add_argument("--rounds", type=int, help="rounds, each app once per round")
    g.add_argument("--duration", type=float, help="measured seconds per app per round")
    g.add_argument("--warmup", type=float, help="unmeasured seconds before each measured window")
    g.add_argument("--max-requests", type=int, default=2_000_000, help="hard cap per run")
    g.add_argument("--keyspace", type=int, default=4096, help="distinct pool names per app per round")
    g = p.add_argument_group("heartbeats")
    g.add_argument("--hb-components", type=int, default=100_000)
    g.add_argument("--hb-rates", help="offered rates to step through, heartbeats/s, comma-separated")
    g.add_argument("--hb-duration", type=float, help="measured seconds per step")
    g.add_argument("--hb-warmup", type=float, help="unmeasured seconds before each step's window")
    g.add_argument("--hb-drain", type=float, help="seconds allowed after a step for the backlog to clear")
    g.add_argument("--hb-refine", type=int, help="bisection steps between the last pass and first miss")
    g.add_argument("--hb-max-failures", type=int, default=1, help="stop stepping after this many misses")
    g.add_argument("--hb-sample", type=int, default=1000, help="components whose rows are polled for lag")
    g.add_argument("--hb-poll-interval", type=float, default=0.02)
    g.add_argument("--hb-lag-limit", type=float, default=1.0, help="p99 publish-to-row lag limit, s")
    # Internal: the load generators and the fallback consumer run as separate processes.
    p.add_argument(
        "--role", choices=["orchestrate", "http-load", "hb-load", "consumer"], default="orchestrate"
    )
    p.add_argument("--host", default=HOST, help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, help=argparse.SUPPRESS)
    p.add_argument("--concurrency", type=int, default=64, help=argparse.SUPPRESS)
    p.add_argument("--prefix", default="bench", help=argparse.SUPPRESS)
    p.add_argument("--nats-url", help=argparse.SUPPRESS)
    p.add_argument("--dsn", help=argparse.SUPPRESS)
    p.add_argument("--rate", type=int, help=argparse.SUPPRESS)
    p.add_argument("--components", type=int, help=argparse.SUPPRESS)
    p.add_argument("--drain", type=float, default=10.0, help=argparse.SUPPRESS)
    p.add_argument("--sample", type=int, default=1000, help=argparse.SUPPRESS)
    p.add_argument("--lag-limit", type=float, default=1.0, help=argparse.SUPPRESS)
    p.add_argument("--poll-interval", type=float, default=0.02, help=argparse.SUPPRESS)
    p.add_argument("--max-beats", type=int, default=50_000_000, help=argparse.SUPPRESS)
    p.add_argument("names", nargs="*", help=argparse.SUPPRESS)
    return p


def apply_mode(args: argparse.Namespace) -> None:
    defaults = QUICK if args.quick else FULL
    for key, value in defaults.items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)


def raise_on_term(signum: int, _frame: Any) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.role == "http-load":
        install_uvloop()
        print(json.dumps(asyncio.run(http_load(args))))
        return 0
    if args.role == "hb-load":
        install_uvloop()
        print(json.dumps(asyncio.run(hb_load(args))))
        return 0
    if args.role == "consumer":
        run_consumer_role(args.names or ["runtime", "outbox"])
        return 0
    apply_mode(args)
    signal.signal(signal.SIGTERM, raise_on_term)
    bench = Bench(args)
    try:
        result = bench.run()
    finally:
        bench.stop()
    out = (
        Path(args.json_out)
        if args.json_out
        else RESULTS_DIR / f"runtime-{time.strftime('%Y%m%d-%H%M%S')}.json"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=str))
    print(render(result))
    print(f"JSON: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
