"""The benchmarks' processes (nats-server, PostgreSQL, every process they spawn) die with the
benchmark, also when it is SIGKILLed and has no chance to stop them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from conftest import alive, children_of

ROOT = Path(__file__).resolve().parent.parent

# A benchmark's set-up as `bench.runtime` does it, with one process spawned the way it spawns all.
BENCHMARK = """
import argparse, sys, time
from bench.runtime import Bench
bench = Bench(argparse.Namespace(data_dir=sys.argv[1], keep=True))
bench.start_servers()
bench.spawn("sleeper", [sys.executable, "-c", "import time; time.sleep(600)"], bench.base_env())
print("started", flush=True)
time.sleep(600)
"""


def test_a_killed_benchmark_leaves_nothing_running(scratch_dir: Path) -> None:
    bench = subprocess.Popen(
        [sys.executable, "-c", BENCHMARK, str(scratch_dir / "bench")],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    try:
        assert bench.stdout is not None and bench.stdout.readline() == "started\n"
        spawned = children_of(bench.pid)
        commands = [Path(f"/proc/{pid}/cmdline").read_bytes() for pid in spawned]
        assert any(b"nats-server" in c for c in commands) and any(b"postgres" in c for c in commands)
        assert any(b"time.sleep(600)" in c for c in commands)
        bench.send_signal(signal.SIGKILL)
        bench.wait(10)
        deadline = time.monotonic() + 60
        while left := {pid for pid in spawned if alive(pid)}:
            assert time.monotonic() < deadline, f"left running by the killed benchmark: {left}"
            time.sleep(0.1)
    finally:
        if bench.poll() is None:
            os.killpg(bench.pid, signal.SIGKILL)
            bench.wait()
