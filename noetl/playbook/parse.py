"""From a step as NoETL playbooks write it to its typed model (`steps.AnyStep`), or a PlaybookError
that names the step and says what is wrong."""

from __future__ import annotations

import ast
import base64
import binascii
from collections.abc import Mapping
from typing import Any

from pydantic import TypeAdapter, ValidationError

from noetl.playbook.document import PlaybookError
from noetl.playbook.steps import CONTROL_TYPES, AnyStep, ItemTask, Step, StepType, Transition
from noetl.templates import RenderError, check, is_template

_STEP: TypeAdapter[Step] = TypeAdapter(AnyStep)
_ITEM: TypeAdapter[Step] = TypeAdapter(ItemTask)

ALIASES = {"playbooks": StepType.PLAYBOOK, "loop": StepType.ITERATOR}
KNOWN = sorted({*(t.value for t in StepType), "workbook", *ALIASES} - {StepType.ROUTER.value})
# A step's input, lowest precedence first: later spellings win.
INPUT_KEYS = ("input", "payload", "with", "args", "params", "data")
# A transition's payload: the first of these it has (one mapping, never merged).
PAYLOAD_KEYS = ("data", "input", "payload", "with")
SAVE_KEYS = (
    *("storage", "data", "table", "mode", "key", "keys", "statement", "params", "auth"),
    *("code", "script", "commands", "command", "sql", "database", "endpoint", "url", "method", "headers"),
)
# A workbook step's own keys that override its task's.
STEP_OVERRIDES = ("auth", "credential", "credentials", "save", "retry", "timeout")
PYTHON_CONTEXT_NAMES = frozenset({"context", "input_data"})


class _Refused(Exception):
    """A problem in one step; `parse_step` adds the step's name."""


Workbook = Mapping[str, dict[str, Any]]


def parse_step(raw: Any, index: int, workbook: Workbook) -> Step:
    """The step at `workflow[index]`, with workbook steps resolved from `workbook` (task name to
    its raw definition)."""
    if not isinstance(raw, dict):
        raise PlaybookError(f"workflow[{index}] is not a step: each needs a `step` name")
    name = raw.get("step", raw.get("name"))
    if isinstance(name, int) and not isinstance(name, bool):
        name = str(name)
    if not isinstance(name, str) or not name.strip():
        raise PlaybookError(f"workflow[{index}] is not a step: each needs a `step` name")
    name = name.strip()
    try:
        fields = _fields(raw, name, workbook)
        fields.update(_common(raw, name))
        return _validate(_STEP, fields)
    except _Refused as exc:
        raise PlaybookError(f"step {name!r}: {exc}") from None


def _validate(adapter: TypeAdapter[Step], fields: dict[str, Any]) -> Step:
    try:
        step = adapter.validate_python(fields)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        where = ".".join(str(part) for part in first["loc"] if not str(part).endswith("Step"))
        raise _Refused(f"{where or 'the step'}: {first['msg']}") from None
    try:
        check(step.templates())
        check([_transition_templates(t) for t in step.next])
    except RenderError as exc:
        raise _Refused(str(exc)) from None
    return step


def _transition_templates(transition: Transition) -> list[Any]:
    return [transition.model_dump(exclude={"step"})]


def _fields(raw: dict[str, Any], name: str, workbook: Workbook) -> dict[str, Any]:
    kind = _kind(raw)
    if kind == "workbook":
        return _workbook(raw, name, workbook)
    if kind == StepType.ITERATOR or isinstance(raw.get("loop"), dict):
        return _iterator(raw, kind, name, workbook)
    return _action(raw, kind, name, _input(raw, kind))


def _kind(raw: Mapping[str, Any]) -> str | None:
    kind = raw.get("type")
    if kind is None:
        return None
    if not isinstance(kind, str) or not kind.strip():
        raise _Refused(f"`type` must name a step type, not {kind!r}")
    kind = kind.strip().lower()
    kind = ALIASES.get(kind, kind)
    if kind not in KNOWN:
        raise _Refused(f"unknown type {kind!r} (known: {', '.join(KNOWN)})")
    return kind


