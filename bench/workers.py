"""Benchmark of executions run end to end by worker pools.

    python -m bench.workers            # the full run (3,000 executions, about 3 minutes)
    python -m bench.workers --quick    # 500 executions (under 2 minutes)

Everything runs on 127.0.0.1 and is started here: nats-server with JetStream and a durable
PostgreSQL (fsync on), the consumers (`noetl consumer runtime catalog execution outbox`), the
facade (uvicorn running `noetl.facade.app:create_app`, given the bus and no database) and four
worker pools (`noetl worker --runtime python --capacity 8`, each its own process with its own
sandbox children).

A three-step playbook of trivial python steps (start -> one -> two -> three -> end, each step
adding 1 to the previous step's number) is run a bounded number of times by a bounded number of
concurrent clients: each client POSTs /api/executions/run, waits for the execution's
execution_complete (or execution_failed) event on a core NATS subscription, and starts the next.

Reported: executions completed per second end to end, p50/p99 from the POST to
execution_complete, and the dispatch latency of each step (from `dispatched_at` in the step's
step_started event to the time of its action_started event), with where the rest of the time goes.

The table goes to stdout, the whole record to bench/results/workers-<time>.json.
See bench/README.md for what each figure means.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from bench.executions import (
    HTTP_ERRORS,
    HttpConn,
    Stack,
    apply_mode,
    bench_consumers,
    execution_of,
    inserted,
    ms,
    render_profile,
    write_result,
)
from bench.runtime import HOST, MARK, db_delta, environment, install_uvloop, log, raise_on_term
from noetl.settings import servers_of

RUN_PATH = "/api/executions/run"
COMPARED_CONSUMER = "consumer-execution"  # `--metrics-compare`: its copy 1 serves metrics, copy 2 not
PLAYBOOK_PATH = "bench/three_steps"
ENDINGS = ("execution_complete", "execution_failed", "execution_cancelled")
STEPS = ("one", "two", "three")

PLAYBOOK = """\
apiVersion: noetl.io/v1
kind: Playbook
metadata:
  name: three_steps
  path: bench/three_steps
workload:
  n: 0
workflow:
  - step: start
    next:
      - step: one
  - step: one
    type: python
    code: |
      def main(n):
          return {"status": "success", "data": {"n": n + 1}}
    data:
      n: "{{ workload.n }}"
    next:
      - step: two
  - step: two
    type: python
    code: |
      def main(n):
          return {"status": "success", "data": {"n": n + 1}}
    data:
      n: "{{ one.data.n }}"
    next:
      - step: three
  - step: three
    type: python
    code: |
      def main(n):
          return {"status": "success", "data": {"n": n + 1}}
    data:
      n: "{{ two.data.n }}"
    next:
      - step: end
  - step: end
"""

# The loop figure: one execution whose iterator runs a trivial python task per item, async.
LOOP_PATH = "bench/loop"
LOOP_PLAYBOOK = """\
apiVersion: noetl.io/v1
kind: Playbook
metadata:
  name: loop
  path: bench/loop
workload:
  items: 10
workflow:
  - step: start
    next:
      - step: make
  - step: make
    type: python
    data:
      n: "{{ workload.items }}"
    code: |
      def main(n):
          return list(range(n))
    next:
      - step: each
  - step: each
    type: iterator
    mode: async
    concurrency: 64
    collection: "{{ make }}"
    element: i
    task:
      type: python
      data:
        i: "{{ i }}"
      code: |
        def main(i):
            return i * 2
    next:
      - step: end
  - step: end
    result:
      items: "{{ each | length }}"
      last: "{{ each[-1] }}"
