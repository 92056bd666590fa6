"""A thin HTTP client of the documented API, and the event watcher, for the `noetl` command.

Every function returns the server's JSON answer on a 2xx and raises `ApiError` (with the server's
`detail`) otherwise; `Unreachable` when there is no server to answer.
"""

from __future__ import annotations

import base64
import json
import os
import re
from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

import httpx

from noetl.bus import subjects
from noetl.bus.envelope import Event
from noetl.problems import Problem
from noetl.settings import get_settings

DEFAULT_HOST = "localhost"
DEFAULT_PORT = 8083
API_URL_ENV = "NOETL_API_URL"
TIMEOUT = 30.0


class ApiError(Problem):
    """The server answered with a status other than 2xx."""

    def __init__(self, status_code: int, detail: Any) -> None:
        self.status_code = status_code
        self.detail = detail
        text = detail if isinstance(detail, str) else json.dumps(detail)
        super().__init__(f"HTTP {status_code}: {text}")


class Unreachable(Problem):
    """No server answered at the API's address."""


def base_url(host: str | None = None, port: int | None = None) -> str:
    """`--host`/`--port` when given, else `NOETL_API_URL`, else http://localhost:8083."""
    if host is None and port is None:
        env = os.environ.get(API_URL_ENV, "").strip()
        if env:
            return env.rstrip("/")
    return f"http://{host or DEFAULT_HOST}:{port or DEFAULT_PORT}"


def _detail(response: httpx.Response) -> Any:
    try:
        body = response.json()
    except ValueError:
        return response.text or response.reason_phrase
    return body.get("detail", body) if isinstance(body, dict) else body


def auth_headers() -> dict[str, str]:
    """`Authorization: Bearer $NOETL_API_TOKEN` when a token is set, else nothing."""
    token = get_settings().api_token
    return {"Authorization": f"Bearer {token.get_secret_value()}"} if token else {}


def _call(method: str, url: str, **kwargs: Any) -> Any:
    try:
        response = httpx.request(method, url, timeout=TIMEOUT, headers=auth_headers(), **kwargs)
    except httpx.TransportError as exc:
        raise Unreachable(f"cannot reach the API at {url}: {exc}") from exc
    if not response.is_success:
        raise ApiError(response.status_code, _detail(response))
    try:
        return response.json()
    except ValueError as exc:
        raise ApiError(response.status_code, f"the answer is not JSON: {response.text[:200]}") from exc


def register(api: str, content: bytes, resource_type: str = "Playbook") -> dict[str, Any]:
    """POST /api/catalog/register with the file's bytes as `content_base64`."""
    body = {"content_base64": base64.b64encode(content).decode("ascii"), "resource_type": resource_type}
    return _call("POST", f"{api}/api/catalog/register", json=body)


def catalog_list(api: str, resource_type: str | None = None) -> dict[str, Any]:
    params = {"resource_type": resource_type} if resource_type else None
    return _call("GET", f"{api}/api/catalog/list", params=params)


def execute(api: str, path: str, parameters: Any, merge: bool = False) -> dict[str, Any]:
    """POST /api/executions/run as the original CLI did: `playbook_id`, `parameters`, `merge`."""
    body = {"playbook_id": path, "parameters": parameters, "merge": merge}
    return _call("POST", f"{api}/api/executions/run", json=body)


def _execution(api: str, execution_id: str) -> str:
    return f"{api}/api/executions/{quote(execution_id, safe='')}"


def execution_status(api: str, execution_id: str) -> dict[str, Any]:
    """The execution with its events."""
    return _call("GET", _execution(api, execution_id))


def executions(
    api: str, *, status: str | None = None, path: str | None = None, limit: int = 50
) -> dict[str, Any]:
    params: dict[str, Any] = {"limit": limit}
    params |= {key: value for key, value in (("status", status), ("path", path)) if value}
    return _call("GET", f"{api}/api/executions", params=params)


def cancel(api: str, execution_id: str, reason: str | None = None) -> dict[str, Any]:
    return _call("POST", f"{_execution(api, execution_id)}/cancel", json={"reason": reason})


def worker_pools(api: str, *, runtime: str | None = None, status: str | None = None) -> dict[str, Any]:
    params = {key: value for key, value in (("runtime", runtime), ("status", status)) if value}
    return _call("GET", f"{api}/api/worker/pools", params=params or None)


def request_outcome(api: str, request_id: str) -> dict[str, Any]:
    """`{"state": "pending"}` until an accepted command is applied, then its status and response."""
    return _call("GET", f"{api}/api/requests/{quote(request_id, safe='')}")


# --------------------------------------------------------------------------- events watch

_RELATIVE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd])\s*$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def parse_since(value: str) -> datetime:
    """An ISO 8601 time (UTC when no offset is given), or a duration ago: 30s, 5m, 2h, 1d."""
    relative = _RELATIVE.match(value)
    if relative:
        amount, unit = relative.groups()
        return datetime.now(UTC) - timedelta(**{_UNITS[unit]: float(amount)})
    try:
        moment = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError as exc:
        raise ValueError(f"not a time: {value!r} (ISO 8601, or a duration like 30s, 5m, 2h)") from exc
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


@dataclass(frozen=True)
class WatchOptions:
    execution: str | None = None
    event_type: str | None = None
    from_seq: int | None = None
    since: datetime | None = None
    since_id: int | None = None
    count: int | None = None

    def filter_subject(self) -> str:
        if self.execution or self.event_type:
            execution = self.execution.strip() if self.execution else None
            if execution and execution.isdigit():
                execution = str(int(execution))  # "007" is execution 7, as the API reads it
            return subjects.execution_events(execution, self.event_type)
        return subjects.EVENTS_ALL

    def wanted(self, event: Event) -> bool:
        if self.event_type and event.type != self.event_type:
            return False
        if self.since_id is not None:
            try:
                return int(event.id) > self.since_id
            except ValueError:
                return True
        return True


def event_line(event: Event) -> str:
    """One line: time, type, entity (its domain first), payload."""
    keys = sorted(event.entity, key=lambda k: (k != "domain", k))
    entity = ",".join(f"{k}={event.entity[k]}" for k in keys)
    payload = json.dumps(event.payload, separators=(",", ":"), sort_keys=True, default=str)
    return f"{event.time.isoformat()} {event.type} {entity} {payload}"


async def watch(js: Any, options: WatchOptions, *, idle: float = 0.25) -> AsyncIterator[Event | None]:
    """The events the options select, as they come; None now and then while nothing comes (the
    first item, event or None, means the subscription is in place)."""
    from noetl.bus.events import follow

    replay = options.from_seq is not None or options.since is not None or options.since_id is not None
    delivered = 0
    following = follow(
        js,
        options.filter_subject(),
        start_seq=options.from_seq,
        start_time=options.since,
        new_only=not replay,
        idle=idle,
    )
    async with aclosing(following):  # its subscription ends here, while the connection is open
        async for item in following:
            if item is None:
                yield None
                continue
            if not options.wanted(item.event):
                continue
            yield item.event
            delivered += 1
            if options.count is not None and delivered >= options.count:
                return
