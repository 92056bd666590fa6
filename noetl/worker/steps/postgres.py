"""`type: postgres`: SQL against the database a credential names (or `db_*` inputs give).

The command is rendered with the step's inputs at top level (text inputs with `'` doubled, so
`'{{ name }}'` stays one SQL string), then run as one script in autocommit, so its statements
commit together or not at all. The result is NoETL's: `command_<i>` for each statement (from 0),
`{status, rows, row_count, columns}` for one that returns rows, `{status, row_count, message}`
otherwise.
"""

from __future__ import annotations

import datetime
import decimal
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

from noetl.playbook.steps import PostgresStep
from noetl.templates import RenderError, render_text
from noetl.worker.steps.base import StepFailed, StepRun

CONNECT_TIMEOUT = 10
Params = Sequence[Any] | Mapping[str, Any] | None
# Connection fields in NoETL's spellings, to libpq's.
FIELDS = {
    "host": ("db_host", "host", "pg_host"),
    "port": ("db_port", "port", "pg_port"),
    "user": ("db_user", "user", "username", "pg_user"),
    "password": ("db_password", "password", "pg_password"),
    "dbname": ("db_name", "database", "dbname", "db", "pg_db"),
    "sslmode": ("sslmode",),
}
DSN_FIELDS = ("db_conn_string", "dsn", "connection_string")


def connection_info(run: StepRun, auth: Any) -> str:
    """The libpq connection string: the first postgres credential of `auth`, under the step's own
    `db_*` inputs (which win)."""
    given: dict[str, Any] = {}
    for item, fields in run.auth(auth):
        if item.service in (None, "postgres", "postgresql"):
            given = fields
            break
    merged = {**given, **{k: v for k, v in run.input.items() if k.startswith("db_") or k in DSN_FIELDS}}
    dsn = next((merged[k] for k in DSN_FIELDS if merged.get(k)), None)
    params: dict[str, str] = {}
    for name, spellings in FIELDS.items():
        value = next((merged[s] for s in spellings if merged.get(s) not in (None, "")), None)
        if value is not None:
            params[name] = str(value)
    if dsn is None and not {"host", "dbname"} <= params.keys():
        raise StepFailed(
            "the postgres connection is not configured: name a credential in `auth` "
            "(its data holds db_host, db_port, db_user, db_password, db_name) or give those as inputs"
        )
    return make_conninfo(dsn or "", connect_timeout=CONNECT_TIMEOUT, **params)


def _sql_scope(run: StepRun) -> dict[str, Any]:
    quoted = {k: v.replace("'", "''") if isinstance(v, str) else v for k, v in run.input.items()}
    return {**run.scope, **quoted}


def rendered(run: StepRun, command: str) -> str:
    try:
        return render_text(command, _sql_scope(run))
    except RenderError as exc:
        raise StepFailed(f"`command`: {exc}") from None


def plain(value: Any) -> Any:
    """A column value as JSON holds it."""
    if isinstance(value, decimal.Decimal):
        return float(value)
    if isinstance(value, datetime.datetime | datetime.date | datetime.time):
        return value.isoformat()
    if isinstance(value, datetime.timedelta):
        return value.total_seconds()
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, bytes | memoryview):
        return bytes(value).hex()
    return value


async def execute(conninfo: str, query: str | sql.Composable, params: Params = None) -> dict[str, Any]:
    """Run `query` (one statement or, without parameters, a script) and read every statement's
    outcome."""
    results: dict[str, Any] = {}
    try:
        async with await psycopg.AsyncConnection.connect(conninfo, autocommit=True) as conn:
            cur = await conn.execute(query, params, prepare=False)
            while True:
                outcome: dict[str, Any] = {"status": "success", "row_count": cur.rowcount}
                if cur.description is not None:
                    columns = [column.name for column in cur.description]
                    rows = [dict(zip(columns, map(plain, row), strict=True)) for row in await cur.fetchall()]
                    outcome.update(rows=rows, row_count=len(rows), columns=columns)
                else:
                    outcome["message"] = cur.statusmessage
                results[f"command_{len(results)}"] = outcome
                if not cur.nextset():
                    break
    except psycopg.Error as exc:
        raise StepFailed(f"postgres: {str(exc).strip()}") from None
    return results


async def run(run: StepRun) -> Any:
    step = run.step
    assert isinstance(step, PostgresStep)
    return await execute(connection_info(run, step.auth), rendered(run, step.command))
