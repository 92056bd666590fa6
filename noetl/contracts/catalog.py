"""The catalog's contracts."""

from __future__ import annotations

import base64
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from noetl.contracts.errors import BadRequest
from noetl.contracts.fields import Limit, Offset, OutId, Text

MAX_PATH_LENGTH = 1024
RESOURCE_TYPE_MAX_LENGTH = 64

HELLO_PLAYBOOK = """\
apiVersion: noetl.io/v1
kind: Playbook
metadata:
  name: hello_world
  path: examples/hello_world
workload:
  message: Hello World
workflow:
  - step: start
    next:
      - step: greet
  - step: greet
    type: python
    code: |
      def main(message):
          return {"status": "success", "data": {"message": message}}
    data:
      message: "{{ workload.message }}"
    next:
      - step: end
  - step: end
"""
HELLO_BASE64 = base64.b64encode(HELLO_PLAYBOOK.encode()).decode()
TEXT_EXAMPLES = [{"content": HELLO_PLAYBOOK}, {"content_base64": HELLO_BASE64, "resource_type": "Playbook"}]
ENTRY_EXAMPLE = {
    "catalog_id": "1",
    "path": "examples/hello_world",
    "version": 1,
    "kind": "Playbook",
    "content": HELLO_PLAYBOOK,
    "created_at": "2026-12-03T07:00:00Z",
    "payload": {
        "apiVersion": "noetl.io/v1",
        "kind": "Playbook",
        "metadata": {"name": "hello_world", "path": "examples/hello_world"},
        "workload": {"message": "Hello World"},
        "workflow": [{"step": "start", "next": [{"step": "greet"}]}, {"step": "end"}],
    },
    "meta": {"registered_by": "ci"},
}


class InvalidContent(BadRequest):
    """The body carries no usable playbook text: a 400."""


class PlaybookText(BaseModel):
    """A playbook's YAML as a client sends it: `content`, or `content_base64`."""

    model_config = ConfigDict(extra="ignore", json_schema_extra={"examples": TEXT_EXAMPLES})

    content_base64: str | None = None
    content: str | None = None
    resource_type: str = Field("Playbook", min_length=1, max_length=RESOURCE_TYPE_MAX_LENGTH)

    def text(self) -> str:
        """The YAML text, decoded from base64 if that is how it came."""
        if not (self.content_base64 or self.content):
            raise InvalidContent("Content is required: content or content_base64")
        if self.content:
            text = self.content
        else:
            try:
                text = base64.b64decode(self.content_base64 or "", validate=True).decode("utf-8")
            except ValueError as exc:  # not base64 (binascii.Error), not ASCII, or not UTF-8
                raise InvalidContent(f"content_base64 is not base64 of UTF-8 text: {exc}") from exc
        if "\x00" in text:
            raise InvalidContent("the content must not contain the NUL character")
        return text


class CatalogRegistration(PlaybookText):
    """A playbook to register: the next version of the path its `metadata.path` names (else
    its `metadata.name`), checked whole before it is stored."""

    model_config = ConfigDict(json_schema_extra={"examples": TEXT_EXAMPLES})

    @model_validator(mode="after")
    def _some_content(self) -> CatalogRegistration:
        if not (self.content_base64 or self.content):
            raise ValueError("content_base64 or content is required")
        return self


class CatalogCommand(BaseModel):
    """A registration as the bus carries it: the text, decoded."""

    content: str
    resource_type: str = "Playbook"


class CatalogRegistered(BaseModel):
    """The registered entry: its path, its new version, its id."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "status": "success",
                    "message": "Resource 'examples/hello_world' version '1' registered.",
                    "path": "examples/hello_world",
                    "version": 1,
                    "catalog_id": "1",
                    "kind": "Playbook",
                }
            ]
        }
    )

    status: str = "success"
    message: str
    path: str
    version: int
    catalog_id: OutId
    kind: str


class CatalogEntryHead(BaseModel):
    """An entry without its documents: those go out as the store keeps their JSON text, which
    no serializer has to walk, however deeply it nests."""

    catalog_id: OutId
    path: str
    version: int
    kind: str
    content: str
    created_at: datetime


class CatalogEntry(CatalogEntryHead):
    """A registered version: its YAML as sent (`content`), and as the document it parses to
    (`payload`)."""

    model_config = ConfigDict(json_schema_extra={"examples": [ENTRY_EXAMPLE]})

    payload: dict[str, Any]
    meta: dict[str, Any] | None


class CatalogList(BaseModel):
    """Catalog entries, newest first."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"entries": [ENTRY_EXAMPLE]}]})

    entries: list[CatalogEntry]


class CatalogQuery(BaseModel):
    resource_type: Text | None = Field(None, max_length=RESOURCE_TYPE_MAX_LENGTH)
    limit: Limit = None
    offset: Offset = 0


class CatalogLookup(BaseModel):
    path: Text = Field(min_length=1, max_length=MAX_PATH_LENGTH)
    version: int | None = Field(None, ge=1, le=2**31 - 1)


class PlaybookCheck(BaseModel):
    """`POST /api/catalog/playbooks/validate`: whether the text would register, and why not."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"valid": True, "errors": [], "path": "examples/hello_world", "steps": 3},
                {
                    "valid": False,
                    "errors": ["step 'greet': next names a missing step 'finish'"],
                    "path": "examples/hello_world",
                    "steps": 3,
                },
            ]
        }
    )

    valid: bool
    errors: list[str]
    path: str | None = None
    steps: int | None = None
