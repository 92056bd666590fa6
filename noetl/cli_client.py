"""The `noetl` commands of a client of a running system: register, catalog, execute, executions,
execution, pools (over HTTP) and events (straight from NATS).

HTTP commands take `--host`/`--port` (default localhost:8083, or `NOETL_API_URL`); an error answer
exits 1 with the server's detail on stderr. Every read takes `--json`: its stdout is then one JSON
document (a line per event for `events watch`), for scripts.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from contextlib import aclosing
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from noetl import client
from noetl.execution_view import StepRun, StillRunning, follow, step_runs
from noetl.problems import BadInput, Problem
from noetl.settings import get_settings

# `execute playbook --wait`: how the execution ended, as an exit code.
EXIT_FAILED = 1
EXIT_CANCELLED = 3
EXIT_STILL_RUNNING = 4
EXIT_BY_STATUS = {"completed": 0, "failed": EXIT_FAILED, "cancelled": EXIT_CANCELLED}

Host = Annotated[
    str | None,
    typer.Option(
        help=f"The API's host (default: {client.DEFAULT_HOST}, or the host of ${client.API_URL_ENV})."
    ),
]
Port = Annotated[int | None, typer.Option(help=f"The API's port (default: {client.DEFAULT_PORT}).")]
AsJson = Annotated[bool, typer.Option("--json", help="Print the answer as JSON alone, for scripts.")]
ResourceType = Annotated[str, typer.Option(help="The resource's kind.")]

catalog_app = typer.Typer(help="The playbook catalog.", no_args_is_help=True)
execute_app = typer.Typer(help="Run playbooks and see how they are doing.", no_args_is_help=True)
executions_app = typer.Typer(help="Executions, newest first.", no_args_is_help=True)
execution_app = typer.Typer(help="One execution: its steps, or cancel it.", no_args_is_help=True)
pools_app = typer.Typer(help="The worker pools in the registry.", no_args_is_help=True)
events_app = typer.Typer(help="The events stream.", no_args_is_help=True)


def add_commands(app: typer.Typer) -> None:
    app.command("register")(register)
    app.add_typer(catalog_app, name="catalog")
    app.add_typer(execute_app, name="execute")
    app.add_typer(executions_app, name="executions")
    app.add_typer(execution_app, name="execution")
    app.add_typer(pools_app, name="pools")
    app.add_typer(events_app, name="events")


# --------------------------------------------------------------------------- output


def _console() -> Console:
    """stdout, as wide as the terminal; unbounded when piped, so a script reads whole lines."""
    console = Console(markup=False, highlight=False, emoji=False)
    if console.is_terminal:
        return console
    return Console(markup=False, highlight=False, emoji=False, width=10_000)


def silence_stdout() -> None:
    """The reader of stdout is gone (`| head`): nothing more can reach it, not even at exit."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def _table(*columns: str) -> Table:
    return Table(*columns, box=None, pad_edge=False, header_style="bold")


def _show(body: Any, as_json: bool, summary: str | None = None) -> None:
    if as_json:
        print(json.dumps(body))
        return
    if summary:
        print(summary)
    print(json.dumps(body, indent=2))


def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    if value < 60:
        return f"{value:.3f}s" if value < 1 else f"{value:.1f}s"
    minutes, seconds = divmod(int(value), 60)
    return f"{minutes}m{seconds:02d}s"


def _moment(value: Any) -> datetime | None:
    return datetime.fromisoformat(value) if isinstance(value, str) and value else None


def _when(value: Any) -> str:
    moment = _moment(value)
    return moment.strftime("%Y-%m-%d %H:%M:%S") if moment else "-"


def _span(start: Any, end: Any) -> float | None:
    began, ended = _moment(start), _moment(end)
    return (ended - began).total_seconds() if began and ended else None


def _accepted(body: Any) -> str | None:
    """The facade answers 202 when the outcome is late: say where to fetch it."""
    if isinstance(body, dict) and body.get("status") == "accepted" and "request_id" in body:
        return f"accepted, outcome not known yet: GET /api/requests/{body['request_id']}"
    return None


# --------------------------------------------------------------------------- register and catalog


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise BadInput(f"cannot read {path}: {exc.strerror or exc}") from None


