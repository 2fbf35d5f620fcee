"""Building blocks shared by the families: projections, normalisations and activations.

Normalisations compute in float32 and return the input dtype, whatever the parameter
dtype, so bfloat16 models keep their statistics exact. Projections (`Dense`,
`DenseGeneral`) accumulate their products in float32 and return the inputs' dtype: a
bfloat16 model stores weights and activations in half the memory while every sum is
exact to float32, and XLA runs bf16 x bf16 -> f32 products natively where the hardware
has them (GPU and TPU matrix units; on CPUs with AVX512-BF16 this measured 1.8x faster
than float32 products in `benchmarks/forward.py`, where bf16 -> bf16 products and
upcasting the weights to float32 were both no faster than float32).
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxinterp.errors import ConfigError

Array = jax.Array


def dot_accumulating_f32(lhs: Array, rhs: Array, dimension_numbers, precision=None, preferred_element_type=None) -> Array:
    """`lax.dot_general` summed in float32, returned in the inputs' dtype (see the module docstring)."""
    out = jax.lax.dot_general(lhs, rhs, dimension_numbers, precision=precision, preferred_element_type=jnp.float32)
    return out.astype(preferred_element_type or jnp.result_type(lhs, rhs))


Dense = functools.partial(nn.Dense, dot_general=dot_accumulating_f32)
DenseGeneral = functools.partial(nn.DenseGeneral, dot_general=dot_accumulating_f32)


class RMSNorm(nn.Module):
    """RMS normalisation (Llama family): x / rms(x) * scale."""

    eps: float

    @nn.compact
    def __call__(self, x: Array) -> Array:
        scale = self.param("scale", nn.initializers.ones, (x.shape[-1],))
        x32 = x.astype(jnp.float32)
        normed = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + self.eps)
        return (scale.astype(jnp.float32) * normed).astype(x.dtype)


class LayerNorm(nn.Module):
    """Layer normalisation with scale and bias (GPT-2, CLIP, SigLIP)."""

    eps: float

    @nn.compact
    def __call__(self, x: Array) -> Array:
        scale = self.param("scale", nn.initializers.ones, (x.shape[-1],))
        bias = self.param("bias", nn.initializers.zeros, (x.shape[-1],))
        x32 = x.astype(jnp.float32)
        mean = jnp.mean(x32, axis=-1, keepdims=True)
        var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
        normed = (x32 - mean) * jax.lax.rsqrt(var + self.eps)
        return (normed * scale.astype(jnp.float32) + bias.astype(jnp.float32)).astype(x.dtype)


ACTIVATIONS = {
    "silu": jax.nn.silu,
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),
    "relu": jax.nn.relu,
}


def activation(name: str, *, source: str = "config"):
    """The activation function called `name` in Hugging Face configs."""
    if name not in ACTIVATIONS:
        raise ConfigError(f"{source}: activation: expected one of {sorted(ACTIVATIONS)}, found {name!r}")
    return ACTIVATIONS[name]
