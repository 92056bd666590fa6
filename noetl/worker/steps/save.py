"""`save:`: where a step's result goes after it ran (and `type: save`, a step that only saves).

`data` (default: the result) is rendered with `result` and `this` (the step's result) and `data`
(its input) in scope. Storages: `event` (the data is recorded in the step's event), `postgres`
(insert, or upsert on `key`, into `table`; or a `statement` with `:name` parameters), `duckdb`
(rows into `table` of the step's DuckDB file; or `commands`), `python` (`code` with
`main(data)`), `http` (the data as the JSON body to `endpoint`). A save that fails fails its step.
"""

from __future__ import annotations

import asyncio
import json
import re
import tempfile
from pathlib import Path
from typing import Any

from psycopg import sql
from psycopg.types.json import Jsonb

from noetl.playbook.steps import Save, SaveStep
from noetl.templates import RenderError, render_text
from noetl.worker.sandbox import CodeFailed
from noetl.worker.steps import duckdb as duckdb_step
from noetl.worker.steps import postgres
from noetl.worker.steps.base import StepFailed, StepRun
from noetl.worker.steps.http import auth_headers
from noetl.worker.steps.python import failure

BIND = re.compile(r"(?<![:\w]):([A-Za-z_]\w*)")
DEFAULT_PYTHON = "def main(data):\n    return {'saved': True, 'data': data}\n"


def _rows(data: Any) -> list[dict[str, Any]]:
    rows = data if isinstance(data, list) else [data]
    if not rows or not all(isinstance(row, dict) and row for row in rows):
        raise StepFailed("a table save needs its data as a mapping (one row) or a list of mappings")
    return rows


def _table(name: str) -> sql.Composable:
    return sql.SQL(".").join(sql.Identifier(part) for part in name.split("."))


def insert_statement(
    table: str, rows: list[dict[str, Any]], mode: str, key: tuple[str, ...]
) -> tuple[sql.Composable, list[Any]]:
    """One INSERT of every row (columns: every key seen, in order); upsert on `key`."""
    columns = list(dict.fromkeys(column for row in rows for column in row))
    values = [[_param(row.get(c)) for c in columns] for row in rows]
    placeholders = sql.SQL(", ").join(
        sql.SQL("({})").format(sql.SQL(", ").join(sql.Placeholder() * len(columns))) for _ in rows
    )
    statement = sql.SQL("INSERT INTO {} ({}) VALUES {}").format(
        _table(table), sql.SQL(", ").join(map(sql.Identifier, columns)), placeholders
    )
    if mode == "upsert":
        if not key or not set(key) <= set(columns):
            raise StepFailed(
                f"an upsert needs its `key` ({', '.join(key) or 'none given'}) among the data's columns"
            )
        others = [c for c in columns if c not in key]
        action = (
            sql.SQL("DO UPDATE SET {}").format(
                sql.SQL(", ").join(sql.SQL("{0} = EXCLUDED.{0}").format(sql.Identifier(c)) for c in others)
            )
            if others
            else sql.SQL("DO NOTHING")
        )
        statement = sql.SQL("{} ON CONFLICT ({}) {}").format(
            statement, sql.SQL(", ").join(map(sql.Identifier, key)), action
        )
    return statement, [value for row in values for value in row]


def _param(value: Any) -> Any:
    return Jsonb(value) if isinstance(value, dict | list) else value


