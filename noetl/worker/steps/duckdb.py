"""`type: duckdb`: SQL in an in-process DuckDB, on a database file of this worker: the step's
`database`, else one file per execution under `NOETL_WORKER_DATA_DIR`, so the DuckDB steps of one
execution on one worker share their tables.

Nothing is downloaded at run time: `INSTALL x` of an extension that is installed is a no-op, and
of one that is not (or `LOAD` of it, or `auth` that needs it: postgres for a PostgreSQL secret,
httpfs for gcs and s3) fails the step with an error that names it. The result is the postgres
step's: `command_<i>` per statement.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import duckdb

from noetl.playbook.steps import DuckdbStep
from noetl.worker.steps.base import StepFailed, StepRun
from noetl.worker.steps.postgres import plain, rendered

EXTENSION_STATEMENT = re.compile(r"^(?:FORCE\s+)?(INSTALL|LOAD)\s+['\"]?(\w+)['\"]?", re.IGNORECASE)
LEADING_COMMENTS = re.compile(r"^(?:\s+|--[^\n]*(?:\n|$)|/\*.*?\*/)*", re.DOTALL)
SECRET_EXTENSIONS = {"postgres": "postgres", "postgresql": "postgres", "gcs": "httpfs", "s3": "httpfs"}
# What DuckDB may do by itself: load what is installed, never fetch anything.
CONFIG = {"autoinstall_known_extensions": "false", "autoload_known_extensions": "true"}


def database_path(run: StepRun, database: str | None) -> str:
    if database:
        return str(run.render(database, "`database`"))
    directory = run.tools.data_dir / "duckdb"
    directory.mkdir(parents=True, exist_ok=True)
    return str(directory / f"{run.job.execution_id}.duckdb")


def installed(con: duckdb.DuckDBPyConnection) -> set[str]:
    """The installed extensions, by name and by alias (`postgres` is `postgres_scanner`)."""
    rows = con.execute("SELECT extension_name, aliases FROM duckdb_extensions() WHERE installed").fetchall()
    return {name.lower() for row in rows for name in (row[0], *(row[1] or []))}


def _missing(name: str) -> StepFailed:
    return StepFailed(
        f"DuckDB needs the extension {name!r}, which is not installed on this worker "
        "(extensions are not downloaded at run time: install it with the worker's image)"
    )


def _secrets(run: StepRun, auth: Any) -> list[tuple[str, str]]:
    """(extension it needs, `CREATE SECRET` statement) for the step's auth items, one per alias."""
    statements = []
    for index, (item, fields) in enumerate(run.auth(auth)):
        name = re.sub(r"\W", "_", item.alias or f"noetl_{index}")
        service = item.service or "postgres"
        if service in ("postgres", "postgresql"):
            pairs = {
                "HOST": fields.get("db_host", fields.get("host")),
                "PORT": fields.get("db_port", fields.get("port")),
                "DATABASE": fields.get("db_name", fields.get("database", fields.get("dbname"))),
                "USER": fields.get("db_user", fields.get("user", fields.get("username"))),
                "PASSWORD": fields.get("db_password", fields.get("password")),
            }
            kind = "postgres"
        elif service in ("gcs", "s3"):
            pairs = {
                "KEY_ID": fields.get("key_id", fields.get("access_key_id")),
                "SECRET": fields.get("secret", fields.get("secret_key", fields.get("secret_access_key"))),
                "REGION": fields.get("region"),
            }
            kind = service
        else:
            raise StepFailed(
                f"auth {item.alias or ''}: DuckDB takes postgres, gcs or s3 credentials, not {service!r}"
            )
        options = ", ".join(
            f"{k} '{str(v).replace(chr(39), chr(39) * 2)}'" for k, v in pairs.items() if v is not None
        )
        statements.append(
            (SECRET_EXTENSIONS[service], f"CREATE OR REPLACE SECRET {name} (TYPE {kind}, {options})")
        )
    return statements


def run_script(path: str, sql: str, secrets: list[tuple[str, str]]) -> dict[str, Any]:
    """Run the statements on the database file (in a thread: DuckDB releases the GIL)."""
    try:
        statements = [statement.query for statement in duckdb.extract_statements(sql)]
    except duckdb.Error as exc:
        raise StepFailed(f"duckdb: {exc}") from None
    results: dict[str, Any] = {}
    with duckdb.connect(path, config=CONFIG) as con:
        have = installed(con)
        for extension, statement in secrets:
            if extension not in have:
                raise _missing(extension)
            con.execute(statement)
        for query in statements:
            wanted = EXTENSION_STATEMENT.match(LEADING_COMMENTS.sub("", query, count=1))
            if wanted is not None:
                if wanted.group(2).lower() not in have:
                    raise _missing(wanted.group(2).lower())
                if wanted.group(1).upper() == "INSTALL":
                    results[f"command_{len(results)}"] = {
                        "status": "success",
                        "row_count": 0,
                        "message": "installed",
                    }
                    continue
            try:
                con.execute(query)
                description = con.description
                rows = con.fetchall() if description else []
            except duckdb.Error as exc:
                message = str(exc)
                extension = re.search(r"extension \"?(\w+)\"?", message, re.IGNORECASE)
                if extension and extension.group(1).lower() not in have and "install" in message.lower():
                    raise _missing(extension.group(1).lower()) from None
                raise StepFailed(f"duckdb: {message}") from None
            columns = [column[0] for column in description or []]
            records = [dict(zip(columns, map(plain, row), strict=True)) for row in rows]
            results[f"command_{len(results)}"] = {
                "status": "success",
                "rows": records,
                "row_count": len(records),
                "columns": columns,
            }
    return results


async def run(run: StepRun) -> Any:
    step = run.step
    assert isinstance(step, DuckdbStep)
    path = database_path(run, step.database)
    if path != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    work = asyncio.to_thread(run_script, path, rendered(run, step.command), _secrets(run, step.auth))
    try:
        return await asyncio.wait_for(work, run.timeout)
    except TimeoutError:
        raise StepFailed(f"the step timed out after {run.timeout:g}s") from None
