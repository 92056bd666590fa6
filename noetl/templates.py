"""Jinja2 templates over an execution's context, in a sandbox.

A template that is one expression (`"{{ workload.count }}"`) keeps the value's native type; any
other template renders to a string. Undefined names are errors, so a typo fails the step with a
message instead of running with an empty string.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

from jinja2 import StrictUndefined, TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

_ENV = ImmutableSandboxedEnvironment(undefined=StrictUndefined, autoescape=False)
_SINGLE_EXPRESSION = re.compile(r"^\s*\{\{(?P<expr>(?:(?!\{\{|\}\}).)*)\}\}\s*$", re.DOTALL)
FALSE_STRINGS = frozenset({"false", "0", "none", ""})


class RenderError(ValueError):
    """A template could not be rendered; the message says which and why."""


def render(value: Any, context: dict[str, Any]) -> Any:
    """Render every string in `value` (recursing into lists and mappings)."""
    if isinstance(value, str):
        return _render_string(value, context)
    if isinstance(value, dict):
        return {key: render(item, context) for key, item in value.items()}
    if isinstance(value, list):
        return [render(item, context) for item in value]
    return value


@lru_cache(maxsize=4096)
def _expression(source: str) -> Any:
    """Compiled once per distinct expression: compiling costs ~100x more than evaluating."""
    return _ENV.compile_expression(source, undefined_to_none=False)


@lru_cache(maxsize=4096)
def _template(source: str) -> Any:
    return _ENV.from_string(source)


def _render_string(template: str, context: dict[str, Any]) -> Any:
    if "{{" not in template and "{%" not in template:
        return template
    try:
        single = _SINGLE_EXPRESSION.match(template)
        if single:
            value = _expression(single.group("expr"))(**context)
            if isinstance(value, StrictUndefined):
                str(value)  # raises UndefinedError with the name
            return value
        return _template(template).render(**context)
    except TemplateError as exc:
        raise RenderError(f"cannot render {template!r}: {exc}") from exc
    except Exception as exc:  # errors raised by expressions (a bad index, a division by zero)
        raise RenderError(f"cannot render {template!r}: {type(exc).__name__}: {exc}") from exc


def truthy(value: Any) -> bool:
    """A `when`: native values by Python truth; the strings false, 0, none and "" are false."""
    if isinstance(value, str):
        return value.strip().lower() not in FALSE_STRINGS
    return bool(value)
