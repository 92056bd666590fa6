"""Jinja2 templates over an execution's context, in a sandbox, with NoETL's addressing rules.

- A template that is one expression (`"{{ workload.count }}"`) keeps the value's native type; any
  other template renders to text, which is read back as JSON, a boolean, a number or null when it
  looks like one (as NoETL always did: `"{{ a }}{{ b }}"` with 4 and 2 is the number 42).
- Step results are addressed forgivingly: `.data`, `.result` and `.results` of a value that has no
  such key are the value itself, and a key missing from a mapping is looked up in its `data`, so
  `{{ s.result.data.x }}`, `{{ s.data.x }}` and `{{ s.x }}` reach the same field. A mapping's keys
  win over its methods (`{{ page.items }}` is the key, not `dict.items`).
- An undefined name is falsy (`{{ x or 'none' }}`, `{% if x %}` work) but rendering or reading
  into one is an error, so a typo fails the step with a message instead of running on "".

Templates are checked when a playbook is registered (`check`), and the names a template reads are
known from its syntax tree (`paths`), so a job carries only the part of the context it needs.
"""

from __future__ import annotations

import ast
import base64
import json
import re
from collections.abc import Iterator, Mapping
from functools import lru_cache
from typing import Any

from jinja2 import StrictUndefined, TemplateError, Undefined, nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment

FORGIVING_KEYS = frozenset({"data", "result", "results"})
TRUE_STRINGS = frozenset({"true", "yes", "y", "on"})
FALSE_STRINGS = frozenset({"false", "no", "n", "off", "", "none", "null", "0"})
_SINGLE_EXPRESSION = re.compile(r"^\s*\{\{(?P<expr>(?:(?!\{\{|\}\}).)*)\}\}\s*$", re.DOTALL)
_NUMBER = re.compile(r"^-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?$")

Path = tuple[str, ...]


class RenderError(ValueError):
    """A template could not be checked or rendered; the message says which and why."""


class StepUndefined(StrictUndefined):
    """Strict, except that an undefined value is falsy and compares unequal to everything."""

    __slots__ = ()

    def __bool__(self) -> bool:
        return False

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Undefined)

    def __ne__(self, other: object) -> bool:
        return not self.__eq__(other)

    __hash__ = Undefined.__hash__


def _forgive(obj: Any, key: Any, value: Any) -> Any:
    if not isinstance(value, Undefined) or not isinstance(key, str):
        return value
    if key in FORGIVING_KEYS and isinstance(obj, Mapping | list):
        return obj
    if isinstance(obj, Mapping):
        inner = obj.get("data")
        if isinstance(inner, Mapping) and key in inner:
            return inner[key]
    return value


class _Environment(ImmutableSandboxedEnvironment):
    def getattr(self, obj: Any, attribute: str) -> Any:
        if isinstance(obj, Mapping) and attribute in obj:
            return obj[attribute]
        return _forgive(obj, attribute, super().getattr(obj, attribute))

    def getitem(self, obj: Any, argument: Any) -> Any:
        return _forgive(obj, argument, super().getitem(obj, argument))


_ENV = _Environment(undefined=StepUndefined, autoescape=False, keep_trailing_newline=True)
_ENV.filters["tojson"] = lambda value, indent=None: json.dumps(value, indent=indent, default=str)
_ENV.filters["b64encode"] = lambda value: base64.b64encode(str(value).encode()).decode()
_ENV.filters["b64decode"] = lambda value: base64.b64decode(str(value)).decode()


def is_template(text: str) -> bool:
    return "{{" in text or "{%" in text


@lru_cache(maxsize=4096)
def _expression(source: str) -> Any:
    """Compiled once per distinct expression: compiling costs ~100x more than evaluating."""
    return _ENV.compile_expression(source, undefined_to_none=False)


@lru_cache(maxsize=4096)
def _template(source: str) -> Any:
    return _ENV.from_string(source)


def render(value: Any, context: Mapping[str, Any]) -> Any:
    """Render every string in `value` (recursing into lists and mappings)."""
    if isinstance(value, str):
        return _render_string(value, context, coerce=True)
    if isinstance(value, dict):
        return {key: render(item, context) for key, item in value.items()}
    if isinstance(value, list):
        return [render(item, context) for item in value]
    return value


def render_lenient(value: Any, context: Mapping[str, Any]) -> Any:
    """`render`, keeping any string that does not render as it is (a workload's templates that
    name what only some steps have)."""
    if isinstance(value, str):
        try:
            return _render_string(value, context, coerce=True)
        except RenderError:
            return value
    if isinstance(value, dict):
        return {key: render_lenient(item, context) for key, item in value.items()}
    if isinstance(value, list):
        return [render_lenient(item, context) for item in value]
    return value


def render_text(template: str, context: Mapping[str, Any]) -> str:
    """Render to text as it is (SQL, URLs): no reading back as JSON or numbers."""
    value = _render_string(template, context, coerce=False)
    return value if isinstance(value, str) else json.dumps(value, default=str)


