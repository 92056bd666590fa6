"""The playbook catalog: registration with per-path versions, and its reads."""

from __future__ import annotations

from typing import Any

from psycopg import AsyncConnection
from pydantic import ValidationError

from consumers.base import Domain, by_type
from consumers.queries import NotFound
from noetl import playbook
from noetl.bus import subjects
from noetl.bus.envelope import Command, Outcome, invalid
from noetl.contracts.catalog import (
    MAX_PATH_LENGTH,
    CatalogCommand,
    CatalogEntry,
    CatalogList,
    CatalogLookup,
    CatalogRegistered,
)
from noetl.store import catalog as store
from noetl.store.outbox import NewEvent, add_events


def _parsed(command: Command) -> tuple[str, dict[str, Any], CatalogCommand] | Outcome:
    """(path, document, registration), or the outcome that refuses it."""
    try:
        registration = CatalogCommand.model_validate(command.payload)
        document = playbook.parse(registration.content)
        playbook.validate(document, registration.resource_type)
        path = playbook.catalog_path(document)
    except ValidationError as exc:
        return invalid(command.id, exc)
    except playbook.PlaybookError as exc:
        return Outcome.failed(command.id, "bad_request", str(exc))
    if len(path) > MAX_PATH_LENGTH:
        return Outcome.failed(command.id, "bad_request", f"the path is over {MAX_PATH_LENGTH} characters")
    return path, document, registration


async def register(conn: AsyncConnection, commands: list[Command]) -> list[Outcome]:
    outcomes: dict[str, Outcome] = {}
    accepted: list[tuple[Command, str, dict[str, Any], CatalogCommand]] = []
    for command in commands:
        parsed = _parsed(command)
        if isinstance(parsed, Outcome):
            outcomes[command.id] = parsed
        else:
            accepted.append((command, *parsed))
    # Path order: two consumers lock the per-path counters in the same order (no deadlock).
    for command, path, document, registration in sorted(accepted, key=lambda a: a[1]):
        row = await store.add(
            conn, path=path, kind=registration.resource_type, content=registration.content, payload=document
        )
        await add_events(
            conn,
            [
                NewEvent(
                    type="catalog.registered",
                    subject=subjects.catalog_event(path, "registered"),
                    entity={"domain": "catalog", "path": path},
                    payload={
                        "catalog_id": str(row["catalog_id"]),
                        "version": row["version"],
                        "kind": row["kind"],
                    },
                )
            ],
        )
        response = CatalogRegistered(
            message=f"Resource '{path}' version '{row['version']}' registered.",
            path=path,
            version=row["version"],
            catalog_id=row["catalog_id"],
            kind=row["kind"],
        )
        outcomes[command.id] = Outcome(request_id=command.id, result=response.model_dump(mode="json"))
    return [outcomes[c.id] for c in commands]


apply_commands = by_type({subjects.command_type(subjects.CATALOG_REGISTER): register})


async def list_entries(conn: AsyncConnection, payload: dict[str, Any]) -> dict[str, Any]:
    rows = await store.entries(conn, payload.get("resource_type") or None)
    return CatalogList(entries=[CatalogEntry.model_validate(r) for r in rows]).model_dump(mode="json")


async def get_entry(conn: AsyncConnection, payload: dict[str, Any]) -> dict[str, Any]:
    lookup = CatalogLookup.model_validate(payload)
    row = await store.by_path(conn, lookup.path, lookup.version)
    if row is None:
        version = lookup.version if lookup.version is not None else "latest"
        raise NotFound(f"catalog entry not found: path {lookup.path!r}, version {version}")
    return CatalogEntry.model_validate(row).model_dump(mode="json")


QUERIES = {subjects.QUERY_CATALOG_LIST: list_entries, subjects.QUERY_CATALOG_ENTRY: get_entry}


DOMAIN = Domain(
    durable="catalog-commands", commands=subjects.CATALOG_COMMANDS, apply=apply_commands, queries=QUERIES
)