def register(
    file: Annotated[Path, typer.Argument(help="The playbook's YAML file.")],
    resource_type: ResourceType = "Playbook",
    host: Host = None,
    port: Port = None,
    as_json: AsJson = False,
) -> None:
    """Register a playbook in the catalog (a new version when its path is known)."""
    content = _read(file)
    body = client.register(client.base_url(host, port), content, resource_type)
    summary = _accepted(body) or (
        f"registered {body.get('path')} version {body.get('version')} (catalog_id {body.get('catalog_id')})"
    )
    _show(body, as_json, summary)


catalog_app.command("register")(register)


@catalog_app.command("list")
def catalog_list(
    resource_type: Annotated[str | None, typer.Option(help="Only entries of this kind.")] = None,
    host: Host = None,
    port: Port = None,
    as_json: AsJson = False,
) -> None:
    """The catalog's entries, newest first."""
    body = client.catalog_list(client.base_url(host, port), resource_type)
    if as_json:
        print(json.dumps(body))
        return
    entries = body.get("entries", [])
    table = _table("PATH", "VERSION", "KIND", "CATALOG_ID", "CREATED_AT")
    for entry in entries:
        table.add_row(
            *(str(entry.get(key, "")) for key in ("path", "version", "kind", "catalog_id", "created_at"))
        )
    console = _console()
    console.print(table)
    console.print(f"({len(entries)} entr{'y' if len(entries) == 1 else 'ies'})")


# --------------------------------------------------------------------------- execute


def _parameters(payload: str | None, input_file: Path | None) -> Any:
    """`--payload` (JSON text), else `--input` (a JSON file), else {}."""
    if payload is not None:
        try:
            return json.loads(payload)
        except ValueError as exc:
            raise BadInput(f"--payload is not JSON: {exc}") from None
    if input_file is not None:
        try:
            return json.loads(_read(input_file))
        except ValueError as exc:
            raise BadInput(f"{input_file} is not JSON: {exc}") from None
    return {}


@execute_app.command("playbook")
def execute_playbook(
    path: Annotated[str, typer.Argument(help="The playbook's catalog path.")],
    host: Host = None,
    port: Port = None,
    payload: Annotated[str | None, typer.Option(help="The parameters, as JSON text.")] = None,
    input_file: Annotated[
        Path | None, typer.Option("--input", help="A JSON file of parameters (--payload wins).")
    ] = None,
    merge: Annotated[
        bool, typer.Option("--merge", help="Deep-merge the parameters into the workload.")
    ] = False,
    wait: Annotated[
        bool,
        typer.Option(
            "--wait",
            help="Follow the run, print each step as it finishes, and exit 0 only when the "
            f"execution completes ({EXIT_FAILED} failed, {EXIT_CANCELLED} cancelled, "
            f"{EXIT_STILL_RUNNING} still running after --timeout).",
        ),
    ] = False,
    timeout: Annotated[
        float | None, typer.Option(min=0, help="With --wait: stop waiting after this many seconds.")
    ] = None,
    as_json: AsJson = False,
) -> None:
    """Run the latest version of a playbook."""
    parameters = _parameters(payload, input_file)
    api = client.base_url(host, port)
    body = client.execute(api, path, parameters, merge)
    if not wait:
        _show(body, as_json, _accepted(body) or f"execution_id: {body.get('execution_id')}")
        return
    raise typer.Exit(_wait(api, body, as_json, timeout))


def _applied(api: str, body: dict[str, Any], deadline: float | None) -> dict[str, Any]:
    """The run's response; when it was late (202), the stored one once the command is applied."""
    while _accepted(body):
        if deadline is not None and time.monotonic() >= deadline:
            raise StillRunning(body)
        time.sleep(0.3)
        outcome = client.request_outcome(api, body["request_id"])
        if outcome.get("state") == "done":
            response = outcome.get("response")
            if outcome.get("status_code", 200) >= 400:
                detail = response.get("detail", response) if isinstance(response, dict) else response
                raise client.ApiError(outcome["status_code"], detail)
            body = response
    return body


