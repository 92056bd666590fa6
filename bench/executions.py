"""Benchmark of execution acceptance: the facade on the bus against a direct-SQL baseline.

    python -m bench.executions            # the full run (about 5 minutes)
    python -m bench.executions --quick    # the same figures, shorter windows (under 2 minutes)

Everything runs on 127.0.0.1 and is started here: nats-server with JetStream and a durable
PostgreSQL (fsync on), the consumers (`noetl consumer runtime catalog execution outbox`), the
facade (uvicorn running `noetl.facade.app:create_app`, given the bus and no database) and the
baseline (`bench/baseline_executions.py`, its own uvicorn, on the same PostgreSQL). No worker pool
runs: an accepted execution's first job just waits in the NOETL_JOBS stream, which is purged
between runs, so what is measured is acceptance and nothing else.

1. Acceptance: 64 keep-alive HTTP clients POST /api/executions/run as fast as they are answered,
   alternating between the facade and the baseline for several rounds.
2. Start latency: POSTs at a steady 200/s to the facade, and a core NATS subscriber on
   `noetl.evt.execution.*.execution_start`; the time from each POST to its execution's event.

The table goes to stdout, the whole record to bench/results/executions-<time>.json.
See bench/README.md for what each figure means.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.runtime import (
    HOST,
    MARK,
    RESULTS_DIR,
    ROOT,
    Bench,
    child,
    content_length,
    cpu_delta,
    db_delta,
    db_snapshot,
    environment,
    install_uvloop,
    log,
    mean_of,
    percentile,
    raise_on_term,
    split_host,
)
from noetl.settings import servers_of

RUN_PATH = "/api/executions/run"
REGISTER_PATH = "/api/catalog/register"
EXECUTION_DURABLE = "execution-commands"
HELLO = ROOT / "examples" / "hello_world.yaml"
RESPONSE_KEYS = {
    "execution_id",
    "id",
    "catalog_id",
    "path",
    "playbook_id",
    "playbook_name",
    "version",
    "type",
    "execution_type",
    "status",
    "timestamp",
    "start_time",
    "end_time",
    "progress",
    "result",
    "error",
}

FULL = {"rounds": 3, "duration": 20.0, "warmup": 3.0, "latency_duration": 30.0}
QUICK = {"rounds": 2, "duration": 6.0, "warmup": 2.0, "latency_duration": 10.0}


# --------------------------------------------------------------------------------------------
# A keep-alive HTTP/1.1 client on raw asyncio streams: a few tens of microseconds of CPU per
# request, where httpx would take ~10x that from the servers under test on a small machine.
# --------------------------------------------------------------------------------------------


class HttpConn:
    """One keep-alive connection that reconnects after any failure."""

    def __init__(self, host: str, port: int, path: str) -> None:
        self.host = host
        self.port = port
        self.head = (
            f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
            "Content-Type: application/json\r\nContent-Length: %d\r\n\r\n"
        ).encode()
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, body: bytes) -> tuple[int, bytes]:
        """(status, body); raises OSError-like errors after closing the connection."""
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        try:
            self.writer.write(self.head % len(body) + body)
            head = await self.reader.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            length = content_length(head)
            data = await self.reader.readexactly(length) if length else b""
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            self.close()
            raise
        if b"connection: close" in head.lower():
            self.close()
        return status, data

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.writer = self.reader = None


HTTP_ERRORS = (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError)


def run_body(path: str, client: int, seq: int) -> bytes:
    return json.dumps(
        {"path": path, "parameters": {"message": f"bench {client}-{seq}"}}, separators=(",", ":")
    ).encode()


def shape_ok(data: bytes) -> bool:
    try:
        doc = json.loads(data)
    except ValueError:
        return False
    return set(doc) == RESPONSE_KEYS and isinstance(doc["execution_id"], str) and doc["status"] == "running"


def execution_of(subject: str) -> tuple[str, str]:
    """(execution id token, event type token) of `noetl.evt.execution.<id>.<type>`."""
    parts = subject.split(".")
    return parts[3], parts[4]


# --------------------------------------------------------------------------------------------
# Role: accept-load. Closed loop: each client POSTs again as soon as it is answered.
# --------------------------------------------------------------------------------------------


async def accept_load(opts: argparse.Namespace) -> dict[str, Any]:
    perf = time.perf_counter
    start = perf()
    warm_end = start + opts.warmup
    end = warm_end + opts.duration
    latencies: list[float] = []
    statuses: Counter[int] = Counter()
    errors: Counter[str] = Counter()
    state = {"issued": 0, "completed_total": 0, "shape_errors": 0, "shape_checked": 0}
    cpu0 = time.process_time()

    async def client(cid: int) -> None:
        conn = HttpConn(opts.host, opts.port, RUN_PATH)
        i = 0
        while perf() < end and state["issued"] < opts.max_requests:
            state["issued"] += 1
            body = run_body(opts.playbook, cid, i)
            i += 1
            t0 = perf()
            try:
                status, data = await conn.post(body)
            except HTTP_ERRORS as exc:
                errors[exc.__class__.__name__] += 1
                await asyncio.sleep(0.05)
                continue
            t1 = perf()
            state["completed_total"] += 1
            if status == 200 and i % 50 == 1:
                state["shape_checked"] += 1
                state["shape_errors"] += not shape_ok(data)
            if warm_end <= t1 <= end:
                statuses[status] += 1
                latencies.append(t1 - t0)
        conn.close()

    await asyncio.gather(*(client(c) for c in range(opts.concurrency)))
    ok = statuses.get(200, 0)
    return {
        "window_s": opts.duration,
        "completed": sum(statuses.values()),
        "completed_total": state["completed_total"],
        "ok": ok,
        "throughput": ok / opts.duration,
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "errors": dict(errors),
        "shape_checked": state["shape_checked"],
        "shape_errors": state["shape_errors"],
        "loadgen_cpu_s": time.process_time() - cpu0,
        "latencies_us": [int(x * 1e6) for x in latencies],
    }


# --------------------------------------------------------------------------------------------
# Role: start-latency. Open loop at a steady rate; a subscriber times each execution_start.
# --------------------------------------------------------------------------------------------


async def start_latency(opts: argparse.Namespace) -> dict[str, Any]:
    import nats

    from noetl.bus import subjects
    from noetl.bus.envelope import Event

    perf = time.perf_counter
    arrivals: dict[str, float] = {}
    checked = {"events": 0, "bad": 0}

    async def on_event(msg: Any) -> None:
        t = perf()
        execution_id, _ = execution_of(msg.subject)
        arrivals.setdefault(execution_id, t)
        if checked["events"] < 20:  # the subscriber gets what the contract says: check a few
            checked["events"] += 1
            try:
                event = Event.model_validate_json(msg.data)
                good = event.type == "execution_start" and event.entity.get("execution_id") == execution_id
            except ValueError:
                good = False
            checked["bad"] += not good

    nc = await nats.connect(servers_of(opts.nats_url), max_reconnect_attempts=3)
    await nc.subscribe(subjects.execution_events(None, "execution_start"), cb=on_event)
    await nc.flush()

    count = min(opts.max_requests, int(opts.rate * opts.duration))
    interval = 1.0 / opts.rate
    # index -> (intended send time, actual send time, response time, status, execution id)
    records: list[tuple[float, float, float, int, str | None]] = []
    errors: Counter[str] = Counter()
    state = {"next": 0}
    cpu0 = time.process_time()
    start = perf() + 0.2

    async def sender(cid: int) -> None:
        conn = HttpConn(opts.host, opts.port, RUN_PATH)
        while True:
            i = state["next"]
            if i >= count:
                break
            state["next"] += 1
            due = start + i * interval
            delay = due - perf()
            if delay > 0:
                await asyncio.sleep(delay)
            sent = perf()
            try:
                status, data = await conn.post(run_body(opts.playbook, cid, i))
            except HTTP_ERRORS as exc:
                errors[exc.__class__.__name__] += 1
                continue
            answered = perf()
            execution_id = json.loads(data).get("execution_id") if status == 200 else None
            records.append((due, sent, answered, status, execution_id))
        conn.close()

    await asyncio.gather(*(sender(c) for c in range(opts.connections)))
    sending_s = perf() - start
    # Every accepted execution's event should arrive: wait for the stragglers, within limits.
    wanted = {r[4] for r in records if r[4] is not None}
    for _ in range(int(opts.drain / 0.05) + 1):
        if wanted <= arrivals.keys():
            break
        await asyncio.sleep(0.05)
    await nc.close()

    from_intended = []
    from_sent = []
    missing = 0
    for due, sent, _answered, _status, execution_id in records:
        if execution_id is None:
            continue
        t = arrivals.get(execution_id)
        if t is None:
            missing += 1
            continue
        from_intended.append(t - due)
        from_sent.append(t - sent)
    statuses = Counter(r[3] for r in records)
    http = [r[2] - r[1] for r in records]
    late = sum(1 for r in records if r[1] - r[0] > 0.005)
    return {
        "target_rate": opts.rate,
        "requested": count,
        "sending_s": sending_s,
        "achieved_rate": len(records) / sending_s if sending_s > 0 else None,
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "errors": dict(errors),
        "sent_late_over_5ms": late,
        "events_missing": missing,
        "events_checked": checked["events"],
        "events_bad": checked["bad"],
        "latency_us": [int(x * 1e6) for x in from_intended],
        "latency_from_sent_us": [int(x * 1e6) for x in from_sent],
        "http_us": [int(x * 1e6) for x in http],
        "loadgen_cpu_s": time.process_time() - cpu0,
    }


# --------------------------------------------------------------------------------------------
# The servers and processes: nats-server, PostgreSQL, consumers, facade, baseline, workers.
# --------------------------------------------------------------------------------------------


class Stack(Bench):
    """bench.runtime's Bench (process spawning, RSS/CPU sampling, pg_stat_statements, clean stop),
    set up for executions: the consumers of every domain, the facade, and either the executions
    baseline or worker pools."""

    module = "bench.executions"

    def __init__(self, args: argparse.Namespace, *, baseline: bool, workers: int = 0) -> None:
        super().__init__(args)
        self.with_baseline = baseline
        self.workers = workers
        self.facade_port = 0
        self.baseline_port = 0
        self.worker_procs: list[subprocess.Popen[bytes]] = []
        self.metrics_ports: dict[str, int] = {}

    def noetl_cli(self) -> list[str]:
        cli = Path(sys.executable).parent / "noetl"
        return [str(cli)] if cli.exists() else [sys.executable, "-m", "noetl.cli"]

    def start(self) -> None:
        from noetl.embedded import free_port

        args = self.args
        self.start_servers()

        bus_env = self.base_env() | {"NOETL_NATS_URL": self.nats_url}
        consumer_env = bus_env | {"NOETL_PG_DSN": self.dsn}
        names = args.consumers.split(",")
        # One process running every consumer (the documented command), or one process each.
        groups = [names] if args.consumer_layout == "one" else [[n] for n in names]
        for i in range(args.consumer_procs):
            for group in groups:
                label = "consumer" if len(groups) == 1 else f"consumer-{group[0]}"
                label += "" if i == 0 else f"{i + 1}"
                argv = [
                    *self.noetl_cli(),
                    "--log-level",
                    "warning",
                    "consumer",
                    *group,
                    *self.metrics(i, label),
                ]
                self.spawn(label, argv, consumer_env)
        self.facade_port = free_port()
        self.uvicorn("facade", "noetl.facade.app:create_app", self.facade_port, bus_env)
        if self.with_baseline:
            self.baseline_port = free_port()
            self.uvicorn(
                "baseline",
                "bench.baseline_executions:create_app",
                self.baseline_port,
                self.base_env()
                | {"BENCH_BASELINE_DSN": self.dsn, "BENCH_BASELINE_POOL_SIZE": str(args.baseline_pool)},
            )
        for i in range(self.workers):
            argv = [
                *self.noetl_cli(),
                "--log-level",
                "warning",
                "worker",
                "--name",
                f"bench-w{i + 1}",
                "--runtime",
                "python",
                "--capacity",
                str(args.capacity),
                *self.metrics(i, f"worker{i + 1}"),
            ]
            self.worker_procs.append(self.spawn(f"worker{i + 1}", argv, bus_env))
        self.sampler.track("orchestrator", os.getpid())
        self.sampler.start()
        self.wait_http(self.facade_port, "/ready", "facade")
        if self.with_baseline:
            self.wait_http(self.baseline_port, "/health", "baseline")

    def metrics(self, copy: int, label: str) -> list[str]:
        """With `--metrics-compare`, copies 0, 2, ... serve metrics (on a port kept by label) and
        1, 3, ... do not: the two halves share the same work in the same run, so their CPU per
        unit of it is the cost."""
        if not getattr(self.args, "metrics_compare", False) or copy % 2:
            return []
        from noetl.embedded import free_port

        self.metrics_ports[label] = free_port()
        return ["--metrics-port", str(self.metrics_ports[label])]

    # -- helpers ----------------------------------------------------------------------------

    def run_role(self, role: str, extra: list[str], timeout: float) -> dict[str, Any]:
        """Run a load generator of this module to completion and return the JSON it prints."""
        argv = [sys.executable, "-m", self.module, "--role", role, *extra]
        proc = child(argv, cwd=ROOT, env=self.base_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.children.append(proc)
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            raise RuntimeError(f"{role} did not finish within {timeout:.0f}s") from None
        except BaseException:  # interrupted (Ctrl-C, SIGTERM): the load stops with us
            proc.kill()
            proc.wait()
            raise
        finally:
            self.children.remove(proc)
        if proc.returncode != 0:
            raise RuntimeError(f"{role} failed ({proc.returncode}): {err.decode()[-3000:]}")
        return json.loads(out.decode().strip().splitlines()[-1])

    def register_playbook(self, text: str, timeout: float = 60) -> dict[str, Any]:
        """Register through the facade, retrying while the consumers are still starting."""
        import httpx

        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            try:
                r = httpx.post(
                    f"http://{HOST}:{self.facade_port}{REGISTER_PATH}", json={"content": text}, timeout=10
                )
                if r.status_code == 200:
                    return r.json()
                last = f"{r.status_code} {r.text[:300]}"
            except httpx.HTTPError as exc:
                last = repr(exc)
            time.sleep(0.5)
        raise RuntimeError(f"could not register the playbook: {last}")

    def sql(self, query: str, params: Any = None) -> list[tuple[Any, ...]]:
        import psycopg

        with psycopg.connect(self.dsn, autocommit=True) as conn:
            cur = conn.execute(query, params)
            return cur.fetchall() if cur.description else []

    def db_snapshot(self) -> dict[str, Any]:
        async def go() -> dict[str, Any]:
            import psycopg

            async with await psycopg.AsyncConnection.connect(self.dsn, autocommit=True) as conn:
                snap = await db_snapshot(conn)
                cur = await conn.execute(
                    f"SELECT /* {MARK} */ relname, n_tup_ins FROM pg_stat_user_tables "
                    "WHERE relname IN ('executions', 'baseline_executions', 'events', 'baseline_events', "
                    "'jobs')"
                )
                snap["inserted"] = dict(await cur.fetchall())
                return snap

        return asyncio.run(go())

    def settle(self, *, purge_jobs: bool, checkpoint: bool, timeout: float = 120) -> dict[str, Any]:
        """Wait until no command is pending and the outbox is empty; then purge the jobs stream
        (when no worker runs) and CHECKPOINT, so each run starts from the same state."""

        async def go() -> dict[str, Any]:
            import nats
            import psycopg

            from noetl.bus import subjects

            t0 = time.perf_counter()
            nc = await nats.connect(servers_of(self.nats_url))
            js = nc.jetstream()
            pending = unpublished = -1
            try:
                async with await psycopg.AsyncConnection.connect(self.dsn, autocommit=True) as conn:
                    while time.perf_counter() - t0 < timeout:
                        ci = await js.consumer_info(subjects.COMMANDS_STREAM, EXECUTION_DURABLE)
                        pending = ci.num_pending + ci.num_ack_pending
                        cur = await conn.execute(f"SELECT /* {MARK} */ count(*) FROM outbox")
                        row = await cur.fetchone()
                        unpublished = int(row[0]) if row else 0
                        if pending == 0 and unpublished == 0:
                            break
                        await asyncio.sleep(0.1)
                    drained = time.perf_counter() - t0
                    if purge_jobs:
                        await js.purge_stream(subjects.JOBS_STREAM)
                    if checkpoint:
                        await conn.execute(f"CHECKPOINT /* {MARK} */")
            finally:
                await nc.close()
            return {"drain_s": round(drained, 3), "pending": pending, "unpublished": unpublished}

        return asyncio.run(go())

    def wait_ready_consumers(self, timeout: float = 60) -> None:
        """Every consumer process has a pull request waiting on the execution durable."""

        async def go() -> None:
            import nats

            from noetl.bus import subjects

            nc = await nats.connect(servers_of(self.nats_url))
            js = nc.jetstream()
            deadline = time.monotonic() + timeout
            try:
                while time.monotonic() < deadline:
                    try:
                        ci = await js.consumer_info(subjects.COMMANDS_STREAM, EXECUTION_DURABLE)
                        if ci.num_waiting >= self.args.consumer_procs:
                            return
                    except Exception:
                        pass
                    await asyncio.sleep(0.2)
                raise TimeoutError("the execution consumer did not start")
            finally:
                await nc.close()

        asyncio.run(go())

    def measure(self, label: str, run: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        """Run `run()`, with the CPU of every process and the database's counters around it."""
        cpu0, db0, t0 = self.sampler.cpu(), self.db_snapshot(), time.perf_counter()
        res = run()
        cpu1, db1, t1 = self.sampler.cpu(), self.db_snapshot(), time.perf_counter()
        used = fold_cpu(cpu_delta(cpu0, cpu1))
        host = split_host(used, res.get("loadgen_cpu_s", 0.0), t1 - t0)  # pops the host's figure
        ctx = {
            "label": label,
            "seconds": t1 - t0,
            "cpu_s": used,
            "host": host,
            "db0": db0,
            "db1": db1,
        }
        return res, ctx

    # -- profiling ------------------------------------------------------------------------------

    PROFILED = ("consumer", "consumer-execution", "consumer-outbox", "facade", "worker1")

    def profile_start(self, out_dir: str | None, seconds: float, name: str) -> list[tuple[str, Any, Path]]:
        """py-spy (raw collapsed stacks) on the consumer(s), the facade and the first worker."""
        if not out_dir:
            return []
        spy = Path(sys.executable).parent / "py-spy"
        stamp = time.strftime("%Y%m%d-%H%M%S")
        spies = []
        for label in self.PROFILED:
            proc = self.sampler.procs.get(label)
            if proc is None:
                continue
            path = Path(out_dir) / f"{name}-{label}-{stamp}.txt"
            path.parent.mkdir(parents=True, exist_ok=True)
            argv = [str(spy), "record", "--pid", str(proc.pid), "--duration", str(int(seconds))]
            argv += ["--rate", "100", "--format", "raw", "--nonblocking", "--output", str(path)]
            spies.append((label, child(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL), path))
        return spies

    def profile_finish(self, spies: list[tuple[str, Any, Path]], seconds: float) -> dict[str, Any]:
        found: dict[str, Any] = {}
        for label, proc, path in spies:
            try:
                proc.wait(timeout=seconds + 30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            if path.exists():
                found[label] = {"file": str(path), "top": top_frames(path)}
        return found


PROJECT_FILES = (
    "consumers/",
    "store/",
    "bus/",
    "facade/",
    "worker/",
    "contracts/",
    "playbook.py",
    "templates.py",
)
IDLE_LEAVES = ("select (selectors.py", "EpollSelector.select", "run_forever")


def top_frames(path: Path, n: int = 10) -> dict[str, Any]:
    """From py-spy's raw (collapsed) output, with samples waiting for I/O left out: the busy
    share, the functions where the time is spent (self), and the project's own functions that
    the time is spent under (inclusive). Line numbers are dropped so a function counts once."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = busy = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        c = int(count)
        total += c
        frames = [f.rsplit(":", 1)[0] + ")" if ":" in f else f for f in stack.split(";")]
        if not frames or any(idle in frames[-1] for idle in IDLE_LEAVES):
            continue
        busy += c
        own[frames[-1]] += c
        for frame in set(frames):
            if any(f"({p}" in frame for p in PROJECT_FILES):
                inclusive[frame] += c
    if not busy:
        return {"busy_share": 0.0, "self": [], "project_inclusive": []}
    return {
        "busy_share": round(busy / total, 3),
        "self": [(f, round(c / busy, 3)) for f, c in own.most_common(n)],
        "project_inclusive": [(f, round(c / busy, 3)) for f, c in inclusive.most_common(n)],
    }


def render_profile(profile: dict[str, Any]) -> list[str]:
    lines = []
    for label, p in profile.items():
        top = p["top"]
        lines.append(f"   {label}: busy {top['busy_share'] * 100:.0f}% of samples ({p['file']})")
        lines += [f"     self {share * 100:5.1f}%  {frame[:96]}" for frame, share in top["self"][:8]]
        lines += [f"     incl {share * 100:5.1f}%  {frame[:96]}" for frame, share in top["project_inclusive"]]
    return lines


def fold_cpu(used: dict[str, float]) -> dict[str, float]:
    """Sandbox children (tracked one by one) summed as `sandboxes`."""
    out: dict[str, float] = {}
    for label, value in used.items():
        key = "sandboxes" if label.startswith("sandbox") else label
        out[key] = round(out.get(key, 0.0) + value, 3)
    return out


def inserted(ctx: dict[str, Any], table: str) -> int:
    return int(ctx["db1"]["inserted"].get(table, 0) - ctx["db0"]["inserted"].get(table, 0))


def ms(values_us: list[int], q: float) -> float | None:
    v = percentile(values_us, q)
    return None if v is None else v / 1000


# --------------------------------------------------------------------------------------------
# The orchestrator.
# --------------------------------------------------------------------------------------------


class ExecutionsBench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.stack = Stack(args, baseline=True)
        self.profile: dict[str, Any] | None = None

    def accept_run(self, app: str, duration: float, warmup: float) -> dict[str, Any]:
        args, st = self.args, self.stack
        port = st.facade_port if app == "facade" else st.baseline_port
        extra = [
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
            "--playbook",
            self.path,
        ]
        return st.run_role("accept-load", extra, timeout=duration + warmup + 60)

    def check_shapes(self) -> dict[str, list[str]]:
        """Both apps answer a run with the same keys."""
        import httpx

        shapes = {}
        for app, port in (("facade", self.stack.facade_port), ("baseline", self.stack.baseline_port)):
            r = httpx.post(f"http://{HOST}:{port}{RUN_PATH}", json={"path": self.path}, timeout=10)
            if r.status_code != 200 or not shape_ok(r.content):
                raise RuntimeError(f"{app} answered {r.status_code}: {r.text[:500]}")
            shapes[app] = sorted(r.json())
        if shapes["facade"] != shapes["baseline"]:
            raise RuntimeError(f"response shapes differ: {shapes}")
        return shapes

    def acceptance(self) -> dict[str, Any]:
        args, st = self.args, self.stack
        st.sampler.phase = "acceptance"
        log("acceptance: warm-up run on each app (not counted)")
        for app in ("facade", "baseline"):
            st.settle(purge_jobs=True, checkpoint=False)
            self.accept_run(app, duration=args.warmup, warmup=0.5)
        runs = []
        for r in range(args.rounds):
            order = ("facade", "baseline") if r % 2 == 0 else ("baseline", "facade")
            for app in order:
                settled = st.settle(purge_jobs=True, checkpoint=args.checkpoint)

                def go(app: str = app) -> dict[str, Any]:
                    return self.accept_run(app, duration=args.duration, warmup=args.warmup)

                profiling = args.profile and app == "facade" and r == 0
                spies = (
                    st.profile_start(args.profile, args.profile_seconds, "executions") if profiling else []
                )
                res, ctx = st.measure(app, go)
                if spies:
                    self.profile = st.profile_finish(spies, args.profile_seconds)
                res.update(app=app, round=r, settle_before=settled)
                total = res["completed_total"] or 1
                res["cpu_ms_per_request"] = {k: round(v * 1000 / total, 3) for k, v in ctx["cpu_s"].items()}
                res["cpu_ms_per_request"]["loadgen"] = round(res["loadgen_cpu_s"] * 1000 / total, 3)
                res["host"] = ctx["host"]
                res["db"] = db_delta(ctx["db0"], ctx["db1"], ctx["seconds"], per=total)
                table = "executions" if app == "facade" else "baseline_executions"
                res["rows_inserted"] = inserted(ctx, table)
                lat = res["latencies_us"]
                res["p50_ms"], res["p99_ms"] = ms(lat, 50), ms(lat, 99)
                log(
                    f"  round {r + 1}/{args.rounds} {app:8s} {res['throughput']:8.1f} exec/s  "
                    f"p50 {res['p50_ms']:.1f} ms  p99 {res['p99_ms']:.1f} ms  statuses {res['statuses']}  "
                    f"other load {res['host']['other_cores']:.2f} cores"
                )
                runs.append(res)
        summary: dict[str, Any] = {}
        for app in ("facade", "baseline"):
            mine = [x for x in runs if x["app"] == app]
            lat = [v for x in mine for v in x["latencies_us"]]
            window = sum(x["window_s"] for x in mine)
            keys = set().union(*(x["cpu_ms_per_request"] for x in mine))
            summary[app] = {
                "throughput": sum(x["ok"] for x in mine) / window,
                "per_round": [round(x["throughput"], 1) for x in mine],
                "p50_ms": ms(lat, 50),
                "p90_ms": ms(lat, 90),
                "p99_ms": ms(lat, 99),
                "max_ms": max(lat, default=0) / 1000,
                "requests": len(lat),
                "non_200": sum(v for x in mine for k, v in x["statuses"].items() if k != "200"),
                "client_errors": sum(sum(x["errors"].values()) for x in mine),
                "shape_errors": sum(x["shape_errors"] for x in mine),
                "cpu_ms_per_request": {
                    k: round(sum(x["cpu_ms_per_request"].get(k, 0) for x in mine) / len(mine), 3)
                    for k in sorted(keys)
                },
                "other_cores": mean_of(x["host"]["other_cores"] for x in mine),
                "db_statements_per_request": mean_of(x["db"].get("statements_per_unit") for x in mine),
                "db_xact_per_request": mean_of(x["db"].get("xact_per_unit") for x in mine),
                "rows_inserted": sum(x["rows_inserted"] for x in mine),
                "drain_after_s": None,
            }
        # How long the facade's side needed after a run to relay its events (measured before the
        # next run, which waits for it).
        drains = [
            runs[i + 1]["settle_before"]["drain_s"]
            for i in range(len(runs) - 1)
            if runs[i]["app"] == "facade"
        ]
        summary["facade"]["drain_after_s"] = max(drains, default=None)
        f, b = summary["facade"], summary["baseline"]
        summary["ratio"] = f["throughput"] / b["throughput"] if b["throughput"] else None
        summary["pass"] = bool(summary["ratio"] and summary["ratio"] >= 1.3 and f["non_200"] == 0)
        for x in runs:
            del x["latencies_us"]
        return {"runs": runs, "summary": summary}

    def start_latency(self) -> dict[str, Any]:
        args, st = self.args, self.stack
        st.sampler.phase = "latency"
        settled = st.settle(purge_jobs=True, checkpoint=args.checkpoint)
        extra = [
            "--port",
            str(st.facade_port),
            "--nats-url",
            st.nats_url,
            "--rate",
            str(args.latency_rate),
            "--duration",
            str(args.latency_duration),
            "--connections",
            str(args.latency_connections),
            "--drain",
            "10",
            "--max-requests",
            str(args.max_requests),
            "--playbook",
            self.path,
        ]

        def go() -> dict[str, Any]:
            return st.run_role("start-latency", extra, timeout=args.latency_duration + 90)

        log(f"start latency: {args.latency_rate}/s for {args.latency_duration:g} s to the facade")
        res, ctx = st.measure("latency", go)
        n = max(1, len(res["latency_us"]))
        res["settle_before"] = settled
        res["host"] = ctx["host"]
        res["cpu_cores"] = {k: round(v / ctx["seconds"], 3) for k, v in ctx["cpu_s"].items()}
        res["db"] = db_delta(ctx["db0"], ctx["db1"], ctx["seconds"], per=n)
        lat = res.pop("latency_us")
        sent = res.pop("latency_from_sent_us")
        http = res.pop("http_us")
        # An execution whose event never came counts as infinitely late.
        res["p50_ms"] = ms(lat + [10**12] * res["events_missing"], 50)
        res["p90_ms"] = ms(lat + [10**12] * res["events_missing"], 90)
        res["p99_ms"] = ms(lat + [10**12] * res["events_missing"], 99)
        res["max_ms"] = max(lat, default=0) / 1000
        res["from_sent_p50_ms"], res["from_sent_p99_ms"] = ms(sent, 50), ms(sent, 99)
        res["http_p50_ms"], res["http_p99_ms"] = ms(http, 50), ms(http, 99)
        res["samples"] = len(lat)
        res["pass"] = bool(res["p99_ms"] is not None and res["p99_ms"] < 50 and res["events_missing"] == 0)
        log(
            f"  p50 {res['p50_ms']:.1f} ms  p99 {res['p99_ms']:.1f} ms  "
            f"(HTTP p50 {res['http_p50_ms']:.1f} ms, p99 {res['http_p99_ms']:.1f} ms)  "
            f"missing {res['events_missing']}  statuses {res['statuses']}"
        )
        return res

    def run(self) -> dict[str, Any]:
        args, st = self.args, self.stack
        started = datetime.now(UTC)
        st.start()
        st.wait_ready_consumers()
        registered = st.register_playbook(HELLO.read_text())
        self.path = registered["path"]
        log(f"registered {self.path} version {registered['version']}")
        result: dict[str, Any] = {
            "started": started.isoformat(),
            "mode": "quick" if args.quick else "full",
            "command": " ".join([Path(sys.executable).name, "-m", "bench.executions", *sys.argv[1:]]),
            "config": {k: v for k, v in vars(args).items() if k != "role"},
            "environment": environment(),
            "playbook": self.path,
            "shapes": self.check_shapes(),
        }
        if not args.skip_acceptance:
            result["acceptance"] = self.acceptance()
        if self.profile:
            result["profile"] = self.profile
        if not args.skip_latency:
            result["start_latency"] = self.start_latency()
        result["dead_letters"] = st.sql(f"SELECT /* {MARK} */ count(*) FROM dead_letters")[0][0]
        result["peak_rss_mb"] = {
            phase: {k: round(v / 2**20, 1) for k, v in sorted(peaks.items())}
            for phase, peaks in st.sampler.peaks.items()
            if phase in ("acceptance", "latency")
        }
        result["finished"] = datetime.now(UTC).isoformat()
        return result


def _num(v: float | None, fmt: str = "8.1f") -> str:
    return "n/a".rjust(len(format(0.0, fmt))) if v is None else format(v, fmt)


# --------------------------------------------------------------------------------------------
# The table.
# --------------------------------------------------------------------------------------------


def render(result: dict[str, Any]) -> str:
    lines: list[str] = []
    add = lines.append
    env = result["environment"]
    cfg = result["config"]
    add("")
    add(f"NoETL executions benchmark ({result['mode']}), {env['cpus']} CPUs, Python {env['python']}")
    add(f"command: {result['command']}")
    add(f"playbook: {result['playbook']} (no worker pool: jobs wait in NOETL_JOBS, purged between runs)")
    acc = result.get("acceptance")
    if acc:
        s = acc["summary"]
        add("")
        add(
            f"1. Acceptance: POST {RUN_PATH}, {cfg['clients']} keep-alive clients, "
            f"{cfg['rounds']} rounds x {cfg['duration']:g} s per app, alternating"
        )
        add(
            f"   {'':22s} {'exec/s':>9s} {'p50 ms':>8s} {'p99 ms':>8s} {'max ms':>8s} {'non-200':>8s}"
            f" {'stmt/exec':>9s} {'xact/exec':>9s} {'other load':>10s}   per round"
        )
        for app, title in (("facade", "facade (bus)"), ("baseline", "baseline (direct SQL)")):
            x = s[app]
            add(
                f"   {title:22s} {x['throughput']:9,.1f} {_num(x['p50_ms'])} {_num(x['p99_ms'])} "
                f"{x['max_ms']:8.1f} {x['non_200']:8d} {_num(x['db_statements_per_request'], '9.2f')} "
                f"{_num(x['db_xact_per_request'], '9.3f')} {_num(x['other_cores'], '10.2f')}   "
                f"{x['per_round']}"
            )
        add(
            f"   ratio facade/baseline: {s['ratio']:.2f}x (target >= 1.30x): "
            f"{'PASS' if s['pass'] else 'MISS'}"
        )
        if s["facade"]["drain_after_s"] is not None:
            add(
                f"   facade: outbox and commands drained {s['facade']['drain_after_s']:.2f} s "
                "after a run (max)"
            )
        add("   CPU ms per accepted execution, by process:")
        for app in ("facade", "baseline"):
            cpu = s[app]["cpu_ms_per_request"]
            parts = ", ".join(
                f"{k} {v:.3f}" for k, v in sorted(cpu.items(), key=lambda kv: -kv[1]) if v >= 0.005
            )
            add(f"     {app:9s} {parts}")
    lat = result.get("start_latency")
    if lat:
        add("")
        add(
            f"2. Start latency: POST to execution_start at a core NATS subscriber, "
            f"{lat['target_rate']}/s for {cfg['latency_duration']:g} s ({lat['samples']} executions)"
        )
        add(f"   {'':22s} {'p50 ms':>8s} {'p90 ms':>8s} {'p99 ms':>8s} {'max ms':>8s}")
        add(
            f"   {'POST -> event':22s} {_num(lat['p50_ms'])} {_num(lat['p90_ms'])} {_num(lat['p99_ms'])} "
            f"{lat['max_ms']:8.1f}"
        )
        add(f"   {'POST -> HTTP 200':22s} {_num(lat['http_p50_ms'])} {'':>8s} {_num(lat['http_p99_ms'])}")
        add(
            f"   achieved {lat['achieved_rate']:.1f}/s, statuses {lat['statuses']}, events missing "
            f"{lat['events_missing']}, sent >5 ms late {lat['sent_late_over_5ms']}, other load "
            f"{lat['host']['other_cores']:.2f} cores"
        )
        add(f"   p99 < 50 ms: {'PASS' if lat['pass'] else 'MISS'}")
        cores = ", ".join(
            f"{k} {v:.2f}" for k, v in sorted(lat["cpu_cores"].items(), key=lambda kv: -kv[1]) if v >= 0.01
        )
        add(f"   CPU cores busy: {cores}")
    rss = result.get("peak_rss_mb")
    if rss:
        add("")
        phases = [p for p in ("acceptance", "latency") if p in rss]
        add("3. Peak RSS (MB)")
        add(f"   {'process':14s}" + "".join(f"{p:>12s}" for p in phases))
        for label in sorted({k for p in phases for k in rss[p]}):
            add(f"   {label:14s}" + "".join(f"{rss[p].get(label, 0):12.1f}" for p in phases))
    if result.get("profile"):
        add("")
        add(
            "4. py-spy during the first facade round: share of busy samples (self; inclusive for the project)"
        )
        lines += render_profile(result["profile"])
    add("")
    add(f"dead letters: {result.get('dead_letters')}")
    add("")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Command line.
# --------------------------------------------------------------------------------------------


def bench_consumers() -> str:
    """Every consumer but the sweeper (liveness is not under test), as `--consumers` takes them."""
    from consumers.process import CONSUMER_NAMES

    return ",".join(name for name in CONSUMER_NAMES if name != "sweeper")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.executions", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="short windows: finishes in under 2 minutes")
    p.add_argument("--data-dir", help="where the servers keep their data (default: a fresh temp dir)")
    p.add_argument("--keep", action="store_true", help="keep the data directory and the logs")
    p.add_argument("--json-out", help="write the JSON here (default bench/results/executions-<time>.json)")
    p.add_argument("--skip-acceptance", action="store_true")
    p.add_argument("--skip-latency", action="store_true")
    g = p.add_argument_group("processes")
    g.add_argument("--consumers", default=bench_consumers(), help="consumers in the consumer process(es)")
    g.add_argument("--consumer-procs", type=int, default=1, help="copies of the consumer process")
    g.add_argument(
        "--consumer-layout",
        choices=["one", "split"],
        default="one",
        help="one: `noetl consumer runtime catalog execution outbox`; split: a process per consumer",
    )
    g.add_argument("--baseline-pool", type=int, default=16, help="the baseline's connection pool size")
    g.add_argument(
        "--no-checkpoint",
        dest="checkpoint",
        action="store_false",
        help="do not CHECKPOINT before each run",
    )
    g = p.add_argument_group("profiling")
    g.add_argument(
        "--profile", metavar="DIR", help="py-spy the consumer and facade in the first facade round"
    )
    g.add_argument("--profile-seconds", type=float, default=10.0)
    g = p.add_argument_group("acceptance")
    g.add_argument("--clients", type=int, default=64, help="concurrent HTTP connections")
    g.add_argument("--rounds", type=int, help="rounds, each app once per round")
    g.add_argument("--duration", type=float, help="measured seconds per app per round")
    g.add_argument("--warmup", type=float, help="unmeasured seconds before each measured window")
    g.add_argument("--max-requests", type=int, default=1_000_000, help="hard cap per run")
    g = p.add_argument_group("start latency")
    g.add_argument("--latency-rate", type=float, default=200.0, help="executions per second")
    g.add_argument("--latency-duration", type=float, help="seconds of sending")
    g.add_argument("--latency-connections", type=int, default=32, help="HTTP connections to send on")
    # Internal: the load generators run as separate processes.
    p.add_argument("--role", choices=["orchestrate", "accept-load", "start-latency"], default="orchestrate")
    p.add_argument("--host", default=HOST, help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, help=argparse.SUPPRESS)
    p.add_argument("--concurrency", type=int, default=64, help=argparse.SUPPRESS)
    p.add_argument("--playbook", default="examples/hello_world", help=argparse.SUPPRESS)
    p.add_argument("--nats-url", help=argparse.SUPPRESS)
    p.add_argument("--rate", type=float, help=argparse.SUPPRESS)
    p.add_argument("--connections", type=int, default=32, help=argparse.SUPPRESS)
    p.add_argument("--drain", type=float, default=10.0, help=argparse.SUPPRESS)
    return p


def apply_mode(args: argparse.Namespace, full: dict[str, Any], quick: dict[str, Any]) -> None:
    for key, value in (quick if args.quick else full).items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)


def write_result(result: dict[str, Any], json_out: str | None, name: str) -> Path:
    out = Path(json_out) if json_out else RESULTS_DIR / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=str))
    return out


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.role == "accept-load":
        install_uvloop()
        print(json.dumps(asyncio.run(accept_load(args))))
        return 0
    if args.role == "start-latency":
        install_uvloop()
        print(json.dumps(asyncio.run(start_latency(args))))
        return 0
    apply_mode(args, FULL, QUICK)
    signal.signal(signal.SIGTERM, raise_on_term)
    bench = ExecutionsBench(args)
    try:
        result = bench.run()
    finally:
        bench.stack.stop()
    out = write_result(result, args.json_out, "executions")
    print(render(result))
    print(f"JSON: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
