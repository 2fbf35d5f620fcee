"""Rematerialisation that lowers the peak memory on every XLA backend, CPU included.

`jax.checkpoint` marks the recomputation with optimisation barriers so that XLA does not
merge it back into the forward pass; XLA's CPU pipeline drops those barriers before its
common-subexpression pass, so on CPU an unrolled stack of checkpointed blocks compiles to
the same program (and the same peak) as without them. `recompute_in_backward` gets the
same effect in a way no backend undoes: the backward pass of the function recomputes it
inside a `lax.cond` (a separate computation that CSE cannot merge with the forward, and that
cannot start before its cotangent exists). Both branches are the same function, so the
predicate only has to be unknown at compile time; its value never matters.

The function keeps only its inputs (and the arrays it closes over) for the backward pass.
It supports reverse-mode differentiation (`grad`, `vjp`); forward mode (`jvp`) is not
defined for it, as for any `jax.custom_vjp`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp


def _differentiable(x: Any) -> bool:
    return jnp.issubdtype(jnp.result_type(x), jnp.inexact)


def recompute_in_backward(fn: Callable[..., Any]) -> Callable[..., Any]:
    """`fn`, whose backward pass recomputes it from its inputs instead of keeping its intermediates."""

    def call(*args: Any) -> Any:
        converted, closed = jax.closure_convert(fn, *args)  # closed-over tracers become arguments
        flat, tree = jax.tree.flatten((args, closed))
        keep = [_differentiable(x) for x in flat]
        fixed = [x for x, k in zip(flat, keep) if not k]  # integer and boolean inputs: no cotangent

        def rebuild(diff: list) -> Any:
            diff_it, fixed_it = iter(diff), iter(fixed)
            inputs, consts = jax.tree.unflatten(tree, [next(diff_it) if k else next(fixed_it) for k in keep])
            return converted(*inputs, *consts)

        @jax.custom_vjp
        def run(diff: list) -> Any:
            return rebuild(diff)

        def forward(diff: list) -> tuple[Any, list]:
            return rebuild(diff), diff

        def backward(diff: list, cotangent: Any) -> tuple[list]:
            leaves, ct_tree = jax.tree.flatten(cotangent)
            live = [c for c in leaves if c.dtype != jax.dtypes.float0]

            def grads(operands: tuple[list, list]) -> list:
                diff, live = operands
                live_it = iter(live)
                full = [next(live_it) if c.dtype != jax.dtypes.float0 else c for c in leaves]
                return jax.vjp(rebuild, diff)[1](jax.tree.unflatten(ct_tree, full))[0]

            probe = jnp.ravel(live[0])[0] if live else jnp.ravel(diff[0])[0]
            return (jax.lax.cond(probe == probe, grads, grads, (diff, live)),)

        run.defvjp(forward, backward)
        if not any(keep):
            return rebuild([])
        return run([x for x, k in zip(flat, keep) if k])

    return call