def _workbook(raw: dict[str, Any], name: str, workbook: Workbook) -> dict[str, Any]:
    """A workbook step is the task it names (`task`, or `name` beside `step`), with the step's
    input over the task's, and the step's auth, save, retry and timeout when it has them."""
    task_name = raw.get("task") or (raw.get("name") if "step" in raw else None)
    if not isinstance(task_name, str) or task_name not in workbook:
        raise _Refused(
            f"the workbook has no task {task_name!r} (it has: {', '.join(sorted(workbook)) or 'none'})"
        )
    task = workbook[task_name]
    kind = _kind(task)
    if kind in ("workbook", StepType.ITERATOR, None):
        raise _Refused(f"workbook task {task_name!r} must be an action (python, http, postgres, ...)")
    merged = {**task, **{key: raw[key] for key in STEP_OVERRIDES if key in raw}}
    fields = _action(merged, kind, name, _merge_inputs(_input(task, kind), _input(raw, kind)))
    fields["task"] = task_name
    return fields


def _iterator(raw: dict[str, Any], kind: str | None, name: str, workbook: Workbook) -> dict[str, Any]:
    """`type: iterator` with its nested `task`, or a legacy `loop:` block on an action step."""
    loop = raw.get("loop") if isinstance(raw.get("loop"), dict) else None
    if loop is not None:  # the step itself is the task, run per item
        spec = {**loop, "collection": loop.get("collection", loop.get("in", loop.get("items")))}
        spec["element"] = loop.get("element", loop.get("iterator"))
        task = {
            k: v for k, v in raw.items() if k not in ("loop", "next", "step", "name", "desc", "description")
        }
    else:
        spec = raw
        task = raw.get("task")
        if not isinstance(task, dict):
            raise _Refused("an iterator needs a `task` mapping: the step each item runs")
    collection = spec.get("collection")
    if collection is None and isinstance(spec.get("data"), str | list):
        collection = spec["data"]  # the original's alias
    if collection is None:
        raise _Refused("an iterator needs a `collection` (a list, or a template that renders one)")
    if not isinstance(spec.get("element"), str) or not spec["element"].isidentifier():
        raise _Refused("an iterator needs an `element`: the name each item is bound to")
    item = _item_task(task, name, workbook)
    fields: dict[str, Any] = {
        "type": StepType.ITERATOR,
        "collection": collection,
        "element": spec["element"],
        "item": item,
    }
    mode = spec.get("mode", "sequential")
    fields["mode"] = "async" if mode in ("async", "parallel") else mode
    for key in ("concurrency", "where", "order_by", "limit", "chunk", "enumerate"):
        if spec.get(key) is not None:
            fields[key] = spec[key]
    if loop is None:
        if raw.get("save") is not None:
            fields["save"] = _save(raw["save"])
        fields["input"] = _input(raw, StepType.ITERATOR)
    return fields


def _item_task(task: dict[str, Any], name: str, workbook: Workbook) -> Step:
    kind = _kind(task)
    try:
        if kind == "workbook":
            fields = _workbook(task, name, workbook)
        elif kind is None or kind in CONTROL_TYPES or kind == StepType.ITERATOR:
            raise _Refused(
                "an iterator's task must be an action (python, http, postgres, duckdb, playbook, ...)"
            )
        else:
            fields = _action(task, kind, name, _input(task, kind))
        for key in ("retry", "timeout"):
            if task.get(key) is not None:
                fields[key] = task[key]
        return _validate(_ITEM, {"name": name, **fields})
    except _Refused as exc:
        raise _Refused(f"task: {exc}") from None


def _common(raw: dict[str, Any], name: str) -> dict[str, Any]:
    fields: dict[str, Any] = {"name": name, "next": _transitions(raw.get("next"))}
    desc = raw.get("desc", raw.get("description"))
    if desc is not None:
        fields["desc"] = str(desc)
    for key in ("retry", "timeout", "result"):
        if raw.get(key) is not None:
            fields[key] = raw[key]
    if isinstance(fields.get("retry"), int) and not isinstance(fields["retry"], bool):
        fields["retry"] = {"max_attempts": fields["retry"]}
    return fields


