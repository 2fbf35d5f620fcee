"""Chat templates rendered in Jinja's sandbox with a time and an output-size bound.

A chat template comes with the checkpoint (GGUF metadata `tokenizer.chat_template`, a
folder's `chat_template.jinja` or `tokenizer_config.json`), so it is untrusted code. Jinja's
`ImmutableSandboxedEnvironment` (as transformers uses) keeps it from reaching Python, but
not from running long or producing gigabytes: nested `range(100000)` loops never end, and
`"x" * 10**10` fills memory. Here every call, attribute access, item access and output
chunk checks a deadline, `*` and `**` are checked before they compute, and the output is
streamed and cut off at a bound. A refusal, a syntax error, a bound hit or an error the
template raises is one `CheckpointError` naming the template's source.

The environment mirrors transformers' (`trim_blocks`, `lstrip_blocks`, loop controls, the
`tojson`, `raise_exception` and `strftime_now` helpers, special tokens as variables), so
ordinary templates render exactly as `apply_chat_template` renders them.
"""

from __future__ import annotations

import datetime
import json
import time
from typing import Any

from jaxinterp.errors import CheckpointError, shown

TIME_LIMIT = 5.0  # seconds; real templates render in milliseconds
OUTPUT_LIMIT = 1 << 20  # characters of rendered text beyond what the messages themselves hold
OPERAND_LIMIT = 1 << 20  # largest string or list a template may build with `*`, largest exponent of `**`


class _Bound(Exception):
    """A template ran past one of its bounds."""


def _environment(deadline: float) -> Any:
    import jinja2
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class Bounded(ImmutableSandboxedEnvironment):
        intercepted_binops = frozenset({"*", "**"})

        def _tick(self) -> None:
            if time.monotonic() > deadline:
                raise _Bound(f"still rendering after {TIME_LIMIT} s")

        def call(self, context, obj, *args, **kwargs):
            self._tick()
            return super().call(context, obj, *args, **kwargs)

        def getattr(self, obj, attribute):
            self._tick()
            return super().getattr(obj, attribute)

        def getitem(self, obj, argument):
            self._tick()
            return super().getitem(obj, argument)

        def call_binop(self, context, operator, left, right):
            self._tick()
            if operator == "**" and isinstance(right, (int, float)) and abs(right) > 64 and abs(left) > 1:
                raise _Bound(f"an exponent of {shown(repr(right))}")
            if operator == "*" and any(isinstance(a, (str, list, tuple)) for a in (left, right)):
                sizes = [len(a) if isinstance(a, (str, list, tuple)) else a for a in (left, right)]
                if all(isinstance(s, int) for s in sizes) and sizes[0] * sizes[1] > OPERAND_LIMIT:
                    raise _Bound(f"a repetition of {sizes[0] * sizes[1]} items")
            return super().call_binop(context, operator, left, right)

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = Bounded(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda format: datetime.datetime.now().strftime(format)
    return env


def render_chat(tokenizer: Any, messages: list[dict[str, Any]], *, add_generation_prompt: bool,
                source: str = "") -> str:
    """The text of `messages` in the tokenizer's chat template, rendered with bounds (see the module docstring)."""
    import jinja2

    where = f"{source or getattr(tokenizer, 'name_or_path', '') or 'tokenizer'}: chat template"
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, dict):
        template = template.get("default")
    if not isinstance(template, str):
        raise CheckpointError(f"{where}: missing (the tokenizer has no chat template; pass chat=False)")
    deadline = time.monotonic() + TIME_LIMIT
    limit = OUTPUT_LIMIT + 4 * sum(len(str(m.get("content", ""))) for m in messages)
    try:
        compiled = _environment(deadline).from_string(template)
        variables = {**getattr(tokenizer, "special_tokens_map", {}), "messages": messages,
                     "add_generation_prompt": add_generation_prompt}
        pieces, length = [], 0
        for piece in compiled.generate(**variables):
            length += len(piece)
            if length > limit:
                raise _Bound(f"output longer than {limit} characters")
            if time.monotonic() > deadline:
                raise _Bound(f"still rendering after {TIME_LIMIT} s")
            pieces.append(piece)
    except _Bound as e:
        raise CheckpointError(f"{where}: refused: {e}") from None
    except jinja2.exceptions.SecurityError as e:
        raise CheckpointError(f"{where}: refused by Jinja's sandbox ({shown(str(e), 300)})") from None
    except (jinja2.exceptions.TemplateError, RecursionError, MemoryError, ArithmeticError, TypeError, ValueError,
            AttributeError, LookupError) as e:
        raise CheckpointError(f"{where}: failed to render ({type(e).__name__}: {shown(str(e), 300)})") from None
    return "".join(pieces)
