"""An iterator's items: its collection rendered, then `where`, `order_by`, `limit` and `chunk`."""

from __future__ import annotations

from typing import Any

from noetl.playbook.steps import IteratorStep
from noetl.templates import RenderError, read_back, render, truthy


class LoopRefused(ValueError):
    """The collection cannot be looped over; the message says why."""


def loop_names(step: IteratorStep, index: int, item: Any, count: int) -> dict[str, Any]:
    """What an item's templates see besides the context: the element, `_loop`, `index`/`batch`."""
    names: dict[str, Any] = {
        step.element: item,
        "_loop": {"current_index": index, "index": index, "item": item, "count": count},
        step.name: {"result_index": index},
    }
    if step.enumerate:
        names["index"] = index
    if step.chunk:
        names["batch"] = item
    return names


def items(step: IteratorStep, context: dict[str, Any], max_items: int) -> list[Any]:
    """The values the loop runs over, in order. Raises LoopRefused or RenderError."""
    collection = render(step.collection, context)
    if isinstance(collection, str):
        collection = read_back(collection)
    if collection is None:
        raise LoopRefused(f"the collection {step.collection!r:.100} is empty (it rendered to null)")
    if isinstance(collection, dict):
        raise LoopRefused("the collection is a mapping; loop over a list (e.g. `{{ x.items }}` or a list of them)")
    values = list(collection) if isinstance(collection, list) else [collection]
    if len(values) > max_items:
        raise LoopRefused(f"the collection has {len(values)} items; at most {max_items} are allowed")
    if step.where:
        values = [v for i, v in enumerate(values) if truthy(_each(step, step.where, context, i, v, len(values)))]
    if step.order_by:
        keyed = [(_each(step, step.order_by, context, i, v, len(values)), i, v) for i, v in enumerate(values)]
        try:
            keyed.sort(key=lambda entry: (entry[0], entry[1]))
        except TypeError as exc:
            raise LoopRefused(f"`order_by` gives keys that do not compare: {exc}") from None
        values = [v for _, _, v in keyed]
    if step.limit is not None:
        values = values[: step.limit]
    if step.chunk:
        values = [values[i : i + step.chunk] for i in range(0, len(values), step.chunk)]
    return values


def _each(step: IteratorStep, template: str, context: dict[str, Any], index: int, item: Any, count: int) -> Any:
    try:
        return render(template, {**context, **loop_names(step, index, item, count)})
    except RenderError as exc:
        raise RenderError(f"item {index}: {exc}") from None