def _input(raw: Mapping[str, Any], kind: str | None) -> dict[str, Any] | str:
    """The step's input: its spellings merged, or one template that renders to a mapping."""
    layers: list[Any] = []
    for key in INPUT_KEYS:
        value = raw.get(key)
        if value is None or (key == "params" and kind == StepType.HTTP):
            continue
        if isinstance(value, str) and kind == StepType.ITERATOR and key == "data":
            continue  # the collection's alias
        if not isinstance(value, dict) and not (isinstance(value, str) and is_template(value)):
            raise _Refused(f"`{key}` must be a mapping of inputs (or one template of one), not {value!r:.80}")
        layers.append(value)
    if len(layers) == 1 and isinstance(layers[0], str):
        return layers[0]
    if any(isinstance(layer, str) for layer in layers):
        raise _Refused("an input given as one template cannot be combined with other input mappings")
    merged: dict[str, Any] = {}
    for layer in layers:
        merged.update(layer)
    return merged


def _merge_inputs(task: dict[str, Any] | str, step: dict[str, Any] | str) -> dict[str, Any] | str:
    if isinstance(task, str) or isinstance(step, str):
        if task and step:
            raise _Refused("a workbook step and its task cannot both give their input as one template")
        return task or step
    return {**task, **step}


def _action(raw: dict[str, Any], kind: str | None, name: str, inputs: dict[str, Any] | str) -> dict[str, Any]:
    """The fields of a step that is not a loop (`raw` may be a workbook task under its step's keys)."""
    fields: dict[str, Any] = {"input": inputs}
    auth = raw.get("auth", raw.get("credentials", raw.get("credential")))
    if auth is not None:
        fields["auth"] = auth
    save = raw.get("save")
    if kind is None or kind in CONTROL_TYPES:
        if save:  # a control step that saves is a save step
            return {**fields, "type": StepType.SAVE, "save": _save(save)}
        return {**fields, "type": kind or _control_type(name)}
    if save is not None:
        fields["save"] = _save(save)
    if kind == StepType.PYTHON:
        code = _text(raw, ("code_b64", "code_base64"), ("code",), "code")
        fields.update(type=kind, code=code, wants_context=_python_wants_context(code))
    elif kind == StepType.HTTP:
        fields.update(type=kind, url=raw.get("endpoint", raw.get("url")), method=raw.get("method", "GET"))
        for key in ("headers", "params", "raise_for_status"):
            if raw.get(key) is not None:
                fields[key] = raw[key]
        if raw.get("json") is not None:
            fields["body"] = raw["json"]
    elif kind in (StepType.POSTGRES, StepType.DUCKDB):
        command = _text(raw, ("command_b64", "commands_b64"), ("command", "commands", "sql"), "command")
        fields.update(type=kind, command=command)
        if kind == StepType.DUCKDB and raw.get("database") is not None:
            fields["database"] = raw["database"]
    elif kind == StepType.SAVE:
        fields.update(type=kind, save=_save(save if save is not None else raw))
    elif kind == StepType.SECRETS:
        secret_name = raw.get("secret_name", raw.get("secret", raw.get("key")))
        fields.update(type=kind, secret_name=secret_name)
        for key in ("provider", "field", "project_id"):
            if raw.get(key) is not None:
                fields[key] = raw[key]
    elif kind == StepType.PLAYBOOK:
        path = raw.get("path", raw.get("resource_path", raw.get("playbook_path")))
        if not isinstance(path, str) or not path.strip("/ "):
            raise _Refused("a playbook step needs the `path` of the playbook it runs")
        fields.update(type=kind, path=path.strip().strip("/"))
        if raw.get("version") not in (None, "latest"):
            fields["version"] = raw["version"]
        if raw.get("return_step") is not None:
            fields["return_step"] = raw["return_step"]
    return fields


def _control_type(name: str) -> StepType:
    return {"start": StepType.START, "end": StepType.END}.get(name, StepType.ROUTER)


def _text(raw: Mapping[str, Any], encoded: tuple[str, ...], plain: tuple[str, ...], what: str) -> str:
    """Code or SQL: the first base64 spelling decoded, else the first plain one (a list of
    statements is joined)."""
    for key in encoded:
        if isinstance(raw.get(key), str):
            try:
                return base64.b64decode("".join(raw[key].split()), validate=True).decode("utf-8")
            except (binascii.Error, UnicodeDecodeError) as exc:
                raise _Refused(f"`{key}` is not base64 of UTF-8 text: {exc}") from None
    for key in plain:
        value = raw.get(key)
        if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
            value = ";\n".join(v.strip().rstrip(";") for v in value)
        if isinstance(value, str) and value.strip():
            return value
    raise _Refused(f"the step needs its {what} (`{plain[0]}`)")


