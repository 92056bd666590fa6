"""The `noetl` command: the whole system on this machine (`dev`), each part alone (`api`,
`consumer`, `worker`, `db migrate`), and the commands of a client of a running system
(`noetl.cli_client`).

An expected failure (a server that cannot be reached, a port in use, a bad setting, an error
answer of the API) is one line on stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import asyncio
import sys
from enum import StrEnum
from importlib.metadata import version as package_version
from pathlib import Path
from typing import Annotated

import typer

from noetl import cli_client
from noetl.problems import Problem
from noetl.settings import Settings, get_settings

PACKAGE = "noetl-control-plane"

app = typer.Typer(
    name="noetl",
    help="NoETL's event-driven control plane: run it, and work with a running one.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
db_app = typer.Typer(help="Database administration.", no_args_is_help=True)
app.add_typer(db_app, name="db")
auth_app = typer.Typer(help="The secrets of a deployment with auth on.", no_args_is_help=True)
app.add_typer(auth_app, name="auth")
cli_client.add_commands(app)


class LogLevel(StrEnum):
    debug = "debug"
    info = "info"
    warning = "warning"
    error = "error"


def _print_version(asked: bool) -> None:
    if asked:
        typer.echo(f"noetl {package_version(PACKAGE)}")
        raise typer.Exit()


@app.callback()
def noetl(
    log_level: Annotated[
        LogLevel, typer.Option(help="How much the processes log (on stderr).")
    ] = LogLevel.info,
    version: Annotated[
        bool,
        typer.Option("--version", callback=_print_version, is_eager=True, help="Print the version and exit."),
    ] = False,
) -> None:
    """NoETL's event-driven control plane: run it, and work with a running one."""
    from noetl import logs

    logs.configure(log_level.value, as_json=get_settings().log_format == "json")


@app.command()
def dev(
    data_dir: Annotated[
        Path | None,
        typer.Option(
            help="Where NATS and PostgreSQL keep their data across restarts "
            "(default: the user's data directory, e.g. ~/.local/share/noetl).",
        ),
    ] = None,
    port: Annotated[int, typer.Option(help="The API's port on 127.0.0.1.")] = 8083,
    nats_port: Annotated[int, typer.Option(help="The embedded NATS server's port.")] = 4222,
    pg_port: Annotated[int, typer.Option(help="The embedded PostgreSQL's port.")] = 5433,
    workers: Annotated[
        int, typer.Option(min=0, help="Local worker pools of runtime python to start (0 for none).")
    ] = 1,
    auth: Annotated[
        bool,
        typer.Option(
            help="Lock every door: API tokens per role, a NATS user per part, the consumers' own "
            "database role; the secrets are made once, in <data-dir>/credentials (0600).",
        ),
    ] = False,
) -> None:
    """The whole system on this machine: NATS, PostgreSQL, the consumers, workers and the API.

    Each part is a child process, restarted when it dies; Ctrl-C or SIGTERM stops them in order.
    """
    from noetl.dev import DevOptions, run_dev

    options = DevOptions(
        data_dir=data_dir, port=port, nats_port=nats_port, pg_port=pg_port, workers=workers, auth=auth
    )
    raise typer.Exit(run_dev(options))


