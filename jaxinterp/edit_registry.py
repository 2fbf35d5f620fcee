"""Named edits, so that the command line (and saved experiment configs) can build them from text.

    jaxinterp generate "Hello" --edit scale_head layer=5 head=3 scale=0
    jaxinterp generate "Hello" --edit art "layers=(0,1)" top_k_ratio=0.2

Each name maps to an edit class or to a method's builder that takes the model first (`art`,
`evas`: they read its layer and head counts); `make(name, ["key=value", ...], model)` parses
the values as Python literals (numbers, lists, tuples, strings) and builds the edit, with
errors that list the known names or the accepted fields.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
from collections.abc import Callable, Sequence
from typing import Any

from jaxinterp.edits import Edit, ScaleHead, SetHead
from jaxinterp.errors import ArgumentError, shown
from jaxinterp.methods.art import art
from jaxinterp.methods.evas import evas

NAMED_EDITS: dict[str, Callable[..., Edit]] = {
    "scale_head": ScaleHead,
    "set_head": SetHead,
    "art": art,
    "evas": evas,
}


def _value(text: str):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def _fields(build: Callable[..., Edit]) -> tuple[set[str], bool]:
    """The keyword fields `build` accepts and whether it takes the model first."""
    if dataclasses.is_dataclass(build):
        return {f.name for f in dataclasses.fields(build)}, False
    parameters = inspect.signature(build).parameters
    return {p for p in parameters if p != "model"}, "model" in parameters


def make(name: str, assignments: Sequence[str] = (), model: Any = None) -> Edit:
    """The edit `name` with fields from `key=value` strings (`model`: for builders that read it)."""
    if name not in NAMED_EDITS:
        raise ArgumentError(f"--edit: unknown edit {name!r}; known edits: {', '.join(sorted(NAMED_EDITS))}")
    build = NAMED_EDITS[name]
    fields, takes_model = _fields(build)
    if takes_model and model is None:
        raise ArgumentError(f"--edit {name}: this edit is built for a model; pass make(..., model=...)")
    kwargs = {}
    for item in assignments:
        key, sep, value = item.partition("=")
        if not sep or key not in fields:
            raise ArgumentError(f"--edit {name}: expected key=value with key in {sorted(fields)}, found {item!r}")
        kwargs[key] = _value(value)
    try:
        return build(model, **kwargs) if takes_model else build(**kwargs)
    except TypeError as e:
        raise ArgumentError(f"--edit {name}: {shown(str(e), 300)}") from None
