"""Whether NATS and PostgreSQL can be reached, said in one line a person can act on: what, where,
why, and which setting points there. Long-running processes wait for them, warning on each retry.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

import nats
import psycopg
from nats.aio.client import Client as NATS
from psycopg.conninfo import conninfo_to_dict

from noetl.problems import Problem
from noetl.settings import servers_of

NATS_SETTING = "NOETL_NATS_URL"
PG_SETTING = "NOETL_PG_DSN or POSTGRES_*"
CONNECT_TIMEOUT = 3.0

T = TypeVar("T")


class Unreachable(Problem):
    def __init__(self, what: str, where: str, reason: str, setting: str) -> None:
        super().__init__(f"cannot connect to {what} at {where}: {reason} (set by {setting})")


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, socket.gaierror):
        return f"unknown host ({exc.strerror})"
    if isinstance(exc, TimeoutError):
        return "no answer in time"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc).strip() or type(exc).__name__


async def connect_nats(
    url: str,
    *,
    name: str = "noetl",
    timeout: float = CONNECT_TIMEOUT,
    options: Mapping[str, Any] | None = None,
) -> NATS:
    """A NATS connection, or `Unreachable` at once (nats-py alone keeps trying, silently).
    `url`: one server or a comma-separated list, any one of them up will do. `options`:
    `noetl.bus.connection.nats_options`, who this process is."""
    errors: list[Exception] = []

    async def remember(exc: Exception) -> None:
        errors.append(exc)

    try:
        servers = servers_of(url)
        return await nats.connect(
            servers,
            name=name,
            connect_timeout=timeout,
            allow_reconnect=False,
            max_reconnect_attempts=1,  # nats-py gives up only on a positive limit
            reconnect_time_wait=0.1,
            error_cb=remember,
            **(options or {}),
        )
    except Exception as exc:
        raise Unreachable("NATS", url, _reason(errors[-1] if errors else exc), NATS_SETTING) from None


async def probe_nats(url: str, options: Mapping[str, Any] | None = None) -> None:
    await (await connect_nats(url, name="noetl-probe", options=options)).close()


def postgres_address(dsn: str) -> str:
    """host:port/dbname of a DSN, never its password."""
    try:
        info = conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return "an unparsable DSN"
    return f"{info.get('host', 'localhost')}:{info.get('port', 5432)}/{info.get('dbname', '')}"


def _postgres_reason(exc: psycopg.Error) -> str:
    """psycopg's message, first line, without its 'connection to server at ... failed:' lead."""
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return first.rsplit(" failed: ", 1)[-1].strip()


async def probe_postgres(dsn: str) -> None:
    try:
        conn = await psycopg.AsyncConnection.connect(dsn, connect_timeout=int(CONNECT_TIMEOUT))
    except psycopg.Error as exc:
        raise Unreachable("PostgreSQL", postgres_address(dsn), _postgres_reason(exc), PG_SETTING) from None
    await conn.close()


async def until_reachable(
    attempt: Callable[[], Awaitable[T]], log: logging.Logger, *, first: float = 0.5, most: float = 30.0
) -> T:
    """`attempt()`'s value once it stops raising `Unreachable`; a warning on each retry, with backoff."""
    delay = first
    while True:
        try:
            return await attempt()
        except Unreachable as exc:
            log.warning("%s; retrying in %gs", exc, delay)
        await asyncio.sleep(delay)
        delay = min(delay * 2, most)
