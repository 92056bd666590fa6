"""Child processes that never outlive their parent and that say when they are ready.

On Linux a child asks the kernel for a signal when its parent dies (`prctl(PR_SET_PDEATHSIG)`, set
between fork and exec, kept across exec): so it stops with its parent even when the parent is
SIGKILLed. Elsewhere there is no such signal and nothing is set.

A parent that must know when a child is ready (`noetl dev`) passes it the write end of a pipe in
`NOETL_READY_FD`; the child writes one line on it once it serves (`notify_ready`).
"""

from __future__ import annotations

import ctypes
import os
import select
import signal
import sys
from collections.abc import Callable

PR_SET_PDEATHSIG = 1
READY_FD_ENV = "NOETL_READY_FD"


def die_with_parent(sig: int = signal.SIGTERM) -> Callable[[], None] | None:
    """A `preexec_fn` for `subprocess`/`asyncio` that has the child get `sig` when this process
    dies; None where the platform has no parent-death signal."""
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up before the fork, not in the child
    parent = os.getpid()

    def in_child() -> None:
        _follow(prctl, parent, sig)

    return in_child


def follow_parent(parent: int, sig: int = signal.SIGTERM) -> None:
    """The same, from inside a child that is already running (a process pool's worker, whose
    start this process does not control): `sig` when `parent` dies."""
    if sys.platform.startswith("linux"):
        _follow(ctypes.CDLL(None, use_errno=True).prctl, parent, sig)


def _follow(prctl: Callable[..., int], parent: int, sig: int) -> None:
    prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
    if os.getppid() != parent:  # the parent died before the signal was set
        os.kill(os.getpid(), sig)


class ReadyPipe:
    """The parent's end of a child's readiness: pass `env` and `fds` to the child, then `started`."""

    def __init__(self) -> None:
        self._read, self._write = os.pipe()
        self.ready = False

    @property
    def env(self) -> dict[str, str]:
        return {READY_FD_ENV: str(self._write)}

    @property
    def fds(self) -> tuple[int, ...]:
        return (self._write,)

    def started(self) -> None:
        """The child has its copy of the write end: close ours, so its death reads as EOF."""
        os.close(self._write)

    def poll(self) -> bool:
        """True once the child has said it is ready (never blocks)."""
        if not self.ready and select.select([self._read], [], [], 0)[0]:
            self.ready = os.read(self._read, 64) != b""
        return self.ready

    def close(self) -> None:
        os.close(self._read)


def notify_ready() -> None:
    """Tell the parent that started this process with a ready pipe that it serves now."""
    fd = os.environ.pop(READY_FD_ENV, None)
    if fd is None or not fd.isdigit():
        return
    try:
        os.write(int(fd), b"ready\n")
        os.close(int(fd))
    except OSError:  # the parent is gone or never listened: nothing to tell
        pass