def _python_wants_context(code: str) -> bool:
    """Compile the code (a 400 at registration, not a failure at run time) and tell whether it
    reads the whole context: `main(context)`, `main(input_data)`, `main(**kwargs)` or the
    `context` global."""
    try:
        tree = ast.parse(code, "<step code>")
        compile(tree, "<step code>", "exec")
    except SyntaxError as exc:
        raise _Refused(f"the python code does not compile: line {exc.lineno}: {exc.msg}") from None
    mains = [
        node
        for node in tree.body
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name == "main"
    ]
    if not mains:
        raise _Refused("the python code does not define main()")
    args = mains[-1].args
    names = {a.arg for a in (*args.posonlyargs, *args.args, *args.kwonlyargs)}
    if args.kwarg is not None or names & PYTHON_CONTEXT_NAMES:
        return True
    return "context" in code and any(
        isinstance(node, ast.Name) and node.id == "context" for node in ast.walk(tree)
    )


def _transitions(raw: Any) -> list[dict[str, Any]]:
    """`next` as Next / Branch / Otherwise fields: a name, a mapping, or a list of them."""
    if raw is None:
        return []
    items = raw if isinstance(raw, list) else [raw]
    return [_transition(item) for item in items]


def _transition(item: Any) -> dict[str, Any]:
    if isinstance(item, str):
        return {"step": item}
    if not isinstance(item, dict):
        raise _Refused(f"each `next` item is a step name or a mapping, not {item!r}")
    if "then" in item or ("else" in item and "step" not in item):
        branch: dict[str, Any] = {}
        if "then" in item:
            if "when" not in item:
                raise _Refused("a `then` needs its `when`")
            branch.update(when=item["when"], then=_targets(item["then"], "then"))
        branch["otherwise"] = _targets(item.get("else"), "else")
        return branch
    step = item.get("step", item.get("name"))
    if not isinstance(step, str):
        raise _Refused(f"each `next` item needs a `step` name, got {item!r}")
    target: dict[str, Any] = {"step": step}
    if item.get("when") is not None:
        target["when"] = item["when"]
    for key in PAYLOAD_KEYS:
        if item.get(key) is not None:
            if not isinstance(item[key], dict):
                raise _Refused(f"`next` to {step!r}: `{key}` must be a mapping")
            target["payload"] = item[key]
            break
    return target


def _targets(raw: Any, what: str) -> list[dict[str, Any]]:
    targets = _transitions(raw)
    if any("step" not in t for t in targets):
        raise _Refused(f"`{what}` lists steps, not further when/then blocks")
    return targets


def _save(raw: Any) -> dict[str, Any]:
    """`save:` flat (`storage: postgres`) or nested (`storage: {type: postgres, ...}`, whose keys
    win), with its aliases."""
    if not isinstance(raw, dict):
        raise _Refused("`save` must be a mapping (storage, data, ...)")
    spec = dict(raw)
    storage = spec.pop("storage", None)
    if isinstance(storage, dict):
        storage = dict(storage)
        spec.update({k: v for k, v in storage.items() if k not in ("type", "kind")})
        storage = storage.get("type", storage.get("kind"))
    kind = str(storage or "event").strip().lower()
    fields: dict[str, Any] = {"storage": "event" if kind in ("event", "event_log", "") else kind}
    for key in ("data", "table", "mode", "statement", "params", "auth", "database", "method", "headers"):
        if spec.get(key) is not None:
            fields[key] = spec[key]
    keys = spec.get("key", spec.get("keys"))
    if keys is not None:
        fields["key"] = [keys] if isinstance(keys, str) else keys
    for field, spellings in (
        ("code", ("code", "script")),
        ("commands", ("commands", "command", "sql")),
        ("endpoint", ("endpoint", "url")),
    ):
        for spelling in spellings:
            if spec.get(spelling) is not None:
                fields[field] = spec[spelling]
                break
    if fields.get("storage") == "postgres" and not (fields.get("table") or fields.get("statement")):
        raise _Refused("a postgres save needs a `table` or a `statement`")
    return fields