async def save(run: StepRun, spec: Save, result: Any) -> dict[str, Any]:
    """Save `result` as `spec` says; returns what was saved, for the step's event."""
    names = {"result": result, "this": result}
    data = result if spec.data is None else run.render(spec.data, "`save.data`", names)
    if spec.table:
        spec = spec.model_copy(update={"table": str(run.render(spec.table, "`save.table`", names))})
    auth = spec.auth if spec.auth is not None else run.step.auth
    if spec.storage == "event":
        return {"saved": "event", "data": data}
    if spec.storage == "postgres":
        conninfo = postgres.connection_info(run, auth)
        if spec.statement:
            params = run.render(spec.params, "`save.params`", names) if spec.params else data
            statement = _render_sql(run, spec.statement, {**names, "data": data})
            if isinstance(params, dict):
                outcome = await postgres.execute(
                    conninfo, BIND.sub(r"%(\1)s", statement.replace("%", "%%")), params
                )
            else:
                outcome = await postgres.execute(conninfo, statement)
        else:
            assert spec.table is not None
            statement_sql, values = insert_statement(spec.table, _rows(data), spec.mode, spec.key)
            outcome = await postgres.execute(conninfo, statement_sql, values)
        return {"saved": "postgres", "table": spec.table, "data": data, "result": outcome}
    if spec.storage == "duckdb":
        return {
            "saved": "duckdb",
            "table": spec.table,
            "data": data,
            "result": await _duckdb(run, spec, data, names),
        }
    if spec.storage == "python":
        try:
            value = await run.tools.sandboxes.run(
                f"{run.step.name}.save",
                spec.code or DEFAULT_PYTHON,
                {"data": data},
                {"result": result},
                run.timeout,
            )
        except CodeFailed as exc:
            raise StepFailed(f"save: {exc}") from None
        if (why := failure(value)) is not None:
            raise StepFailed(f"save: {why}")
        return {"saved": "python", "data": data, "result": value}
    return await _http(run, spec, data, auth, names)


def _render_sql(run: StepRun, statement: str, names: dict[str, Any]) -> str:
    try:
        return render_text(statement, {**run.scope, **names})
    except RenderError as exc:
        raise StepFailed(f"`save.statement`: {exc}") from None


async def _duckdb(run: StepRun, spec: Save, data: Any, names: dict[str, Any]) -> Any:
    path = duckdb_step.database_path(run, spec.database)
    if spec.commands:
        script = _render_sql(run, spec.commands, {**names, "data": data})
        return await asyncio.to_thread(duckdb_step.run_script, path, script, [])
    if not spec.table:
        raise StepFailed("a duckdb save needs a `table` or `commands`")
    rows = _rows(data)
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as handle:
        handle.write("\n".join(json.dumps(row, default=str) for row in rows))
    try:
        source = f"read_json_auto('{handle.name}', format='newline_delimited')"
        table = '"' + spec.table.replace('"', '""') + '"'
        script = [f"CREATE TABLE IF NOT EXISTS {table} AS SELECT * FROM {source} LIMIT 0"]
        if spec.mode == "upsert":
            if not spec.key:
                raise StepFailed("an upsert needs its `key`")
            match = " AND ".join(f't."{k}" = s."{k}"' for k in spec.key)
            script.append(f"DELETE FROM {table} t WHERE EXISTS (SELECT 1 FROM {source} s WHERE {match})")
        script.append(f"INSERT INTO {table} BY NAME SELECT * FROM {source}")
        return await asyncio.to_thread(duckdb_step.run_script, path, ";\n".join(script), [])
    finally:
        await asyncio.to_thread(Path(handle.name).unlink, missing_ok=True)


async def _http(run: StepRun, spec: Save, data: Any, auth: Any, names: dict[str, Any]) -> dict[str, Any]:
    if not spec.endpoint:
        raise StepFailed("an http save needs an `endpoint`")
    url = _render_sql(run, spec.endpoint, names)
    headers = {str(k): str(v) for k, v in run.render(spec.headers or {}, "`save.headers`", names).items()}
    headers.update(auth_headers(run, auth) if auth is not None else {})
    try:
        response = await run.tools.http.request(
            spec.method.upper(), url, json=data, headers=headers, timeout=run.timeout
        )
    except Exception as exc:
        raise StepFailed(f"save: {spec.method.upper()} {url} failed: {exc}") from None
    if response.is_error:
        raise StepFailed(f"save: {spec.method.upper()} {url} answered {response.status_code}")
    return {"saved": "http", "endpoint": url, "status_code": response.status_code, "data": data}


async def run(run: StepRun) -> Any:
    """A step that only saves: the data it saves comes from its `save.data` (or its input)."""
    step = run.step
    assert isinstance(step, SaveStep) and step.save is not None
    return await save(run, step.save, run.scope.get("result", run.input))
