"""The OpenAPI document describes itself: every operation says what it does, every request body
and every model has an example that validates against its schema, every error names its body."""

from __future__ import annotations

import re
from typing import Any

import jsonschema_rs
import pytest

from noetl.facade.app import create_app
from noetl.settings import Settings

# FastAPI leaves every null out of the document, those of examples too: an example gives a value
# to every field it shows that is required.
DOC = create_app(Settings()).openapi()
OPERATIONS = [
    (f"{method.upper()} {path}", op) for path, ops in DOC["paths"].items() for method, op in ops.items()
]
SCHEMAS = DOC["components"]["schemas"]


def resolve(schema: dict[str, Any]) -> dict[str, Any]:
    """The model a schema names, also as an optional body (`anyOf` it and null)."""
    refs = [s["$ref"] for s in [schema, *schema.get("anyOf", [])] if "$ref" in s]
    return SCHEMAS[refs[0].rsplit("/", 1)[-1]] if refs else schema


class Pattern:
    """`pattern` as Python reads it: the document's patterns exclude surrogates, which a Rust
    regular expression cannot name."""

    def __init__(self, _parent: Any, value: str, _path: Any) -> None:
        self.regex = re.compile(value)

    def validate(self, instance: Any) -> None:
        if isinstance(instance, str) and not self.regex.search(instance):
            raise ValueError(f"{instance!r} does not match {self.regex.pattern!r}")


def validator(schema: dict[str, Any]) -> Any:
    """A validator of `schema` whose references resolve within the document."""
    return jsonschema_rs.Draft202012Validator(
        {**schema, "components": DOC["components"]}, keywords={"pattern": Pattern}
    )


def examples_of(media: dict[str, Any]) -> list[Any]:
    found = [media["example"]] if "example" in media else []
    found += [e["value"] for e in media.get("examples", {}).values()]
    return found + resolve(media["schema"]).get("examples", [])


def test_every_operation_has_a_description() -> None:
    missing = [name for name, op in OPERATIONS if not op.get("description", "").strip()]
    assert not missing, f"operations without a description: {missing}"


def test_every_request_body_has_an_example_that_validates() -> None:
    bodies = [(name, op["requestBody"]) for name, op in OPERATIONS if "requestBody" in op]
    assert len(bodies) >= 15
    for name, body in bodies:
        media = body["content"]["application/json"]
        examples = examples_of(media)
        assert examples, f"{name}: a request body without an example"
        check = validator(media["schema"])
        for example in examples:
            assert check.is_valid(example), f"{name}: {example} does not validate"


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_every_model_is_described_with_examples_that_validate(name: str) -> None:
    schema = SCHEMAS[name]
    assert schema.get("description", "").strip(), f"{name} has no description"
    examples = schema.get("examples")
    assert examples, f"{name} has no example"
    check = validator({"$ref": f"#/components/schemas/{name}"})
    for example in examples:
        errors = [e.message for e in check.iter_errors(example)]
        assert not errors, f"{name}: {example}: {errors}"


def test_every_error_has_its_body_and_an_example() -> None:
    for name, op in OPERATIONS:
        for status, response in op["responses"].items():
            if not status.startswith(("4", "5")):
                continue
            media = response.get("content", {}).get("application/json")
            assert media and "schema" in media, f"{name} {status}: no body documented"
            assert "example" in media, f"{name} {status}: no example body"
            assert validator(media["schema"]).is_valid(media["example"]), f"{name} {status}"