@app.command()
def api(
    host: Annotated[str, typer.Option(help="The address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="The port to listen on.")] = 8083,
) -> None:
    """The HTTP API. It needs only NOETL_NATS_URL: it has no database credentials."""
    import uvloop

    from noetl.api_server import serve

    uvloop.run(serve(get_settings(), host=host, port=port))


MetricsPort = Annotated[
    int | None,
    typer.Option(
        min=0,
        max=65535,
        help="Serve Prometheus metrics on this port, at /metrics (default: NOETL_METRICS_PORT; 0: none).",
    ),
]
MetricsHost = Annotated[
    str | None,
    typer.Option(help="The address the metrics listen on (default: NOETL_METRICS_HOST, else 127.0.0.1)."),
]


def _settings(metrics_port: int | None, metrics_host: str | None) -> Settings:
    """The settings, with the metrics options of the command line over the environment's."""
    given = {"metrics_port": metrics_port, "metrics_host": metrics_host}
    return get_settings().model_copy(update={k: v for k, v in given.items() if v is not None})


@app.command()
def consumer(
    names: Annotated[
        list[str],
        typer.Argument(
            metavar="NAME...",
            help="The consumers to run in this process; an unknown name is refused with the list.",
        ),
    ],
    metrics_port: MetricsPort = None,
    metrics_host: MetricsHost = None,
) -> None:
    """Consumers that apply commands to PostgreSQL (NOETL_NATS_URL and NOETL_PG_DSN).

    Copies of a consumer, in this process or others, share its work.
    """
    import uvloop

    from consumers.process import CONSUMER_NAMES, run_process

    unknown = [name for name in names if name not in CONSUMER_NAMES]
    if unknown:
        raise typer.BadParameter(
            f"unknown {', '.join(unknown)}; choose from {', '.join(CONSUMER_NAMES)}", param_hint="NAME"
        )
    uvloop.run(run_process(names, _settings(metrics_port, metrics_host)))


@db_app.command("migrate")
def migrate() -> None:
    """Apply the schema migrations that are missing, as the schema's owner.

    With NOETL_CONSUMER_DB_PASSWORD set, the consumers' role `noetl_consumer` (only reads and
    writes rows) may log in with it. A consumer on the owner's role also migrates at start-up.
    """
    from noetl.reach import probe_postgres
    from noetl.store.migrate import migrate as apply
    from noetl.store.roles import CONSUMER_ROLE

    settings = get_settings()
    dsn = settings.database_dsn()
    asyncio.run(probe_postgres(dsn))
    password = settings.consumer_db_password
    applied = asyncio.run(apply(dsn, consumer_password=password.get_secret_value() if password else None))
    typer.echo(f"applied {len(applied)} migration(s): {applied}" if applied else "schema is up to date")
    if password:
        typer.echo(f"role {CONSUMER_ROLE} may log in (NOETL_CONSUMER_DB_PASSWORD)")


@auth_app.command("init")
def auth_init(
    directory: Annotated[
        Path, typer.Option("--dir", help="Where to keep them (made 0700; the files 0600).")
    ] = Path("secrets"),
) -> None:
    """Make a deployment's secrets once (kept on the next call): a token per API role, a NATS
    user per part, the consumers' database password, and `compose.env` for
    `docker compose --env-file`."""
    from noetl.access import COMPOSE_ENV_FILE, TOKENS_FILE, load_or_create, write_private

    access = load_or_create(directory)
    write_private(directory / COMPOSE_ENV_FILE, access.compose_env())
    typer.echo(f"tokens per role in {directory / TOKENS_FILE} (send one as NOETL_API_TOKEN)")
    typer.echo(f"docker compose --env-file {directory / COMPOSE_ENV_FILE} up")


@app.command()
def worker(
    name: Annotated[
        str | None,
        typer.Option(
            help="The pool's name in the registry (default: NOETL_WORKER_NAME, else <hostname>-<pid>)."
        ),
    ] = None,
    runtime: Annotated[str, typer.Option(help="The runtime whose jobs this pool runs.")] = "python",
    capacity: Annotated[int, typer.Option(min=1, help="Jobs this pool runs at once.")] = 4,
    metrics_port: MetricsPort = None,
    metrics_host: MetricsHost = None,
) -> None:
    """A worker pool: it registers on the bus, beats, and runs the jobs of its runtime.

    On SIGTERM or Ctrl-C it takes no new jobs, lets running steps finish within
    NOETL_WORKER_GRACE_SECONDS, hands the rest back and deregisters.
    """
    import uvloop

    from noetl.worker.main import run_worker

    settings = _settings(metrics_port, metrics_host)
    uvloop.run(run_worker(settings, name=name, runtime=runtime, capacity=capacity))


def main(argv: list[str] | None = None) -> int:
    try:
        app(args=argv, prog_name="noetl")
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else int(exc.code is not None)
    except Problem as exc:
        print(f"noetl: {exc}", file=sys.stderr)
        return exc.exit_code
    except BrokenPipeError:
        cli_client.silence_stdout()
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
