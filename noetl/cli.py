"""The `noetl` command: the whole system (`dev`), each part alone, and a worker pool."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path

import uvloop

from noetl.settings import get_settings


def _dev(args: argparse.Namespace) -> int:
    from noetl.dev import DevOptions, run_dev
    from noetl.embedded import PortTaken

    opts = DevOptions(
        data_dir=args.data_dir.expanduser().resolve(),
        port=args.port,
        nats_port=args.nats_port,
        pg_port=args.pg_port,
        workers=args.workers,
    )
    opts.data_dir.mkdir(parents=True, exist_ok=True)
    try:
        return run_dev(opts)
    except PortTaken as exc:
        print(f"noetl dev: {exc}", file=sys.stderr)
        return 2


def _api(args: argparse.Namespace) -> int:
    import uvicorn

    uvicorn.run(
        "noetl.facade.app:create_app",
        factory=True,
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        access_log=False,
    )
    return 0


def _consumer(args: argparse.Namespace) -> int:
    from consumers.process import CONSUMERS, run_process

    unknown = [n for n in args.names if n not in CONSUMERS]
    if unknown:
        print(f"noetl consumer: unknown {unknown}; choose from {sorted(CONSUMERS)}", file=sys.stderr)
        return 2
    uvloop.run(run_process(args.names, get_settings()))
    return 0


def _migrate(_: argparse.Namespace) -> int:
    from noetl.store.migrate import migrate

    applied = asyncio.run(migrate(get_settings().database_dsn()))
    print(f"applied {len(applied)} migration(s): {applied}" if applied else "schema is up to date")
    return 0


def _worker(args: argparse.Namespace) -> int:
    from noetl.worker.main import run_worker

    uvloop.run(run_worker(get_settings(), name=args.name, runtime=args.runtime, capacity=args.capacity))
    return 0


def parser() -> argparse.ArgumentParser:
    from noetl.dev import default_data_dir

    top = argparse.ArgumentParser(prog="noetl", description="NoETL's event-driven control plane")
    top.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    sub = top.add_subparsers(dest="command", required=True)

    dev = sub.add_parser("dev", help="the whole system on this machine (embedded NATS and PostgreSQL)")
    dev.add_argument("--data-dir", type=Path, default=default_data_dir(), help="kept across restarts")
    dev.add_argument("--port", type=int, default=8083, help="the API's port on 127.0.0.1")
    dev.add_argument("--nats-port", type=int, default=4222)
    dev.add_argument("--pg-port", type=int, default=5433)
    dev.add_argument("--workers", type=int, default=1, help="local worker pools to start (0 for none)")
    dev.set_defaults(func=_dev)

    api = sub.add_parser("api", help="the HTTP facade (needs only NOETL_NATS_URL)")
    api.add_argument("--host", default="127.0.0.1")
    api.add_argument("--port", type=int, default=8083)
    api.set_defaults(func=_api)

    consumer = sub.add_parser("consumer", help="run consumers: runtime, catalog, execution, sweeper, outbox")
    consumer.add_argument("names", nargs="+", metavar="name")
    consumer.set_defaults(func=_consumer)

    db = sub.add_parser("db", help="database administration")
    db_sub = db.add_subparsers(dest="db_command", required=True)
    db_sub.add_parser("migrate", help="apply schema migrations").set_defaults(func=_migrate)

    worker = sub.add_parser("worker", help="a worker pool that registers and beats on the bus")
    worker.add_argument("--name", required=True)
    worker.add_argument("--runtime", default="python")
    worker.add_argument("--capacity", type=int, default=4)
    worker.set_defaults(func=_worker)

    from noetl.cli_client import add_client_commands

    add_client_commands(sub)
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
