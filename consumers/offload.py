"""CPU-heavy work (reading and checking a playbook) in a child process, off the event loop that
applies everyone's commands: the heaviest playbook the limits allow takes a second of CPU, and
registrations, heartbeats and reads keep being answered meanwhile."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, TypeVar

from noetl.children import follow_parent

T = TypeVar("T")

_pool: ProcessPoolExecutor | None = None


def start() -> ProcessPoolExecutor:
    """The worker process, started now (in the background) if it is not running: a consumer
    calls this at start-up, so its first registration does not wait for a Python to start."""
    global _pool
    if _pool is None:
        # The worker dies with this process, also when it is SIGKILLed.
        _pool = ProcessPoolExecutor(
            max_workers=1,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=follow_parent,
            initargs=(os.getpid(),),
        )
        _pool.submit(int)
    return _pool


async def run(fn: Callable[..., T], *args: Any) -> T:
    """`fn(*args)` in the worker process (started again if it died)."""
    try:
        return await asyncio.get_running_loop().run_in_executor(start(), fn, *args)
    except BrokenProcessPool:
        shutdown()
        raise


def shutdown() -> None:
    global _pool
    if _pool is not None:
        _pool.shutdown(wait=False, cancel_futures=True)
        _pool = None
