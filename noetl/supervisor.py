"""Child processes kept running together: each is restarted with backoff when it dies, the whole
is ready when every child is, and a stop goes in tiers (lower first), each child given its own
time to finish before it is killed.

Every child runs in a session of its own (a terminal's Ctrl-C reaches only the supervisor, which
stops the children in order) and dies with the supervisor, also on SIGKILL
(`noetl.children.die_with_parent`).
"""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from noetl.children import ReadyPipe, die_with_parent
from noetl.embedded import EmbeddedNats, EmbeddedPostgres

FIRST_BACKOFF = 1.0
MOST_BACKOFF = 30.0
STEADY_AFTER = 30.0  # a child that ran this long before dying starts again from the first backoff

Say = Callable[[str], None]


class Child(Protocol):
    """One part of the whole: started, polled and stopped by the supervisor."""

    name: str
    tier: int  # the stop order: lower tiers stop first
    stop_signal: int
    stop_timeout: float  # after its stop signal, how long it may take before it is killed

    def start(self) -> None: ...

    def returncode(self) -> int | None: ...

    def ready(self) -> bool: ...

    def signal(self, sig: int) -> None: ...


class Command:
    """A `noetl ...` process that tells when it is ready through a pipe (`NOETL_READY_FD`)."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], *, tier: int, stop_timeout: float):
        self.name = name
        self.argv = argv
        self.env = env
        self.tier = tier
        self.stop_signal = signal.SIGTERM
        self.stop_timeout = stop_timeout
        self.proc: subprocess.Popen[bytes] | None = None
        self.pipe: ReadyPipe | None = None

    def start(self) -> None:
        if self.pipe is not None:
            self.pipe.close()
        self.pipe = ReadyPipe()
        self.proc = subprocess.Popen(
            self.argv,
            env={**self.env, **self.pipe.env},
            pass_fds=self.pipe.fds,
            start_new_session=True,
            preexec_fn=die_with_parent(signal.SIGTERM),
        )
        self.pipe.started()

    def returncode(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def ready(self) -> bool:
        return self.pipe is not None and self.pipe.poll()

    def signal(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)


class Server:
    """An embedded nats-server or PostgreSQL: its `start` returns once it serves."""

    def __init__(self, name: str, server: EmbeddedNats | EmbeddedPostgres, *, stop_timeout: float = 30):
        self.name = name
        self.server = server
        self.tier = 2
        self.stop_timeout = stop_timeout
        self.stop_signal = server.STOP_SIGNAL

    def start(self) -> None:
        self.server.start()

    def returncode(self) -> int | None:
        proc = self.server.proc
        return None if proc is None else proc.poll()

    def ready(self) -> bool:
        return self.returncode() is None

    def signal(self, sig: int) -> None:
        proc = self.server.proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(sig)


@dataclass
class _Watch:
    child: Child
    started_at: float = field(default_factory=time.monotonic)
    restart_at: float | None = None
    failures: int = 0
    was_ready: bool = False


class Supervisor:
    def __init__(self, say: Say) -> None:
        self.say = say
        self._watches: list[_Watch] = []

    def add(self, child: Child, *, started: bool = False) -> None:
        """Supervise `child`, starting it unless it already was."""
        if not started:
            child.start()
        self._watches.append(_Watch(child))

    def waiting_for(self) -> list[str]:
        return [w.child.name for w in self._watches if not w.child.ready()]

    def tend(self) -> None:
        """One look at every child: say when one becomes ready, restart the dead with backoff."""
        now = time.monotonic()
        for watch in self._watches:
            child = watch.child
            code = child.returncode()
            if code is None:
                if not watch.was_ready and child.ready():
                    watch.was_ready = True
                    if watch.failures:
                        self.say(f"{child.name} ready again")
                continue
            if watch.restart_at is None:
                ran = now - watch.started_at
                watch.failures = 1 if ran >= STEADY_AFTER else watch.failures + 1
                delay = min(FIRST_BACKOFF * 2 ** (watch.failures - 1), MOST_BACKOFF)
                self.say(f"{child.name} exited with {_status(code)}; restarting in {delay:g}s")
                watch.restart_at = now + delay
            elif now >= watch.restart_at:
                watch.restart_at, watch.was_ready, watch.started_at = None, False, now
                try:
                    child.start()
                except Exception as exc:  # a server that cannot start again: try later
                    self.say(f"{child.name} did not start: {exc}")

    def stop(self, hurry: Callable[[], bool] = lambda: False) -> None:
        """Stop every child, tier by tier: its stop signal, then SIGKILL once its time is up (or
        at once when `hurry()` turns true, e.g. on a second Ctrl-C)."""
        for tier in sorted({w.child.tier for w in self._watches}):
            children = [w.child for w in self._watches if w.child.tier == tier]
            for child in children:
                child.signal(child.stop_signal)
            start = time.monotonic()
            while running := [c for c in children if c.returncode() is None]:
                for child in running:
                    if hurry() or time.monotonic() - start >= child.stop_timeout:
                        child.signal(signal.SIGKILL)
                time.sleep(0.05)


def _status(code: int) -> str:
    if code < 0:
        return f"signal {signal.Signals(-code).name}"
    return f"status {code}"
