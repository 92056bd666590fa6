"""A consumer process runs CPython's collector on a timer, not on allocations (see
`consumers.process.run_process`): reference cycles must still be collected."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import signal
import weakref

from conftest import Servers, wait_for

from consumers.process import run_process


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
