"""The `noetl` subcommands that are clients of a running system: register, catalog, execute, events.

HTTP subcommands take `--host`/`--port` (default localhost:8083, or `NOETL_API_URL`); a non-2xx
answer exits 1 with the server's detail on stderr. `events watch` reads the events stream from NATS.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from noetl import client
from noetl.settings import get_settings

Handler = Callable[[argparse.Namespace], int]


class _Exit(Exception):
    def __init__(self, code: int) -> None:
        self.code = code


def _fail(message: str, code: int = 1) -> int:
    print(f"noetl: {message}", file=sys.stderr)
    return code


def _exits(handler: Handler) -> Handler:
    @functools.wraps(handler)
    def run(args: argparse.Namespace) -> int:
        try:
            return handler(args)
        except _Exit as exc:
            return exc.code

    return run


def _show(body: Any, as_json: bool, summary: str | None = None) -> None:
    if as_json:
        print(json.dumps(body))
        return
    if summary:
        print(summary)
    print(json.dumps(body, indent=2))


def _api_call(args: argparse.Namespace, call: Callable[[str], Any]) -> Any:
    """The call's answer; on an error, say why on stderr and exit 1."""
    try:
        return call(client.base_url(args.host, args.port))
    except client.ApiError as exc:
        detail = exc.detail if isinstance(exc.detail, str) else json.dumps(exc.detail)
        raise _Exit(_fail(f"HTTP {exc.status_code}: {detail}")) from exc
    except client.Unreachable as exc:
        raise _Exit(_fail(str(exc))) from exc


def _accepted(body: Any) -> str | None:
    """The facade answers 202 when the outcome is late: say where to fetch it."""
    if isinstance(body, dict) and body.get("status") == "accepted" and "request_id" in body:
        return f"accepted, outcome not known yet: GET /api/requests/{body['request_id']}"
    return None


@_exits
def _register(args: argparse.Namespace) -> int:
    try:
        content = args.file.read_bytes()
    except OSError as exc:
        return _fail(f"cannot read {args.file}: {exc.strerror or exc}", 2)
    body = _api_call(args, lambda api: client.register(api, content, args.resource_type))
    summary = _accepted(body) or (
        f"registered {body.get('path')} version {body.get('version')} (catalog_id {body.get('catalog_id')})"
    )
    _show(body, args.json, summary)
    return 0


@_exits
def _catalog_list(args: argparse.Namespace) -> int:
    body = _api_call(args, lambda api: client.catalog_list(api, args.resource_type))
    if args.json:
        print(json.dumps(body))
        return 0
    entries = body.get("entries", [])
    print(f"{'PATH':<40} {'VERSION':>7} {'KIND':<10} {'CATALOG_ID':>10} CREATED_AT")
    for entry in entries:
        print(
            f"{entry.get('path', ''):<40} {entry.get('version', ''):>7} {entry.get('kind', ''):<10} "
            f"{entry.get('catalog_id', ''):>10} {entry.get('created_at', '')}"
        )
    print(f"({len(entries)} entr{'y' if len(entries) == 1 else 'ies'})")
    return 0


def _parameters(args: argparse.Namespace) -> Any:
    """`--payload` (JSON text), else `--input` (a JSON file), else {}."""
    if args.payload is not None:
        try:
            return json.loads(args.payload)
        except ValueError as exc:
            raise _Exit(_fail(f"--payload is not JSON: {exc}", 2)) from exc
    if args.input is not None:
        try:
            return json.loads(args.input.read_text())
        except OSError as exc:
            raise _Exit(_fail(f"cannot read {args.input}: {exc.strerror or exc}", 2)) from exc
        except ValueError as exc:
            raise _Exit(_fail(f"{args.input} is not JSON: {exc}", 2)) from exc
    return {}


@_exits
def _execute_playbook(args: argparse.Namespace) -> int:
    parameters = _parameters(args)
    body = _api_call(args, lambda api: client.execute(api, args.path, parameters, args.merge))
    summary = _accepted(body) or f"execution_id: {body.get('execution_id')}"
    _show(body, args.json, summary)
    return 0


@_exits
def _execute_status(args: argparse.Namespace) -> int:
    body = _api_call(args, lambda api: client.execution_status(api, args.execution_id))
    _show(body, args.json, f"execution {body.get('execution_id')}: {body.get('status')}")
    return 0


