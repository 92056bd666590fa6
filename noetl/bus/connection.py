"""A NATS connection that outlives outages.

A process that serves HTTP must start, and keep answering, while NATS is away: it connects in the
background, reconnects forever, and says at once whether the bus is there right now.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from noetl.settings import Settings, servers_of

log = logging.getLogger(__name__)

OnConnect = Callable[["Bus"], Awaitable[None]]


class BusUnavailable(RuntimeError):
    """NATS cannot be reached now; the caller should retry later."""


def nats_options(settings: Settings) -> dict[str, Any]:
    """How this process proves who it is to NATS, and trusts the server: `nats.connect` keywords
    from `NOETL_NATS_USER`/`NOETL_NATS_PASSWORD` or `NOETL_NATS_CREDS`, and `NOETL_NATS_TLS_*`.
    Every connection of every part is made with these."""
    options: dict[str, Any] = {}
    if settings.nats_creds is not None:
        options["user_credentials"] = str(settings.nats_creds)
    elif settings.nats_user:
        options["user"] = settings.nats_user
        if settings.nats_password is not None:
            options["password"] = settings.nats_password.get_secret_value()
    if settings.nats_tls_ca or settings.nats_tls_cert:
        context = ssl.create_default_context(
            cafile=str(settings.nats_tls_ca) if settings.nats_tls_ca else None
        )
        if settings.nats_tls_cert:
            key = str(settings.nats_tls_key) if settings.nats_tls_key else None
            context.load_cert_chain(str(settings.nats_tls_cert), key)
        options["tls"] = context
    return options


class Bus:
    """`url`: one server or a cluster's comma-separated list; nats-py connects to one that is up
    (in random order, so the clients of a cluster spread over its nodes) and reconnects to any.
    `replicas`: of every stream and durable consumer this process declares."""

    def __init__(
        self, url: str, name: str, options: Mapping[str, Any] | None = None, *, replicas: int = 1
    ) -> None:
        self.url = url
        self.servers = servers_of(url)
        self.name = name
        self.options = dict(options or {})
        self.replicas = replicas
        self.nc: NATS = NATS()
        self._on_connect: list[OnConnect] = []
        self._js: JetStreamContext | None = None
        self._js_of: NATS | None = None
        self._ready = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @classmethod
    def of(cls, settings: Settings, name: str) -> Bus:
        """The bus as `settings` name it: its servers, who this process is, the replicas."""
        return cls(settings.nats_url, name, nats_options(settings), replicas=settings.stream_replicas)

    def on_connect(self, hook: OnConnect) -> None:
        """Run `hook` once the first connection is made (subscriptions survive reconnects)."""
        self._on_connect.append(hook)

    @property
    def js(self) -> JetStreamContext:
        """One JetStream context per connection: each context keeps its own inbox for async
        publish acks, so a context per call would leak a subscription and a task every time."""
        if self._js is None or self._js_of is not self.nc:
            self._js, self._js_of = self.nc.jetstream(), self.nc
        return self._js

    @property
    def connected(self) -> bool:
        return self._ready.is_set() and self.nc.is_connected

    def require(self) -> NATS:
        if not self.connected:
            raise BusUnavailable("the message bus is not reachable")
        return self.nc

    async def start(self, *, wait: bool = True, timeout: float | None = None) -> None:
        """Connect; with `wait=False` keep trying in the background and return at once."""
        self._task = asyncio.create_task(self._connect_forever(), name=f"bus-connect-{self.name}")
        if wait:
            await asyncio.wait_for(self._ready.wait(), timeout)

    async def wait_ready(self, timeout: float | None = None) -> None:
        await asyncio.wait_for(self._ready.wait(), timeout)

    async def _connect_forever(self) -> None:
        delay = 0.2
        while True:
            nc = NATS()
            try:
                await nc.connect(
                    self.servers,
                    name=self.name,
                    connect_timeout=2,
                    allow_reconnect=True,
                    max_reconnect_attempts=-1,
                    reconnect_time_wait=0.5,
                    ping_interval=5,
                    max_outstanding_pings=2,
                    pending_size=8 * 1024 * 1024,
                    error_cb=self._on_error,
                    disconnected_cb=self._on_disconnected,
                    reconnected_cb=self._on_reconnected,
                    **self.options,
                )
                self.nc = nc
                break
            except Exception as exc:  # any failure to connect is retried
                log.warning("bus: cannot connect to %s (%s); retrying", self.url, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
        for hook in self._on_connect:
            while True:
                try:
                    await hook(self)
                    break
                except Exception:
                    log.exception("bus: on-connect step failed; retrying")
                    await asyncio.sleep(1.0)
        self._ready.set()
        log.info("bus: connected to %s", self.url)

    async def _on_error(self, exc: Exception) -> None:
        if "violation" in str(exc).lower():  # a permission or authorization the server refused
            log.warning("bus: %s", exc)
        else:
            log.debug("bus: %s", exc)

    async def _on_disconnected(self) -> None:
        log.warning("bus: disconnected from %s", self.url)

    async def _on_reconnected(self) -> None:
        log.info("bus: reconnected to %s", self.nc.connected_url)

    async def close(self) -> None:
        """Flush what was published (replies, acks), then close; drain would wait on pull fetches."""
        if self._task and not self._task.done():
            self._task.cancel()
        if self.nc.is_connected:
            try:
                await self.nc.flush(timeout=2)
            except Exception as exc:
                log.debug("bus: flush on close failed: %r", exc)
        if not self.nc.is_closed:
            try:
                await self.nc.close()
            except AssertionError:  # nats-py's way of saying it never connected: nothing to close
                log.debug("bus: closed before it ever connected")