def _wait(api: str, body: dict[str, Any], as_json: bool, timeout: float | None) -> int:
    deadline = None if timeout is None else time.monotonic() + timeout

    def finished(run: StepRun) -> None:
        if not as_json:
            print(f"  {run.step}  {run.status.lower()}  {_seconds(run.duration)}", flush=True)

    try:
        started = _applied(api, body, deadline)
        execution_id = str(started["execution_id"])
        if not as_json:
            print(f"execution {execution_id}: {started.get('path')} version {started.get('version')}")
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        detail = follow(lambda: client.execution_status(api, execution_id), finished, timeout=left)
    except StillRunning as still:
        if as_json:
            print(json.dumps(still.detail))
        print(f"noetl: still running after {timeout:g}s", file=sys.stderr)
        return EXIT_STILL_RUNNING
    status = str(detail.get("status"))
    if as_json:
        print(json.dumps(detail))
    else:
        took = _seconds(_span(detail.get("start_time"), detail.get("end_time")))
        print(f"execution {execution_id} {status} in {took}")
        if status == "completed":
            print(json.dumps(detail.get("result")))
    if status == "failed":
        print(f"noetl: execution {execution_id} failed: {detail.get('error')}", file=sys.stderr)
    elif status == "cancelled":
        print(f"noetl: execution {execution_id} was cancelled", file=sys.stderr)
    return EXIT_BY_STATUS.get(status, EXIT_FAILED)


@execute_app.command("status")
def execute_status(
    execution_id: Annotated[str, typer.Argument(help="The execution's id.")],
    host: Host = None,
    port: Port = None,
    as_json: AsJson = False,
) -> None:
    """An execution with its events, as the API answers."""
    body = client.execution_status(client.base_url(host, port), execution_id)
    _show(body, as_json, f"execution {body.get('execution_id')}: {body.get('status')}")


# --------------------------------------------------------------------------- executions