def _events_watch(args: argparse.Namespace) -> int:
    try:
        since = client.parse_since(args.since) if args.since else None
    except ValueError as exc:
        return _fail(f"--since: {exc}", 2)
    options = client.WatchOptions(
        execution=args.execution,
        event_type=args.type,
        from_seq=args.from_seq,
        since=since,
        since_id=args.since_id,
        count=args.count,
    )
    try:
        return asyncio.run(_watch(args, options))
    except (KeyboardInterrupt, BrokenPipeError):
        return 0


async def _watch(args: argparse.Namespace, options: client.WatchOptions) -> int:
    import nats
    from nats.js.errors import NotFoundError

    url = args.nats_url or get_settings().nats_url
    try:
        nc = await asyncio.wait_for(
            nats.connect(url, connect_timeout=3, max_reconnect_attempts=5, reconnect_time_wait=0.5),
            timeout=10,
        )
    except Exception as exc:
        return _fail(f"cannot connect to NATS at {url}: {exc!r}")
    ready = False
    try:
        async with asyncio.timeout(args.timeout):
            async for event in client.watch(nc.jetstream(), options):
                if not ready:
                    ready = True
                    following = f"following {options.filter_subject()} on {url}"
                    print(f"noetl events watch: {following}", file=sys.stderr, flush=True)
                if event is not None:
                    line = event.model_dump_json() if args.json else client.event_line(event)
                    print(line, flush=True)
    except TimeoutError:
        pass
    except NotFoundError:
        return _fail("the events stream does not exist yet (start the consumers first)")
    finally:
        await nc.close()
    return 0


def _positive(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return number


def _http_options() -> argparse.ArgumentParser:
    http = argparse.ArgumentParser(add_help=False)
    default = f"{client.DEFAULT_HOST}:{client.DEFAULT_PORT}, or ${client.API_URL_ENV}"
    http.add_argument("--host", default=None, help=f"the API's host (default: {default})")
    http.add_argument("--port", type=int, default=None, help="the API's port")
    http.add_argument("--json", action="store_true", help="print the response JSON alone")
    return http


def _register_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", type=Path, help="the playbook's YAML file")
    p.add_argument("--resource-type", default="Playbook")
    p.set_defaults(func=_register)


def add_client_commands(sub: Any) -> None:
    """Add register, catalog, execute and events to the `noetl` parser's subcommands."""
    http = _http_options()
    _register_options(sub.add_parser("register", parents=[http], help="register a playbook in the catalog"))

    catalog = sub.add_parser("catalog", help="the playbook catalog")
    catalog_sub = catalog.add_subparsers(dest="catalog_command", required=True)
    _register_options(catalog_sub.add_parser("register", parents=[http], help="register a playbook"))
    listing = catalog_sub.add_parser("list", parents=[http], help="the catalog's entries, newest first")
    listing.add_argument("--resource-type", default=None)
    listing.set_defaults(func=_catalog_list)

    execute = sub.add_parser("execute", help="run playbooks and see how they are doing")
    execute_sub = execute.add_subparsers(dest="execute_command", required=True)
    playbook = execute_sub.add_parser("playbook", parents=[http], help="run the latest version of a playbook")
    playbook.add_argument("path", help="the playbook's catalog path")
    playbook.add_argument("--payload", default=None, help="the parameters as JSON text")
    playbook.add_argument("--input", type=Path, default=None, help="a JSON file of parameters")
    playbook.add_argument("--merge", action="store_true", help="deep-merge the parameters into the workload")
    playbook.set_defaults(func=_execute_playbook)
    status = execute_sub.add_parser("status", parents=[http], help="an execution with its events")
    status.add_argument("execution_id")
    status.set_defaults(func=_execute_status)

    events = sub.add_parser("events", help="the events stream")
    events_sub = events.add_subparsers(dest="events_command", required=True)
    watch = events_sub.add_parser("watch", help="print events as they happen, straight from NATS")
    watch.add_argument("--execution", default=None, help="only this execution's events")
    watch.add_argument("--type", default=None, help="only execution events of this type")
    start = watch.add_mutually_exclusive_group()
    start.add_argument("--from-seq", type=_positive, default=None, help="replay from this stream sequence")
    start.add_argument("--since", default=None, help="replay from a time: ISO 8601, or 30s, 5m, 2h, 1d ago")
    start.add_argument("--since-id", type=int, default=None, help="replay the events after this event id")
    watch.add_argument("--count", type=_positive, default=None, help="stop after this many events")
    watch.add_argument("--timeout", type=float, default=None, help="stop after this many seconds")
    watch.add_argument("--json", action="store_true", help="print each event's envelope as JSON")
    watch.add_argument("--nats-url", default=None, help="the NATS server (default: NOETL_NATS_URL)")
    watch.set_defaults(func=_events_watch)
