"""Building blocks shared by the families: normalisations and activations.

Normalisations compute in float32 and return the input dtype, whatever the parameter
dtype, so bfloat16 models keep their statistics exact.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxinterp.errors import ConfigError

Array = jax.Array


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
