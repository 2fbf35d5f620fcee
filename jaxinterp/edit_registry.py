"""Named edits, so that the command line (and saved experiment configs) can build them from text.

    jaxinterp generate "Hello" --edit scale_head layer=5 head=3 scale=0

Each name maps to an edit class; `make(name, ["key=value", ...])` parses the values as Python
literals (numbers, lists, tuples, strings) and builds the edit, with errors that list the
known names or the edit's fields.
"""

from __future__ import annotations

import ast
import dataclasses
from collections.abc import Sequence

from jaxinterp.edits import Edit, ScaleHead, SetHead
from jaxinterp.errors import ArgumentError

NAMED_EDITS: dict[str, type[Edit]] = {
    "scale_head": ScaleHead,
    "set_head": SetHead,
}


def _value(text: str):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def make(name: str, assignments: Sequence[str] = ()) -> Edit:
    """The edit `name` with fields from `key=value` strings."""
    if name not in NAMED_EDITS:
        raise ArgumentError(f"--edit: unknown edit {name!r}; known edits: {', '.join(sorted(NAMED_EDITS))}")
    cls = NAMED_EDITS[name]
    fields = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for item in assignments:
        key, sep, value = item.partition("=")
        if not sep or key not in fields:
            raise ArgumentError(f"--edit {name}: expected key=value with key in {sorted(fields)}, found {item!r}")
        kwargs[key] = _value(value)
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise ArgumentError(f"--edit {name}: {e}") from None
