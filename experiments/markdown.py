"""Markdown pieces for the generated measured sections: tables and figures with their intervals.

Every figure an experiment reports goes through these, so a page shows a mean with its bootstrap
interval and item count the same way everywhere (`experiments.intervals` writes them).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np


def number(x: Any, digits: int = 3) -> str:
    """A figure: ints as they are; floats up to 1 in magnitude with `digits` decimals (proportions
    and their interval bounds line up: 1.000, not 1), larger ones with `digits` significant digits
    (trailing zeros kept: 2.50) and no decimals from 10**digits on; NaN and None as "undefined"."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "undefined"
    if isinstance(x, (int, np.integer)):
        return str(int(x))
    x = float(x)
    return f"{x:.{digits}f}" if abs(x) <= 1 else f"{x:#.{digits}g}".rstrip(".") if abs(x) < 10 ** digits else f"{x:.0f}"


def signed(x: Any, digits: int = 2) -> str:
    """A correlation or a difference with its sign and `digits` decimals (+0.31, -0.07)."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "undefined"
    return f"{float(x):+.{digits}f}"


def p_value(p: Any) -> str:
    """A p-value in two significant digits (scientific below 0.001)."""
    if p is None or (isinstance(p, float) and math.isnan(p)):
        return "undefined"
    return f"{p:.1e}" if p < 1e-3 else f"{p:.2g}"


def interval(figure: dict, digits: int = 3) -> str:
    """`{"mean", "ci95", "n"}` as "0.133 [0.075, 0.192]" (the interval's bounds, n given apart)."""
    low, high = figure["ci95"]
    return f"{number(figure['mean'], digits)} [{number(low, digits)}, {number(high, digits)}]"


def table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A markdown table; cells are str()-ed as given."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)
