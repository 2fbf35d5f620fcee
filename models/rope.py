"""Rotary position embeddings (RoPE) with the scaling rules of Llama-family checkpoints.

Frequencies follow transformers' `modeling_rope_utils` exactly (same float32 arithmetic)
so that converted models match the PyTorch reference: `default`, `linear` (positions
divided by a factor) and `llama3` (Llama 3.1's band-wise frequency scaling). Rotation uses
the "rotate half" layout of Hugging Face checkpoints; GGUF's interleaved layout is undone
by the converter.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from jaxinterp.errors import ConfigError

Array = jax.Array

ROPE_TYPES = ("default", "linear", "llama3")


@dataclasses.dataclass(frozen=True, kw_only=True)
class RopeConfig:
    """Rotary embedding settings.

    Attributes:
      theta: base wavelength (`rope_theta`).
      kind: one of `ROPE_TYPES`.
      factor: scaling factor (`linear`, `llama3`).
      low_freq_factor, high_freq_factor: Llama 3.1 band edges (`llama3`).
      original_max_position: pretraining context length the bands are relative to (`llama3`).
    """

    theta: float = 10000.0
    kind: str = "default"
    factor: float = 1.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position: int = 8192

    def __post_init__(self):
        if self.kind not in ROPE_TYPES:
            raise ConfigError(f"rope type: expected one of {ROPE_TYPES}, found {self.kind!r}")


def inverse_frequencies(rope: RopeConfig, head_dim: int) -> np.ndarray:
    """[head_dim // 2] float32 inverse frequencies, as transformers computes them."""
    exponents = np.arange(0, head_dim, 2, dtype=np.int64).astype(np.float32) / np.float32(head_dim)
    inv_freq = (np.float32(1.0) / (np.float32(rope.theta) ** exponents)).astype(np.float32)
    if rope.kind == "linear":
        return (inv_freq / np.float32(rope.factor)).astype(np.float32)
    if rope.kind == "llama3":
        low_wavelen = rope.original_max_position / rope.low_freq_factor
        high_wavelen = rope.original_max_position / rope.high_freq_factor
        wavelen = 2 * math.pi / inv_freq
        scaled = np.where(wavelen > low_wavelen, inv_freq / rope.factor, inv_freq)
        smooth = (rope.original_max_position / wavelen - rope.low_freq_factor) / (
            rope.high_freq_factor - rope.low_freq_factor
        )
        smoothed = (1 - smooth) * scaled / rope.factor + smooth * scaled
        medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
        return np.where(medium, smoothed, scaled).astype(np.float32)
    return inv_freq


def rotary_tables(positions: Array, inv_freq: np.ndarray) -> tuple[Array, Array]:
    """cos and sin tables, [B, T, head_dim], for integer positions [B, T]."""
    freqs = positions.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq)[None, None, :]
    angles = jnp.concatenate([freqs, freqs], axis=-1)
    return jnp.cos(angles), jnp.sin(angles)


def apply_rotary(x: Array, cos: Array, sin: Array) -> Array:
    """Rotates [B, T, heads, head_dim] by the tables (computed in float32, cast back)."""
    half = x.shape[-1] // 2
    x32 = x.astype(jnp.float32)
    rotated = jnp.concatenate([-x32[..., half:], x32[..., :half]], axis=-1)
    out = x32 * cos[:, :, None, :] + rotated * sin[:, :, None, :]
    return out.astype(x.dtype)
