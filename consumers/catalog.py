"""The playbook catalog: registration with per-path versions, and its reads."""

from __future__ import annotations

from typing import Any

from psycopg import AsyncConnection
from pydantic import ValidationError

from consumers import offload
from consumers.base import Domain, by_type
from consumers.queries import NotFound, Result, json_list
from noetl.bus import subjects
from noetl.bus.envelope import Command, Outcome, invalid
from noetl.contracts.catalog import (
    MAX_PATH_LENGTH,
    CatalogCommand,
    CatalogEntryHead,
    CatalogLookup,
    CatalogQuery,
    CatalogRegistered,
    PlaybookCheck,
)
from noetl.playbook.document import Limits, PlaybookError
from noetl.playbook.workflow import read
from noetl.settings import Settings
from noetl.store import catalog as store
from noetl.store.outbox import NewEvent, add_events

LIMITS = Limits()


def configure(settings: Settings) -> None:
    global LIMITS
    LIMITS = settings.playbook_limits()
    offload.start()


Read = tuple[str, dict[str, Any]] | str


def read_all(texts: list[tuple[str, str]], limits: Limits) -> list[Read]:
    """Each (text, resource type) as (path, document), or why it is refused. Runs in the offload
    process: the heaviest playbook the limits allow is a second of CPU."""
    found: list[Read] = []
    for text, resource_type in texts:
        try:
            path, document = read(text, resource_type, limits)
        except PlaybookError as exc:
            found.append(str(exc))
            continue
        if len(path) > MAX_PATH_LENGTH:
            found.append(f"the path is over {MAX_PATH_LENGTH} characters")
        else:
            found.append((path, document))
    return found


# Smaller texts are read here (a few milliseconds); larger ones in the offload process.
INLINE_BYTES = 16 * 1024


async def _read(texts: list[tuple[str, str]]) -> list[Read]:
    if sum(len(text) for text, _ in texts) <= INLINE_BYTES:
        return read_all(texts, LIMITS)
    return await offload.run(read_all, texts, LIMITS)


async def _parsed(commands: list[Command]) -> list[tuple[str, dict[str, Any], CatalogCommand] | Outcome]:
    """For each command (path, document, registration), or the outcome that refuses it."""
    registrations: dict[str, CatalogCommand] = {}
    refused: dict[str, Outcome] = {}
    for command in commands:
        try:
            registrations[command.id] = CatalogCommand.model_validate(command.payload)
        except ValidationError as exc:
            refused[command.id] = invalid(command.id, exc)
    texts = [(r.content, r.resource_type) for r in registrations.values()]
    read_back = dict(zip(registrations, await _read(texts), strict=True))
    parsed: list[tuple[str, dict[str, Any], CatalogCommand] | Outcome] = []
    for command in commands:
        found = read_back.get(command.id)
        if found is None:
            parsed.append(refused[command.id])
        elif isinstance(found, str):
            parsed.append(Outcome.failed(command.id, "bad_request", found))
        else:
            parsed.append((*found, registrations[command.id]))
    return parsed


async def register(conn: AsyncConnection, commands: list[Command]) -> list[Outcome]:
    outcomes: dict[str, Outcome] = {}
    accepted: list[tuple[Command, str, dict[str, Any], CatalogCommand]] = []
    for command, parsed in zip(commands, await _parsed(commands), strict=True):
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


def entry_json(entry: store.StoredEntry) -> bytes:
    """`CatalogEntry` as JSON, its documents spliced in as the store keeps them: a playbook
    nested deeper than any serializer goes is still read back, by every client."""
    head = CatalogEntryHead.model_validate(entry, from_attributes=True).model_dump_json().encode()
    meta = entry.meta.encode() if entry.meta is not None else b"null"
    return head[:-1] + b',"payload":' + entry.payload.encode() + b',"meta":' + meta + b"}"


def _entries_json(entries: list[store.StoredEntry]) -> bytes:
    return b",".join(entry_json(e) for e in entries)


async def list_entries(conn: AsyncConnection, payload: dict[str, Any]) -> Result:
    """`CatalogList`, newest first, written a page at a time."""
    query = CatalogQuery.model_validate({**payload, "resource_type": payload.get("resource_type") or None})
    return json_list("entries", store.entries(conn, query), _entries_json, lambda _: {})


async def get_entry(conn: AsyncConnection, payload: dict[str, Any]) -> Result:
    lookup = CatalogLookup.model_validate(payload)
    entry = await store.stored_by_path(conn, lookup.path, lookup.version)
    if entry is None:
        version = lookup.version if lookup.version is not None else "latest"
        raise NotFound(f"catalog entry not found: path {lookup.path!r}, version {version}")
    return entry_json(entry)


async def validate(conn: AsyncConnection, payload: dict[str, Any]) -> dict[str, Any]:
    """Check a playbook without registering it (`POST /api/catalog/playbooks/validate`)."""
    check = CatalogCommand.model_validate(payload)
    (found,) = await _read([(check.content, check.resource_type)])
    if isinstance(found, str):
        return PlaybookCheck(valid=False, errors=[found]).model_dump()
    path, document = found
    return PlaybookCheck(
        valid=True, errors=[], path=path, steps=len(document.get("workflow") or [])
    ).model_dump()


QUERIES = {
    subjects.QUERY_CATALOG_LIST: list_entries,
    subjects.QUERY_CATALOG_ENTRY: get_entry,
    subjects.QUERY_CATALOG_VALIDATE: validate,
}


DOMAIN = Domain(
    durable="catalog-commands",
    commands=subjects.CATALOG_COMMANDS,
    apply=apply_commands,
    queries=QUERIES,
    configure=configure,
)
