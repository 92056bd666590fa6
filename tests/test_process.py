"""A consumer process runs CPython's collector on a timer, not on allocations (see
`consumers.process.run_process`): reference cycles must still be collected. A cancelled process
lets each of its consumers finish stopping."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import signal
import weakref
from collections.abc import Awaitable

import pytest
from conftest import Servers, alive, children_of, wait_for

from consumers import process
from consumers.process import Context, run_process


class Node:
    """Something that can be part of a reference cycle."""

    def __init__(self) -> None:
        self.other: Node | None = None


async def test_a_consumer_process_still_collects_reference_cycles(clean: Servers) -> None:
    task = asyncio.create_task(run_process(["sweeper"], clean.settings(), collect_every=0.05))
    try:
        await wait_for(lambda: _async(not gc.isenabled()), what="automatic collection off")
        a, b = Node(), Node()
        a.other, b.other = b, a
        cycle = weakref.ref(a)
        del a, b
        assert cycle() is not None  # reference counting alone cannot free a cycle
        await wait_for(lambda: _async(cycle() is None), what="the cycle collected on the timer")
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    assert gc.isenabled()


async def _async(value: bool) -> bool:
    return value


async def test_a_cancelled_process_lets_every_consumer_finish_its_stop(
    clean: Servers, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One consumer stops at once, the other takes a while to finish its batch: the second must
    not be cancelled again half-way through (a cancelled NATS flush, an abandoned transaction)."""
    cancels = {"quick": 0, "slow": 0}
    finished: list[str] = []

    async def consumer(name: str, winding_down: float) -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancels[name] += 1
            try:
                await asyncio.sleep(winding_down)
                finished.append(name)
            except asyncio.CancelledError:
                cancels[name] += 1
            raise

    async def start(ctx: Context) -> list[Awaitable[None]]:
        return [consumer("quick", 0), consumer("slow", 0.5)]

    monkeypatch.setitem(process.CONSUMERS, "test-pair", start)
    ready = asyncio.Event()
    running = process.run(["test-pair"], clean.settings(), handle_signals=False, ready=ready)
    task = asyncio.create_task(running)
    await asyncio.wait_for(ready.wait(), 30)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert cancels == {"quick": 1, "slow": 1}
    assert sorted(finished) == ["quick", "slow"]


async def test_the_offload_worker_dies_with_a_killed_consumer_process(clean: Servers, processes) -> None:
    """The catalog consumer reads playbooks in a child process: a SIGKILL of the consumer, which
    runs no cleanup, once left that child running."""
    env = {"NOETL_NATS_URL": clean.nats_url, "NOETL_PG_DSN": clean.consumer_dsn}
    consumer = processes.start(["--log-level", "error", "consumer", "catalog"], env)

    async def offload_child() -> set[int]:
        assert consumer.popen.poll() is None, consumer.output()
        return children_of(consumer.pid)

    children = await wait_for(offload_child, timeout=60, what="the offload worker to start")
    consumer.signal(signal.SIGKILL)
    consumer.wait(10)

    async def gone() -> bool:
        return not any(alive(pid) for pid in children)

    await wait_for(gone, timeout=20, what=f"the consumer's children {children} to die with it")
