"""How a checkpoint tensor's layout maps onto a parameter's layout.

Hugging Face stores linear weights as [out, in] and fuses heads into one axis; our
parameters are [in, out] with heads split out ([D, H, Dh] for q/k/v, [H, Dh, D] for the
output projection). Each layout gives the source shape it expects for a target shape (so
a wrong checkpoint is caught before any data is read) and the transform itself.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

Shape = tuple[int, ...]


class Layout:
    """A named pair (expected source shape, transform) for one kind of tensor."""

    def __init__(self, name: str, source_shape: Callable[[Shape], Shape], apply: Callable[[np.ndarray, Shape], np.ndarray]):
        self.name = name
        self.source_shape = source_shape
        self.apply = apply

    def __repr__(self) -> str:
        return f"Layout({self.name})"


SAME = Layout("same", lambda t: t, lambda a, t: a)
# [out, in] -> [in, out]
LINEAR = Layout("linear", lambda t: (t[1], t[0]), lambda a, t: a.T)
# [out1 * out2, in] -> [in, out1, out2]   (q/k/v projections with heads split out)
LINEAR_SPLIT_OUT = Layout(
    "linear_split_out", lambda t: (math.prod(t[1:]), t[0]), lambda a, t: a.T.reshape(t)
)
# [out, in1 * in2] -> [in1, in2, out]   (output projection reading split heads)
LINEAR_SPLIT_IN = Layout(
    "linear_split_in", lambda t: (t[-1], math.prod(t[:-1])), lambda a, t: a.T.reshape(t)
)
# [n1 * n2] -> [n1, n2]   (biases of split projections)
SPLIT = Layout("split", lambda t: (math.prod(t),), lambda a, t: a.reshape(t))


def fused_columns(part: int, parts: int) -> Layout:
    """Column block `part` of `parts` in a fused [in, parts * out] weight (GPT-2's Conv1D
    `c_attn` holds q, k and v side by side), reshaped to the target [in, ...]."""
    return Layout(
        f"fused_columns({part}/{parts})",
        lambda t: (t[0], parts * math.prod(t[1:])),
        lambda a, t: np.split(a, parts, axis=-1)[part].reshape(t),
    )


def fused_bias(part: int, parts: int) -> Layout:
    """Block `part` of `parts` in a fused [parts * out] bias, reshaped to the target."""
    return Layout(
        f"fused_bias({part}/{parts})",
        lambda t: (parts * math.prod(t),),
        lambda a, t: np.split(a, parts)[part].reshape(t),
    )


# [in1 * in2, out] -> [in1, in2, out]   (a Conv1D output projection reading split heads)
SPLIT_IN = Layout("split_in", lambda t: (math.prod(t[:-1]), t[-1]), lambda a, t: a.reshape(t))
# [out, in, kh, kw] -> [in, kh, kw, out]   (a stride-p Conv2d patch embedding as a dense map over a patch)
CONV_PATCH = Layout("conv_patch", lambda t: (t[-1], *t[:-1]), lambda a, t: np.moveaxis(a, 0, -1))