"""

FULL = {
    "executions": 3000,
    "warmup_executions": 200,
    "time_limit": 300.0,
    "light_executions": 300,
    "loop_items": 10_000,
}
QUICK = {
    "executions": 500,
    "warmup_executions": 64,
    "time_limit": 75.0,
    "light_executions": 100,
    "loop_items": 2_000,
}


# --------------------------------------------------------------------------------------------
# Role: run-load. Closed loop: each client runs one execution to its end, then the next.
# --------------------------------------------------------------------------------------------


async def run_load(opts: argparse.Namespace) -> dict[str, Any]:
    import nats

    from noetl.bus import subjects

    perf = time.perf_counter
    loop = asyncio.get_running_loop()
    waiting: dict[str, asyncio.Future[tuple[float, str]]] = {}
    early: dict[str, tuple[float, str]] = {}  # events that came before the POST's answer

    async def on_end(msg: Any) -> None:
        t = perf()
        execution_id, event_type = execution_of(msg.subject)
        future = waiting.pop(execution_id, None)
        if future is None:
            early[execution_id] = (t, event_type)
        elif not future.done():
            future.set_result((t, event_type))

    nc = await nats.connect(servers_of(opts.nats_url), max_reconnect_attempts=3)
    for ending in ENDINGS:
        await nc.subscribe(subjects.execution_events(None, ending), cb=on_end)
    await nc.flush()

    start = perf()
    end = start + opts.time_limit
    # (POST sent, HTTP answered, ended, n given, execution id, how it ended) relative to start
    records: list[tuple[float, float, float | None, int, str, str]] = []
    statuses: Counter[int] = Counter()
    errors: Counter[str] = Counter()
    state = {"issued": 0}
    cpu0 = time.process_time()

    async def client(cid: int) -> None:
        conn = HttpConn(opts.host, opts.port, RUN_PATH)
        while perf() < end:
            i = state["issued"]
            if i >= opts.executions:
                break
            state["issued"] += 1
            body = json.dumps({"path": opts.playbook, "parameters": {"n": i}}).encode()
            t0 = perf()
            try:
                status, data = await conn.post(body)
            except HTTP_ERRORS as exc:
                errors[exc.__class__.__name__] += 1
                await asyncio.sleep(0.05)
                continue
            t1 = perf()
            statuses[status] += 1
            if status != 200:
                continue
            execution_id = json.loads(data)["execution_id"]
            ended = early.pop(execution_id, None)
            if ended is None:
                future = loop.create_future()
                waiting[execution_id] = future
                try:
                    ended = await asyncio.wait_for(future, max(0.1, min(opts.exec_timeout, end - perf())))
                except TimeoutError:
                    waiting.pop(execution_id, None)
            t2, how = ended if ended is not None else (None, "timeout")
            records.append((t0 - start, t1 - start, None if t2 is None else t2 - start, i, execution_id, how))
        conn.close()

    await asyncio.gather(*(client(c) for c in range(opts.concurrency)))
    await nc.close()
    return {
        "requested": opts.executions,
        "concurrency": opts.concurrency,
        "issued": state["issued"],
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "errors": dict(errors),
        "records": records,
        "loadgen_cpu_s": time.process_time() - cpu0,
    }


# --------------------------------------------------------------------------------------------
# The orchestrator.
# --------------------------------------------------------------------------------------------


class WorkersBench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.stack = Stack(args, baseline=False, workers=args.workers)
        self.stack.module = "bench.workers"

    def wait_workers(self, timeout: float = 90) -> None:
        """Every pool registered and ready, and each has a pull request waiting for jobs."""

        async def go() -> None:
            import nats

            from noetl.bus import subjects

            nc = await nats.connect(servers_of(self.stack.nats_url))
            js = nc.jetstream()
            deadline = time.monotonic() + timeout
            ready = waiting = 0
            try:
                while time.monotonic() < deadline:
                    for proc in self.stack.worker_procs:
                        if proc.poll() is not None:
                            raise RuntimeError(f"a worker exited (logs in {self.stack.logdir})")
                    rows = self.stack.sql(
                        f"SELECT /* {MARK} */ count(*) FROM runtime_components "
                        "WHERE kind = 'worker_pool' AND name LIKE 'bench-w%%' AND status = 'ready'"
                    )
                    ready = rows[0][0]
                    try:
                        waiting = (await js.consumer_info(subjects.JOBS_STREAM, "jobs-python")).num_waiting
                    except Exception:
                        waiting = 0
                    if ready >= self.args.workers and waiting >= self.args.workers:
                        return
                    await asyncio.sleep(0.2)
                raise TimeoutError(f"worker pools not ready: {ready} registered, {waiting} pulling")
            finally:
                await nc.close()

        asyncio.run(go())

    def load(self, executions: int, concurrency: int) -> dict[str, Any]:
        args, st = self.args, self.stack
        extra = [
            "--port",
            str(st.facade_port),
            "--nats-url",
            st.nats_url,
            "--executions",
            str(executions),
            "--concurrency",
            str(concurrency),
            "--time-limit",
            str(args.time_limit),
            "--exec-timeout",
            str(args.exec_timeout),
            "--playbook",
            PLAYBOOK_PATH,
        ]
        return st.run_role("run-load", extra, timeout=args.time_limit + 60)

    def track_sandboxes(self) -> int:
        """The sandbox children the warm-up made: their CPU and RSS count as the workers'."""
        import psutil

        n = 0
        for i, proc in enumerate(self.stack.worker_procs):
            try:
                children = psutil.Process(proc.pid).children(recursive=True)
            except psutil.Error:
                continue
            for child in children:
                self.stack.sampler.track(f"sandbox-w{i + 1}-{child.pid}", child.pid)
                n += 1
        return n

    def analyse(self, ids: list[int]) -> dict[str, Any]:
        """Per-step figures from the events table, for the measured executions only."""
        st = self.stack
        # A step's events name its step_started as their parent: dispatch is the time from that
        # event (the broker's clock) to action_started (the worker's, when the attempt began).
        rows = st.sql(
            f"""
            SELECT /* {MARK} */ s.payload->>'node_name',
                   extract(epoch FROM a.created_at - s.created_at),
                   extract(epoch FROM c.created_at - a.created_at)
            FROM events s
            JOIN events a ON a.type = 'action_started' AND a.payload->>'parent_event_id' = s.event_id::text
            LEFT JOIN events c
                ON c.type = 'step_completed' AND c.payload->>'parent_event_id' = s.event_id::text
            WHERE s.type = 'step_started' AND s.entity->>'domain' = 'execution'
              AND s.payload->>'node_type' = 'python'
              AND (s.entity->>'execution_id')::bigint = ANY(%s)
            """,
            (ids,),
        )
        per_step: dict[str, dict[str, list[int]]] = {}
        for step, dispatch, run in rows:
            d = per_step.setdefault(step, {"dispatch": [], "run": []})
            d["dispatch"].append(int(float(dispatch) * 1e6))
            if run is not None:
                d["run"].append(int(float(run) * 1e6))
        everything = [v for d in per_step.values() for v in d["dispatch"]]
        out: dict[str, Any] = {
            "dispatch": summary_ms(everything),
            "steps": {
                step: {"dispatch": summary_ms(d["dispatch"]), "started_to_completed": summary_ms(d["run"])}
                for step, d in sorted(
                    per_step.items(), key=lambda kv: STEPS.index(kv[0]) if kv[0] in STEPS else 9
                )
            },
        }
        # The execution's own record: time from the POST's transaction to its end in the store.
        spans = st.sql(
            f"SELECT /* {MARK} */ extract(epoch FROM end_time - start_time), status FROM executions "
            "WHERE execution_id = ANY(%s)",
            (ids,),
        )
        out["store_start_to_end"] = summary_ms([int(float(s) * 1e6) for s, _ in spans if s is not None])
        out["store_status"] = dict(Counter(status for _, status in spans))
        attempts = st.sql(
            f"SELECT /* {MARK} */ count(*) FILTER (WHERE delivery > 1), count(*) FILTER (WHERE attempt > 1), "
            "count(*) FROM jobs WHERE execution_id = ANY(%s)",
            (ids,),
        )[0]
        out["jobs"] = {"redelivered": attempts[0], "retried": attempts[1], "total": attempts[2]}
        return out

    def check_results(self, records: list[list[Any]], sample: int = 20) -> dict[str, Any]:
        """A few completed executions read back through the facade: result n = given n + 3."""
        import httpx

        done = [r for r in records if r[5] == "execution_complete"]
        step = max(1, len(done) // sample)
        checked = bad = 0
        for r in done[::step][:sample]:
            doc = httpx.get(
                f"http://{HOST}:{self.stack.facade_port}/api/executions/{r[4]}", timeout=10
            ).json()
            checked += 1
            result = doc.get("result") or {}
            ok = doc.get("status") == "completed" and (result.get("data") or {}).get("n") == r[3] + 3
            bad += not ok
        return {"checked": checked, "wrong": bad}

    def run(self) -> dict[str, Any]:
        args, st = self.args, self.stack
        started = datetime.now(UTC)
        st.start()
        st.wait_ready_consumers()
        registered = st.register_playbook(PLAYBOOK)
        log(f"registered {registered['path']} version {registered['version']}")
        self.wait_workers()
        log(f"{args.workers} worker pools ready, capacity {args.capacity} each")
        result: dict[str, Any] = {
            "started": started.isoformat(),
            "mode": "quick" if args.quick else "full",
            "command": " ".join([Path(sys.executable).name, "-m", "bench.workers", *sys.argv[1:]]),
            "config": {k: v for k, v in vars(args).items() if k != "role"},
            "environment": environment(),
            "playbook": PLAYBOOK,
        }
        st.sampler.phase = "warmup"
        log(f"warm-up: {args.warmup_executions} executions (not counted)")
        warm = self.load(args.warmup_executions, args.concurrency)
        result["warmup"] = {
            "completed": sum(1 for r in warm["records"] if r[5] == "execution_complete"),
            "statuses": warm["statuses"],
        }
        result["sandboxes"] = self.track_sandboxes()
        st.settle(purge_jobs=False, checkpoint=args.checkpoint)

        st.sampler.phase = "run"
        log(f"run: {args.executions} executions, {args.concurrency} at a time")
        spies = st.profile_start(
            args.profile if args.profile_phase == "run" else None, args.profile_seconds, "workers"
        )
        applied_before = self.applied() if args.metrics_compare else {}
        res, ctx = st.measure("run", lambda: self.load(args.executions, args.concurrency))
        applied = (
            {k: v - applied_before.get(k, 0) for k, v in self.applied().items()}
            if args.metrics_compare
            else {}
        )
        if spies:
            result["profile"] = st.profile_finish(spies, args.profile_seconds)
        res_records = list(res["records"])
        result["run"] = self.summarise(res, ctx)
        result["run"]["pass"] = bool(
            result["run"]["throughput"] >= 100 and result["run"]["failed"] == result["run"]["timed_out"] == 0
        )
        if args.metrics_compare:
            result["metrics_cost"] = self.metrics_cost(ctx, [int(r[4]) for r in res_records], applied)
        if args.light_executions > 0:
            st.settle(purge_jobs=False, checkpoint=False)
            st.sampler.phase = "light"
            log(f"light load: {args.light_executions} executions, {args.light_concurrency} at a time")
            res, ctx = st.measure("light", lambda: self.load(args.light_executions, args.light_concurrency))
            result["light"] = self.summarise(res, ctx)
        if args.loop_items > 0:
            st.settle(purge_jobs=False, checkpoint=False)
            st.register_playbook(LOOP_PLAYBOOK)
            st.sampler.phase = "loop"
            log(f"loop: one iterator over {args.loop_items} items, async, 64 at once")
            spies = st.profile_start(
                args.profile if args.profile_phase == "loop" else None, args.profile_seconds, "loop"
            )
            res, ctx = st.measure("loop", lambda: self.run_loop(args.loop_items))
            if spies:
                result["profile"] = st.profile_finish(spies, args.profile_seconds)
            result["loop"] = self.summarise_loop(res, ctx)
        result["jobs_left"] = self.jobs_left()
        result["dead_letters"] = st.sql(f"SELECT /* {MARK} */ count(*) FROM dead_letters")[0][0]
        result["peak_rss_mb"] = {
            phase: fold_rss(peaks)
            for phase, peaks in st.sampler.peaks.items()
            if phase in ("warmup", "run", "light", "loop")
        }
        result["finished"] = datetime.now(UTC).isoformat()
        return result

    def applied(self) -> dict[str, int]:
        """Execution commands applied so far: in all (the store's record of each), and by the
        execution consumer's copy that serves metrics (its own count)."""
        total = self.stack.sql(
            f"SELECT /* {MARK} */ count(*) FROM processed_commands WHERE type LIKE 'execution.%'"
        )[0][0]
        port = self.stack.metrics_ports[COMPARED_CONSUMER]
        text = httpx.get(f"http://{HOST}:{port}/metrics", timeout=10).text
        mine = sum(
            sample.value
            for family in text_string_to_metric_families(text)
            if family.name == "noetl_commands"
            for sample in family.samples
            if sample.name == "noetl_commands_total" and sample.labels.get("outcome") in ("applied", "failed")
        )
        return {"total": int(total), "on": int(mine)}

    def metrics_cost(self, ctx: dict[str, Any], ids: list[int], applied: dict[str, int]) -> dict[str, Any]:
        """CPU of the copies serving metrics against those that do not, in the measured run:
        workers per job they ran (each job names its pool, `<name>@<host>:<pid>`), the two copies
        of the execution consumer per command each applied."""
        jobs = dict(
            self.stack.sql(
                f"SELECT /* {MARK} */ split_part(worker, '@', 1), count(*) FROM jobs "
                "WHERE execution_id = ANY(%s) GROUP BY 1",
                (ids,),
            )
        )
        cpu = ctx["cpu_s"]

        def per_job(copies: range) -> float | None:
            ran = sum(jobs.get(f"bench-w{i + 1}", 0) for i in copies)
            used = sum(cpu.get(f"worker{i + 1}", 0.0) for i in copies)
            return used * 1000 / ran if ran else None

        n = self.args.workers
        on, off = per_job(range(0, n, 2)), per_job(range(1, n, 2))
        commands_on, commands_off = applied["on"], applied["total"] - applied["on"]
        consumer_on = cpu.get(COMPARED_CONSUMER, 0.0) * 1000 / commands_on if commands_on else None
        consumer_off = cpu.get(f"{COMPARED_CONSUMER}2", 0.0) * 1000 / commands_off if commands_off else None
        cost = {
            "worker_cpu_ms_per_job": {"on": _r(on), "off": _r(off)},
            "worker_ratio": round(on / off, 3) if on and off else None,
            "consumer_cpu_ms_per_command": {"on": _r(consumer_on), "off": _r(consumer_off)},
            "consumer_commands": {"on": commands_on, "off": commands_off},
            "consumer_ratio": round(consumer_on / consumer_off, 3) if consumer_on and consumer_off else None,
        }
        log(f"  metrics on/off: workers {cost['worker_ratio']}x CPU/job, consumers {cost['consumer_ratio']}x")
        return cost

    def summarise(self, res: dict[str, Any], ctx: dict[str, Any]) -> dict[str, Any]:
        records = res.pop("records")
        done = [r for r in records if r[5] == "execution_complete"]
        ends = sorted(r[2] for r in done)
        first_post = min((r[0] for r in records), default=0.0)
        span = (ends[-1] - first_post) if ends else 0.0
        n = len(done)
        lo, hi = int(n * 0.1), int(n * 0.9) - 1
        steady = (hi - lo) / (ends[hi] - ends[lo]) if n >= 20 and ends[hi] > ends[lo] else None
        seconds = ctx["seconds"]
        summary: dict[str, Any] = {
            "concurrency": res["concurrency"],
            "completed": n,
            "failed": sum(1 for r in records if r[5] == "execution_failed"),
            "cancelled": sum(1 for r in records if r[5] == "execution_cancelled"),
            "timed_out": sum(1 for r in records if r[5] == "timeout"),
            "statuses": res["statuses"],
            "errors": res["errors"],
            "span_s": span,
            "throughput": n / span if span else 0.0,
            "steady_throughput": steady,
            "e2e": summary_ms([int((r[2] - r[0]) * 1e6) for r in done]),
            "http": summary_ms([int((r[1] - r[0]) * 1e6) for r in records]),
            "per_second": per_second(ends),
            "steps": self.analyse([int(r[4]) for r in records]),
            "results_read_back": self.check_results(records),
            "host": ctx["host"],
            "cpu_ms_per_execution": {k: round(v * 1000 / max(1, n), 3) for k, v in ctx["cpu_s"].items()},
            "cpu_cores": {k: round(v / seconds, 3) for k, v in ctx["cpu_s"].items()},
            "db": db_delta(ctx["db0"], ctx["db1"], seconds, per=max(1, n)),
            "events_per_execution": inserted(ctx, "events") / max(1, n),
            "jobs_per_execution": inserted(ctx, "jobs") / max(1, n),
        }
        summary["cpu_ms_per_execution"]["loadgen"] = round(res["loadgen_cpu_s"] * 1000 / max(1, n), 3)
        log(
            f"  {n} completed in {span:.1f} s: {summary['throughput']:.1f}/s "
            f"(steady {steady or 0:.1f}/s), e2e p50 {summary['e2e']['p50_ms']} ms "
            f"p99 {summary['e2e']['p99_ms']} ms, dispatch p50 {summary['steps']['dispatch']['p50_ms']} ms, "
            f"other load {ctx['host']['other_cores']:.2f} cores"
        )
        return summary

    def run_loop(self, items: int) -> dict[str, Any]:
        """Run the loop playbook once and wait for its end (bounded by --time-limit)."""
        import httpx

        base = f"http://{HOST}:{self.stack.facade_port}"
        started = time.perf_counter()
        body = httpx.post(
            f"{base}{RUN_PATH}", json={"path": LOOP_PATH, "parameters": {"items": items}}, timeout=30
        )
        body.raise_for_status()
        execution_id = body.json()["execution_id"]
        deadline = started + self.args.time_limit
        while time.perf_counter() < deadline:
            doc = httpx.get(f"{base}/api/executions?path={LOOP_PATH}&limit=1", timeout=30).json()
            status = next((i["status"] for i in doc["items"] if i["execution_id"] == execution_id), "running")
            if status != "running":
                break
            time.sleep(0.5)
        else:
            status = "timeout"
        return {"execution_id": execution_id, "status": status, "seconds": time.perf_counter() - started}

    def summarise_loop(self, res: dict[str, Any], ctx: dict[str, Any]) -> dict[str, Any]:
        """Items per second from the loop's own events (first item dispatched to the loop's end),
        and the consumer's CPU per item."""
        st = self.stack
        eid = int(res["execution_id"])
        first, last, items = st.sql(
            f"""SELECT /* {MARK} */ min(created_at) FILTER (WHERE type = 'loop_iteration'),
                       max(created_at) FILTER (WHERE type = 'loop_completed'),
                       count(*) FILTER (WHERE type = 'loop_iteration')
                FROM events
                WHERE entity->>'domain' = 'execution' AND (entity->>'execution_id')::bigint = %s""",
            (eid,),
        )[0]
        result = st.sql(f"SELECT /* {MARK} */ result FROM executions WHERE execution_id = %s", (eid,))[0][0]
        seconds = (last - first).total_seconds() if first and last else None
        consumer_cpu = sum(v for k, v in ctx["cpu_s"].items() if k.startswith("consumer"))
        summary = {
            "status": res["status"],
            "items": items,
            "result": result,
            "seconds": seconds,
            "items_per_s": items / seconds if seconds else 0.0,
            "consumer_cpu_ms_per_item": round(consumer_cpu * 1000 / max(1, items), 3),
            "cpu_ms_per_item": {k: round(v * 1000 / max(1, items), 3) for k, v in ctx["cpu_s"].items()},
            "cpu_cores": {k: round(v / ctx["seconds"], 3) for k, v in ctx["cpu_s"].items()},
            "host": ctx["host"],
            "db": db_delta(ctx["db0"], ctx["db1"], ctx["seconds"], per=max(1, items)),
            "events_per_item": inserted(ctx, "events") / max(1, items),
        }
        peak = self.stack.sampler.peaks.get("loop", {})
        summary["consumer_peak_rss_mb"] = round(
            max((v for k, v in peak.items() if k.startswith("consumer")), default=0) / 2**20, 1
        )
        summary["pass"] = bool(
            res["status"] == "completed"
            and summary["items_per_s"] >= 300
            and summary["consumer_peak_rss_mb"] < 150
        )
        log(
            f"  {items} items in {seconds or 0:.1f} s: {summary['items_per_s']:.0f} items/s, "
            f"consumer {summary['consumer_cpu_ms_per_item']} ms CPU per item, "
            f"peak RSS {summary['consumer_peak_rss_mb']} MB"
        )
        return summary

    def jobs_left(self) -> int:
        async def go() -> int:
            import nats

            from noetl.bus import subjects

            nc = await nats.connect(servers_of(self.stack.nats_url))
            try:
                return int((await nc.jetstream().stream_info(subjects.JOBS_STREAM)).state.messages)
            finally:
                await nc.close()

        return asyncio.run(go())


def summary_ms(values_us: list[int]) -> dict[str, Any]:
    return {
        "n": len(values_us),
        "p50_ms": _r(ms(values_us, 50)),
        "p90_ms": _r(ms(values_us, 90)),
        "p99_ms": _r(ms(values_us, 99)),
        "max_ms": _r(max(values_us) / 1000 if values_us else None),
        "mean_ms": _r(sum(values_us) / len(values_us) / 1000 if values_us else None),
    }


def _r(v: float | None) -> float | None:
    return None if v is None else round(v, 2)


def per_second(ends: list[float]) -> list[int]:
    if not ends:
        return []
    counts = Counter(int(t - ends[0]) for t in ends)
    return [counts.get(s, 0) for s in range(int(ends[-1] - ends[0]) + 1)]


def fold_rss(peaks: dict[str, int]) -> dict[str, float]:
    """MB per process; the sandbox children summed per worker and in all."""
    out: dict[str, float] = {}
    for label, rss in peaks.items():
        key = "sandboxes (sum)" if label.startswith("sandbox") else label
        out[key] = round(out.get(key, 0.0) + rss / 2**20, 1)
    return dict(sorted(out.items()))


# --------------------------------------------------------------------------------------------
# The table.
# --------------------------------------------------------------------------------------------


def render(result: dict[str, Any]) -> str:
    lines: list[str] = []
    add = lines.append
    env = result["environment"]
    cfg = result["config"]
    s = result["run"]
    add("")
    add(f"NoETL workers benchmark ({result['mode']}), {env['cpus']} CPUs, Python {env['python']}")
    add(f"command: {result['command']}")
    add(
        f"playbook: {PLAYBOOK_PATH} (start -> one -> two -> three -> end, trivial python steps); "
        f"{cfg['workers']} worker processes x capacity {cfg['capacity']}; {cfg['concurrency']} executions "
        f"in flight; {s['completed']:,} of {cfg['executions']:,} completed"
    )
    add("")
    add("1. Throughput, end to end (POST to execution_complete)")
    add(
        f"   completed/s {s['throughput']:.1f} over {s['span_s']:.1f} s (steady middle 80%: "
        f"{s['steady_throughput'] or 0:.1f}/s); target >= 100/s: {'PASS' if s['pass'] else 'MISS'}"
    )
    add(
        f"   failed {s['failed']}, timed out {s['timed_out']}, HTTP {s['statuses']}, client errors "
        f"{sum(s['errors'].values())}, results read back {s['results_read_back']['checked']} "
        f"({s['results_read_back']['wrong']} wrong), other load {s['host']['other_cores']:.2f} cores"
    )
    if cost := result.get("metrics_cost"):
        w, c = cost["worker_cpu_ms_per_job"], cost["consumer_cpu_ms_per_command"]
        add(
            f"   metrics on/off, CPU ms: workers {w['on']} / {w['off']} per job = {cost['worker_ratio']}x; "
            f"execution consumer {c['on']} / {c['off']} per command = {cost['consumer_ratio']}x "
            "(target <= 1.05x)"
        )
    add("")
    add("2. Latency (ms)")
    add(f"   {'':36s} {'p50':>8s} {'p90':>8s} {'p99':>8s} {'max':>8s} {'mean':>8s}")

    def row(title: str, x: dict[str, Any]) -> None:
        add(
            f"   {title:36s} {_f(x['p50_ms'])} {_f(x['p90_ms'])} {_f(x['p99_ms'])} {_f(x['max_ms'])} "
            f"{_f(x['mean_ms'])}"
        )

    runs = [("run", s)]
    if result.get("light"):
        runs.append(("light", result["light"]))
    for name, x in runs:
        if name == "light":
            add(
                f"   light load, {x['concurrency']} in flight ({x['completed']} completed, "
                f"{x['throughput']:.1f}/s, other load {x['host']['other_cores']:.2f} cores):"
            )
        else:
            add(f"   at the throughput above, {x['concurrency']} in flight:")
        row("POST -> execution_complete", x["e2e"])
        row("POST -> HTTP 200", x["http"])
        row("dispatch -> action_started, all steps", x["steps"]["dispatch"])
        for step, y in x["steps"]["steps"].items():
            row(f"  step {step}: dispatch -> started", y["dispatch"])
            row(f"  step {step}: started -> completed", y["started_to_completed"])
        row("store: start_time -> end_time", x["steps"]["store_start_to_end"])
    add("")
    add("3. Cost per completed execution")
    db = s["db"]
    add(
        f"   DB statements {_f(db.get('statements_per_unit'), '.1f')}, transactions "
        f"{_f(db.get('xact_per_unit'), '.2f')}, events {s['events_per_execution']:.1f}, "
        f"jobs {s['jobs_per_execution']:.1f}"
    )
    cpu = s["cpu_ms_per_execution"]
    add(
        "   CPU ms: "
        + ", ".join(f"{k} {v:.2f}" for k, v in sorted(cpu.items(), key=lambda kv: -kv[1]) if v >= 0.01)
    )
    cores = sorted(s["cpu_cores"].items(), key=lambda kv: -kv[1])
    add("   CPU cores busy: " + ", ".join(f"{k} {v:.2f}" for k, v in cores if v >= 0.01))
    if db.get("top_statements"):
        add("   top statements by execution time (calls/s, rows/call, mean ms):")
        for t in db["top_statements"][:6]:
            add(
                f"     {t['calls_per_s']:8.1f} {t['rows_per_call']:8.1f} {t['mean_ms']:8.2f}  "
                f"{t['query'][:78]}"
            )
    rss = result.get("peak_rss_mb", {}).get("run")
    if rss:
        add("")
        add("4. Peak RSS (MB) during the run: " + ", ".join(f"{k} {v:.0f}" for k, v in rss.items()))
    loop = result.get("loop")
    if loop:
        add("")
        add(
            f"5. Loop: one iterator over {loop['items']:,} items (async, 64 at once): {loop['status']}, "
            f"{loop['items_per_s']:.0f} items/s (target >= 300), "
            f"{'PASS' if loop['pass'] else 'MISS'}"
        )
        add(
            f"   consumer CPU {loop['consumer_cpu_ms_per_item']:.3f} ms per item; consumer peak RSS "
            f"{loop['consumer_peak_rss_mb']:.0f} MB (target < 150); "
            f"events per item {loop['events_per_item']:.1f}"
        )
        cpu = loop["cpu_ms_per_item"]
        add(
            "   CPU ms per item: "
            + ", ".join(f"{k} {v:.2f}" for k, v in sorted(cpu.items(), key=lambda kv: -kv[1]) if v >= 0.01)
        )
    if result.get("profile"):
        add("")
        add("6. py-spy: share of busy samples (self, then inclusive for the project's functions)")
        lines += render_profile(result["profile"])
    add("")
    add(f"jobs left in NOETL_JOBS: {result['jobs_left']}; dead letters: {result['dead_letters']}")
    add("")
    return "\n".join(lines)


def _f(v: float | None, fmt: str = "8.1f") -> str:
    return "n/a".rjust(len(format(0.0, fmt))) if v is None else format(v, fmt)


# --------------------------------------------------------------------------------------------
# Command line.
# --------------------------------------------------------------------------------------------


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.workers", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="fewer executions: finishes in under 2 minutes")
    p.add_argument("--data-dir", help="where the servers keep their data (default: a fresh temp dir)")
    p.add_argument("--keep", action="store_true", help="keep the data directory and the logs")
    p.add_argument("--json-out", help="write the JSON here (default bench/results/workers-<time>.json)")
    g = p.add_argument_group("processes")
    g.add_argument("--workers", type=int, default=4, help="worker processes (`noetl worker`)")
    g.add_argument("--capacity", type=int, default=8, help="jobs at once per worker")
    g.add_argument("--consumers", default=bench_consumers(), help="consumers to run")
    g.add_argument("--consumer-procs", type=int, default=1, help="copies of the consumer process")
    g.add_argument(
        "--consumer-layout",
        choices=["one", "split"],
        default="one",
        help="one: `noetl consumer runtime catalog execution outbox`; split: a process per consumer",
    )
    g.add_argument(
        "--no-checkpoint", dest="checkpoint", action="store_false", help="no CHECKPOINT before the run"
    )
    g.add_argument(
        "--metrics-compare",
        action="store_true",
        help="half the workers and one of two consumer copies serve metrics (--metrics-port), the "
        "others not: prints their CPU per job (workers) and per copy (consumers), on/off",
    )
    g = p.add_argument_group("load")
    g.add_argument("--executions", type=int, help="executions in the measured run")
    g.add_argument("--warmup-executions", type=int, help="executions before it, not counted")
    g.add_argument("--concurrency", type=int, default=64, help="executions in flight at once")
    g.add_argument("--time-limit", type=float, help="seconds after which no new execution is started")
    g.add_argument("--exec-timeout", type=float, default=60.0, help="seconds to wait for one execution")
    g.add_argument(
        "--light-executions", type=int, help="executions of the light-load latency run (0 to skip)"
    )
    g.add_argument("--light-concurrency", type=int, default=4, help="in flight during the light run")
    g.add_argument("--loop-items", type=int, help="items of the loop figure's iterator (0 to skip it)")
    g = p.add_argument_group("profiling")
    g.add_argument("--profile", metavar="DIR", help="py-spy the consumer, facade and a worker into DIR")
    g.add_argument("--profile-seconds", type=float, default=20.0)
    g.add_argument(
        "--profile-phase", choices=["run", "loop"], default="run", help="the phase --profile samples"
    )
    # Internal: the load generator runs as a separate process.
    p.add_argument("--role", choices=["orchestrate", "run-load"], default="orchestrate")
    p.add_argument("--host", default=HOST, help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, help=argparse.SUPPRESS)
    p.add_argument("--nats-url", help=argparse.SUPPRESS)
    p.add_argument("--playbook", default=PLAYBOOK_PATH, help=argparse.SUPPRESS)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.role == "run-load":
        install_uvloop()
        print(json.dumps(asyncio.run(run_load(args))))
        return 0
    apply_mode(args, FULL, QUICK)
    if args.metrics_compare:  # two copies of each consumer, each in its own process
        args.consumer_procs, args.consumer_layout = max(2, args.consumer_procs), "split"
        args.workers = max(2, args.workers)
    signal.signal(signal.SIGTERM, raise_on_term)
    bench = WorkersBench(args)
    try:
        result = bench.run()
    finally:
        bench.stack.stop()
    out = write_result(result, args.json_out, "workers")
    print(render(result))
    print(f"JSON: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