@executions_app.command("list")
def executions_list(
    status: Annotated[
        str | None,
        typer.Option(help="Only executions in this status: running, completed, failed, cancelled."),
    ] = None,
    path: Annotated[str | None, typer.Option(help="Only executions of this playbook path.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000, help="At most this many.")] = 50,
    host: Host = None,
    port: Port = None,
    as_json: AsJson = False,
) -> None:
    """Executions, newest first."""
    body = client.executions(client.base_url(host, port), status=status, path=path, limit=limit)
    if as_json:
        print(json.dumps(body))
        return
    items = body.get("items", [])
    table = _table("ID", "PATH", "VERSION", "STATUS", "STARTED", "DURATION")
    for item in items:
        table.add_row(
            str(item.get("execution_id")),
            str(item.get("path")),
            str(item.get("version")),
            str(item.get("status")),
            _when(item.get("start_time")),
            _seconds(_span(item.get("start_time"), item.get("end_time"))),
        )
    console = _console()
    console.print(table)
    console.print(f"({len(items)} execution{'' if len(items) == 1 else 's'})")


@execution_app.command("show")
def execution_show(
    execution_id: Annotated[str, typer.Argument(help="The execution's id.")],
    host: Host = None,
    port: Port = None,
    as_json: AsJson = False,
) -> None:
    """An execution and its steps, with their status and duration."""
    detail = client.execution_status(client.base_url(host, port), execution_id)
    if as_json:
        print(json.dumps(detail))
        return
    console = _console()
    console.print(
        f"execution {detail.get('execution_id')}: {detail.get('status')} "
        f"({detail.get('path')} version {detail.get('version')})"
    )
    took = _seconds(_span(detail.get("start_time"), detail.get("end_time")))
    began, ended = _when(detail.get("start_time")), _when(detail.get("end_time"))
    console.print(f"started {began}, ended {ended} ({took})")
    table = _table("STEP", "STATUS", "ATTEMPTS", "DURATION", "WORKER")
    for run in step_runs(detail.get("events", [])):
        duration = _seconds(run.duration)
        table.add_row(run.step, run.status.lower(), str(run.attempts), duration, run.worker or "-")
    console.print(table)
    if detail.get("result") is not None:
        console.print(f"result: {json.dumps(detail['result'])}")
    if detail.get("error"):
        console.print(f"error: {detail['error']}")


@execution_app.command("cancel")
def execution_cancel(
    execution_id: Annotated[str, typer.Argument(help="The execution's id.")],
    reason: Annotated[str | None, typer.Option(help="Why, kept with the cancellation.")] = None,
    host: Host = None,
    port: Port = None,
    as_json: AsJson = False,
) -> None:
    """Cancel an execution: its running steps are stopped on their workers."""
    body = client.cancel(client.base_url(host, port), execution_id, reason)
    _show(body, as_json, _accepted(body) or f"execution {body.get('execution_id')}: {body.get('status')}")


# --------------------------------------------------------------------------- pools


def _ago(value: Any) -> str:
    moment = _moment(value)
    if moment is None:
        return "never"
    return f"{_seconds(max(0.0, (datetime.now(UTC) - moment).total_seconds()))} ago"


@pools_app.command("list")
def pools_list(
    runtime: Annotated[str | None, typer.Option(help="Only pools of this runtime.")] = None,
    status: Annotated[str | None, typer.Option(help="Only pools in this status: ready, offline.")] = None,
    host: Host = None,
    port: Port = None,
    as_json: AsJson = False,
) -> None:
    """The worker pools in the registry, with their liveness (status and last heartbeat)."""
    body = client.worker_pools(client.base_url(host, port), runtime=runtime, status=status)
    if as_json:
        print(json.dumps(body))
        return
    items = body.get("items", [])
    table = _table("NAME", "RUNTIME", "STATUS", "CAPACITY", "LAST BEAT", "HOST", "PID")
    for item in items:
        meta = item.get("runtime") or {}
        table.add_row(
            str(item.get("name")),
            str(meta.get("type", "-")),
            str(item.get("status")),
            str(item.get("capacity", "-")),
            _ago(item.get("heartbeat")),
            str(meta.get("hostname", "-")),
            str(meta.get("pid", "-")),
        )
    console = _console()
    console.print(table)
    console.print(f"({len(items)} pool{'' if len(items) == 1 else 's'})")


# --------------------------------------------------------------------------- events watch


@events_app.command("watch")
def events_watch(
    execution: Annotated[str | None, typer.Option(help="Only this execution's events.")] = None,
    event_type: Annotated[
        str | None, typer.Option("--type", help="Only execution events of this type.")
    ] = None,
    from_seq: Annotated[int | None, typer.Option(min=1, help="Replay from this stream sequence.")] = None,
    since: Annotated[
        str | None, typer.Option(help="Replay from a time: ISO 8601, or 30s, 5m, 2h, 1d ago.")
    ] = None,
    since_id: Annotated[int | None, typer.Option(help="Replay the events after this event id.")] = None,
    count: Annotated[int | None, typer.Option(min=1, help="Stop after this many events.")] = None,
    timeout: Annotated[float | None, typer.Option(help="Stop after this many seconds.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print each event's envelope as JSON.")] = False,
    nats_url: Annotated[str | None, typer.Option(help="The NATS server (default: NOETL_NATS_URL).")] = None,
) -> None:
    """Print events as they happen, straight from NATS.

    Replay stored events first with --from-seq, --since or --since-id.
    """
    if sum(option is not None for option in (from_seq, since, since_id)) > 1:
        raise typer.BadParameter("give at most one of them", param_hint="--from-seq, --since, --since-id")
    try:
        start = client.parse_since(since) if since else None
    except ValueError as exc:
        raise BadInput(f"--since: {exc}") from None
    options = client.WatchOptions(
        execution=execution,
        event_type=event_type,
        from_seq=from_seq,
        since=start,
        since_id=since_id,
        count=count,
    )
    try:
        asyncio.run(_watch(nats_url or get_settings().nats_url, options, as_json, timeout))
    except BrokenPipeError:  # `| head` has read what it wanted
        silence_stdout()


async def _watch(url: str, options: client.WatchOptions, as_json: bool, timeout: float | None) -> None:
    from nats.js.errors import NotFoundError

    from noetl.bus.connection import nats_options
    from noetl.reach import connect_nats

    nc = await connect_nats(url, name="noetl-events-watch", options=nats_options(get_settings()))
    ready = False
    try:
        events = client.watch(nc.jetstream(), options)
        async with asyncio.timeout(timeout), aclosing(events):
            async for event in events:
                if not ready:
                    ready = True
                    following = f"following {options.filter_subject()} on {url}"
                    print(f"noetl events watch: {following}", file=sys.stderr, flush=True)
                if event is not None:
                    print(event.model_dump_json() if as_json else client.event_line(event), flush=True)
    except TimeoutError:
        pass
    except NotFoundError:
        raise Problem("the events stream does not exist yet (start the consumers first)") from None
    finally:
        await nc.close()