def _render_string(template: str, context: Mapping[str, Any], *, coerce: bool) -> Any:
    if not is_template(template):
        return template
    try:
        single = _SINGLE_EXPRESSION.match(template)
        if single:
            value = _expression(single.group("expr"))(**context)
            if isinstance(value, Undefined):
                str(value)  # raises UndefinedError with the name
            return value
        text = _template(template).render(**context)
    except TemplateError as exc:
        raise RenderError(f"cannot render {_short(template)}: {exc}") from exc
    except Exception as exc:  # raised by an expression (a bad index, a division by zero)
        raise RenderError(f"cannot render {_short(template)}: {type(exc).__name__}: {exc}") from exc
    return read_back(text) if coerce else text


def read_back(text: str) -> Any:
    """Rendered text as the value it spells: JSON objects and lists, booleans, null, numbers."""
    stripped = text.strip()
    lowered = stripped.lower()
    if stripped[:1] in "[{" and stripped[-1:] in "]}":
        try:
            return json.loads(stripped)
        except ValueError:
            try:
                return ast.literal_eval(stripped)
            except (ValueError, SyntaxError, MemoryError, RecursionError):
                return text
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("none", "null"):
        return None
    if _NUMBER.match(stripped):
        number = float(stripped)
        if number.is_integer() and "." not in stripped and "e" not in lowered:
            return int(stripped)
        return number
    return text


def truthy(value: Any) -> bool:
    """A `when`: native values by Python truth; true/yes/y/on are true, false/no/n/off/none/null/0
    and "" false, and any other text true."""
    if isinstance(value, str):
        lowered = value.strip().lower()
        return lowered in TRUE_STRINGS or lowered not in FALSE_STRINGS
    return bool(value)


def _short(template: str) -> str:
    return repr(template if len(template) <= 200 else template[:200] + "...")


# --------------------------------------------------------------------------- registration


def strings(value: Any) -> Iterator[str]:
    """Every string in a value, recursing into lists and mappings."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from strings(item)


def check(value: Any) -> None:
    """Raise RenderError for the first template in `value` that does not parse."""
    for text in strings(value):
        if is_template(text):
            try:
                _template(text)
            except TemplateError as exc:
                raise RenderError(f"template {_short(text)} does not parse: {exc}") from exc


def paths(value: Any) -> frozenset[Path]:
    """The context paths that the templates in `value` read (`{{ a.b[0].c }}` reads ("a", "b")),
    cut at the first part that is not a constant name."""
    found: set[Path] = set()
    for text in strings(value):
        if is_template(text):
            found |= _template_paths(text)
    return frozenset(found)


@lru_cache(maxsize=4096)
def _template_paths(source: str) -> frozenset[Path]:
    found: set[Path] = set()
    _collect(_ENV.parse(source), found)
    return frozenset(found)


def _collect(node: nodes.Node, found: set[Path]) -> None:
    chain = _chain(node)
    if chain is not None:
        path, rest = chain
        found.add(path)
        for child in rest:
            _collect(child, found)
        return
    for child in node.iter_child_nodes():
        _collect(child, found)


def _chain(node: nodes.Node) -> tuple[Path, list[nodes.Node]] | None:
    """(path, the nodes left to visit) when `node` reads a name, possibly through attributes."""
    keys: list[str] = []
    rest: list[nodes.Node] = []
    while True:
        if isinstance(node, nodes.Getattr):
            keys.append(node.attr)
            node = node.node
        elif isinstance(node, nodes.Getitem):
            if isinstance(node.arg, nodes.Const) and isinstance(node.arg.value, str):
                keys.append(node.arg.value)
            else:  # a computed key: the path stops here
                keys.clear()
                rest.append(node.arg)
            node = node.node
        elif isinstance(node, nodes.Name):
            if node.ctx != "load":
                return None
            return (node.name, *reversed(keys)), rest
        else:
            return None


def prune(context: Mapping[str, Any], wanted: frozenset[Path]) -> dict[str, Any]:
    """The part of `context` that the paths reach: each value at the longest prefix of its path
    that plain keys address (forgiving addressing may go anywhere below that)."""
    pruned: dict[str, Any] = {}
    for path in sorted(wanted, key=len):
        if path[0] not in context:
            continue
        source: Any = context
        target: dict[str, Any] = pruned
        for depth, key in enumerate(path):
            value = source[key]
            last = depth == len(path) - 1
            whole = key in target and not isinstance(target[key], _Partial)
            if whole:
                break
            if last or not isinstance(value, Mapping) or path[depth + 1] not in value:
                target[key] = value
                break
            target = target.setdefault(key, _Partial())
            source = value
    return {key: _plain(value) for key, value in pruned.items()}


class _Partial(dict):
    """A mapping pruned to some of its keys (a whole value is never a `_Partial`)."""


def _plain(value: Any) -> Any:
    return {key: _plain(item) for key, item in value.items()} if isinstance(value, _Partial) else value
