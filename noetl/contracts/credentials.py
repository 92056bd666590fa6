"""The credential store's contracts. A credential's `data` is its secret: it travels sealed
(`data_encrypted`, a Fernet token) on the commands stream, and in the clear only in the answer
to a read that asks for it, over core request/reply."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal, Self

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from noetl.contracts.fields import IdStr, JsonObject, Name, OutId, StrippedStr
from noetl.crypto import Cipher

DEFAULT_TYPE = "generic"
BIGINT_MAX = 2**63 - 1

RECORD_EXAMPLE = {
    "id": "1",
    "name": "pg_local",
    "type": "postgres",
    "meta": {"owner": "data-team"},
    "tags": ["dev"],
    "description": "the local database",
    "created_at": "2026-12-03T07:00:00Z",
    "updated_at": "2026-12-03T07:00:00Z",
}
# A placeholder, not a secret: the shape a postgres credential's data takes.
DATA_EXAMPLE = {"db_host": "127.0.0.1", "db_port": 5432, "db_user": "noetl", "db_password": "<password>"}


def _not_an_id(value: str) -> str:
    if is_id(value):
        raise ValueError("must not be all digits: it would read as a credential's id")
    return value


def _type(value: Any) -> Any:
    return DEFAULT_TYPE if value is None or (isinstance(value, str) and not value.strip()) else value


def _tag_list(value: Any) -> Any:
    if value is None:
        return []
    if isinstance(value, str):
        return value.split(",")
    return value


def _drop_empty(tags: list[str]) -> list[str]:
    return [t for t in tags if t]


def is_id(identifier: str) -> bool:
    return identifier.isascii() and identifier.isdigit()


CredentialName = Annotated[Name, AfterValidator(_not_an_id)]
CredentialType = Annotated[StrippedStr, BeforeValidator(_type), Field(max_length=255)]
Tags = Annotated[list[StrippedStr], BeforeValidator(_tag_list), AfterValidator(_drop_empty)]
"""Tags as a list of strings or one comma-separated string; blanks dropped."""


class CredentialRegistration(BaseModel):
    """`POST /api/credentials`: an upsert by name."""

    model_config = ConfigDict(
        extra="ignore",
        json_schema_extra={
            "examples": [
                {
                    "name": "pg_local",
                    "type": "postgres",
                    "data": DATA_EXAMPLE,
                    "tags": ["dev"],
                    "description": "the local database",
                },
                {"name": "api_token", "data": {"token": "<token>"}, "tags": ["http", "external"]},
            ]
        },
    )

    name: CredentialName
    type: CredentialType = DEFAULT_TYPE
    data: dict[str, Any] = Field(repr=False, description="the secret: sealed before it leaves the API")
    meta: JsonObject | None = None
    tags: Tags = Field(default_factory=list)
    description: StrippedStr | None = None

    def sealed(self, cipher: Cipher) -> CredentialCommand:
        """The command, `data` sealed: the commands stream keeps it until it is applied."""
        return CredentialCommand(
            **self.model_dump(exclude={"data"}), data_encrypted=cipher.encrypt_json(self.data).decode()
        )

    def fingerprinted(self, cipher: Cipher) -> dict[str, Any]:
        """What an `Idempotency-Key` must see repeated: every field, `data` as a keyed digest
        (a sealed token differs at every sealing)."""
        return {**self.model_dump(exclude={"data"}), "data": cipher.digest_json(self.data)}


class CredentialCommand(BaseModel):
    """A registration as the bus carries it."""

    name: CredentialName
    type: CredentialType = DEFAULT_TYPE
    data_encrypted: str = Field(min_length=1, repr=False)
    meta: JsonObject | None = None
    tags: Tags = Field(default_factory=list)
    description: StrippedStr | None = None


class CredentialRecord(BaseModel):
    """A credential without its data."""

    model_config = ConfigDict(json_schema_extra={"examples": [RECORD_EXAMPLE]})

    id: OutId
    name: str
    type: str
    meta: dict[str, Any] | None
    tags: list[str]
    description: str | None
    created_at: datetime
    updated_at: datetime


class CredentialWithData(CredentialRecord):
    """A credential with its data, opened: only for `include_data=true`."""

    model_config = ConfigDict(json_schema_extra={"examples": [{**RECORD_EXAMPLE, "data": DATA_EXAMPLE}]})

    data: dict[str, Any] = Field(repr=False)


class CredentialFilter(BaseModel):
    """The filters a list was asked with."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"type": "postgres", "q": None}]})

    type: str | None = None
    q: str | None = None


class CredentialList(BaseModel):
    """Credentials without their data, ordered by name."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"items": [RECORD_EXAMPLE], "filter": {"type": "postgres", "q": None}}]
        }
    )

    items: list[CredentialRecord]
    filter: CredentialFilter


class CredentialRef(BaseModel):
    """One credential, by id or by name (`of` reads a path's identifier)."""

    id: int | None = Field(None, ge=0)
    name: str | None = None

    @model_validator(mode="after")
    def _one(self) -> CredentialRef:
        if (self.id is None) == (self.name is None):
            raise ValueError("give one of id or name")
        return self

    @classmethod
    def of(cls, identifier: str, **fields: Any) -> Self:
        key = {"id": int(identifier)} if is_id(identifier) else {"name": identifier}
        return cls(**key, **fields)

    def describe(self) -> str:
        return f"id {self.id}" if self.id is not None else f"name {self.name!r}"


class CredentialRead(CredentialRef):
    include_data: bool = False


class CredentialDeleted(BaseModel):
    """The credential that was removed."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"status": "deleted", "id": "1", "name": "pg_local"}]}
    )

    status: Literal["deleted"] = "deleted"
    id: OutId
    name: str


class CredentialsRequest(BaseModel):
    """A worker's request for the credentials of the job it runs."""

    job_id: IdStr = Field(pattern=r"^[0-9]{1,18}$")
    names: list[Name] = Field(min_length=1)


class Credential(BaseModel):
    """A credential as a step uses it."""

    name: str
    type: str
    data: dict[str, Any] = Field(repr=False)


class ResolvedCredentials(BaseModel):
    credentials: list[Credential]
