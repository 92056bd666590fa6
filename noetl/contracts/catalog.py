"""The catalog's contracts."""

from __future__ import annotations

import base64
import binascii
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from noetl.contracts.errors import BadRequest
from noetl.contracts.fields import OutId

MAX_PATH_LENGTH = 1024


class InvalidContent(BadRequest):
    """The body carries no usable playbook text: a 400."""


class PlaybookText(BaseModel):
    """A playbook's YAML as a client sends it: `content`, or `content_base64`."""

    model_config = ConfigDict(extra="ignore")

    content_base64: str | None = None
    content: str | None = None
    resource_type: str = Field("Playbook", min_length=1, max_length=64)

    def text(self) -> str:
        """The YAML text, decoded from base64 if that is how it came."""
        if not (self.content_base64 or self.content):
            raise InvalidContent("Content is required: content or content_base64")
        if self.content:
            text = self.content
        else:
            try:
                text = base64.b64decode(self.content_base64 or "", validate=True).decode("utf-8")
            except (binascii.Error, UnicodeDecodeError) as exc:
                raise InvalidContent(f"content_base64 is not base64 of UTF-8 text: {exc}") from exc
        if "\x00" in text:
            raise InvalidContent("the content must not contain the NUL character")
        return text


class CatalogRegistration(PlaybookText):
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
    status: str = "success"
    message: str
    path: str
    version: int
    catalog_id: OutId
    kind: str


class CatalogEntry(BaseModel):
    catalog_id: OutId
    path: str
    version: int
    kind: str
    content: str
    payload: dict[str, Any]
    meta: dict[str, Any] | None
    created_at: datetime


class CatalogList(BaseModel):
    entries: list[CatalogEntry]


class CatalogLookup(BaseModel):
    path: str = Field(min_length=1, max_length=MAX_PATH_LENGTH)
    version: int | None = None


class PlaybookCheck(BaseModel):
    """`POST /api/catalog/playbooks/validate`: whether the text would register, and why not."""

    valid: bool
    errors: list[str]
    path: str | None = None
    steps: int | None = None
