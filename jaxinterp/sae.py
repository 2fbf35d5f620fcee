"""Sparse autoencoders in the SAELens format: load, encode a site, splice the reconstruction back.

A directory holds `cfg.json` and `sae_weights.safetensors` with W_enc [d_in, d_sae],
b_enc [d_sae], W_dec [d_sae, d_in], b_dec [d_in] and, for JumpReLU, threshold [d_sae].
With the SAELens conventions:

    pre = (x - b_dec if apply_b_dec_to_input else x) @ W_enc + b_enc
    f   = relu(pre)                              standard (ReLU)
          relu(pre) * (pre > threshold)          jumprelu
          relu(pre) on the k largest of pre      topk (k from `k` or `activation_fn_kwargs`)
    x^  = f @ W_dec + b_dec

`hook_name` (a TransformerLens hook such as `blocks.8.hook_resid_pre`) names the site the
SAE reads; our site patterns accept those names. `save_sae` writes the same two files. `SpliceSAE` is the edit that replaces the
site by the reconstruction, with or without the error term x - x^, and scales or shifts
chosen features on the way (ablation, steering).
"""

from __future__ import annotations

import json
import os
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from jaxinterp.edits import Edit
from jaxinterp.converters.files import read_json, regular_file
from jaxinterp.converters.safetensors_file import SafetensorsFile
from jaxinterp.errors import ArgumentError, CheckpointError, shown
from jaxinterp.models.hook_names import translate
from jaxinterp.models.sites import Context

Array = jax.Array
ARCHITECTURES = ("standard", "jumprelu", "topk")


@struct.dataclass
class SAE:
    """An SAE's weights (array leaves) and its structure (static fields); see the module docstring."""

    W_enc: Array
    b_enc: Array
    W_dec: Array
    b_dec: Array
    threshold: Array | None = None
    architecture: str = struct.field(pytree_node=False, default="standard")
    k: int | None = struct.field(pytree_node=False, default=None)
    apply_b_dec_to_input: bool = struct.field(pytree_node=False, default=True)
    site: str = struct.field(pytree_node=False, default="")

    def encode(self, x: Array) -> Array:
        """Feature activations [..., d_sae] of activations x [..., d_in] (computed in float32)."""
        x = jnp.asarray(x, jnp.float32)
        pre = (x - self.b_dec if self.apply_b_dec_to_input else x) @ self.W_enc + self.b_enc
        if self.architecture == "jumprelu":
            return jax.nn.relu(pre) * (pre > self.threshold)
        if self.architecture == "topk":
            values, index = jax.lax.top_k(pre, self.k)
            return jnp.put_along_axis(jnp.zeros_like(pre), index, jax.nn.relu(values), axis=-1, inplace=False)
        return jax.nn.relu(pre)

    def decode(self, features: Array) -> Array:
        """Reconstruction [..., d_in] of feature activations [..., d_sae]."""
        return jnp.asarray(features, jnp.float32) @ self.W_dec + self.b_dec


@struct.dataclass
class SpliceSAE(Edit):
    """Replaces the SAE's site by its reconstruction, with features scaled then shifted.

    x' = decode(encode(x) * scale + add) (+ x - decode(encode(x)) with `keep_error`), so
    `keep_error=True` and no change to the features leaves the model exactly as it was, and
    every difference comes from the features. `scale` and `add` ([d_sae], or None) are leaves:
    a 0 in `scale` ablates a feature, a value in `add` steers along its decoder direction.
    """

    sae: SAE
    keep_error: bool = struct.field(pytree_node=False, default=True)
    scale: Array | None = None
    add: Array | None = None

    @property
    def sites(self) -> tuple[str, ...]:
        return (self.sae.site,)

    def __call__(self, x: Array, ctx: Context) -> Array:
        features = self.sae.encode(x)
        changed = features * (1.0 if self.scale is None else self.scale) + (0.0 if self.add is None else self.add)
        out = self.sae.decode(changed)
        if self.keep_error:
            out = out + (x.astype(jnp.float32) - self.sae.decode(features))
        return out.astype(x.dtype)


def _architecture(cfg: dict, source: str) -> tuple[str, int | None]:
    """(architecture, k) from an SAELens cfg: `architecture`, else the older `activation_fn(_str)`."""
    name = cfg.get("architecture")
    if name is None or name == "standard":
        activation = cfg.get("activation_fn", cfg.get("activation_fn_str", "relu"))
        name = {"relu": "standard", "topk": "topk"}.get(activation)
        if name is None:
            raise CheckpointError(f"{source}: activation_fn: expected 'relu' or 'topk', found {shown(str(activation))!r}")
    if name not in ARCHITECTURES:
        raise CheckpointError(f"{source}: architecture: expected one of {ARCHITECTURES}, found {shown(str(name))!r}")
    kwargs = cfg.get("activation_fn_kwargs") or {}
    k = cfg.get("k", kwargs.get("k") if isinstance(kwargs, dict) else None) if name == "topk" else None
    if name == "topk" and not (isinstance(k, int) and not isinstance(k, bool) and k > 0):
        raise CheckpointError(f"{source}: k: expected a positive integer for a topk SAE, found {shown(repr(k))}")
    return name, k


def _size(cfg: dict, key: str, source: pathlib.Path) -> int:
    """A positive integer size of the SAE config (JSON may write it as an integral float)."""
    value = cfg[key]
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= 2**24:
        raise CheckpointError(f"{source}: {key}: expected a positive integer size, found {shown(repr(value))}")
    return value


def load_sae(path: str | os.PathLike) -> SAE:
    """The SAE saved by SAELens in directory `path` (errors name the file, the key, expected and found)."""
    folder = pathlib.Path(path)
    cfg_path, weights_path = folder / "cfg.json", folder / "sae_weights.safetensors"
    for needed in (cfg_path, weights_path):
        if not os.path.lexists(needed):
            raise CheckpointError(f"{shown(str(needed), 300)}: expected an SAELens file here, found none")
    cfg = read_json(cfg_path, folder=folder)
    for key in ("d_in", "d_sae", "hook_name"):
        if key not in cfg:
            raise CheckpointError(f"{cfg_path}: {key}: expected in the config, found keys {shown(str(sorted(cfg)), 300)}")
    d_in, d_sae = (_size(cfg, key, cfg_path) for key in ("d_in", "d_sae"))
    if not isinstance(cfg["hook_name"], str):
        raise CheckpointError(f"{cfg_path}: hook_name: expected a string, found {shown(repr(cfg['hook_name']))}")
    if cfg.get("normalize_activations") not in (None, "none"):
        raise CheckpointError(f"{cfg_path}: normalize_activations: expected 'none', "
                              f"found {shown(repr(cfg['normalize_activations']))}")
    architecture, k = _architecture(cfg, str(cfg_path))
    tensors = SafetensorsFile(regular_file(weights_path, folder=folder))
    shapes = {"W_enc": (d_in, d_sae), "b_enc": (d_sae,), "W_dec": (d_sae, d_in), "b_dec": (d_in,)}
    if architecture == "jumprelu":
        shapes["threshold"] = (d_sae,)
    for key, shape in shapes.items():
        if key not in tensors.names:
            raise CheckpointError(f"{weights_path}: {key}: expected a tensor of shape {shape}, found none "
                                  f"(tensors: {shown(str(sorted(tensors.names)), 300)})")
        if tensors.shape(key) != shape:
            raise CheckpointError(f"{weights_path}: {key}: expected shape {shape} (d_in={d_in}, d_sae={d_sae}), "
                                  f"found {tensors.shape(key)}")
    weights = {key: jnp.asarray(np.asarray(tensors.get(key), np.float32)) for key in shapes}
    return SAE(**weights, architecture=architecture, k=k, apply_b_dec_to_input=bool(cfg.get("apply_b_dec_to_input", True)),
               site=translate(cfg["hook_name"]))


def save_sae(sae: SAE, path: str | os.PathLike, hook_name: str) -> None:
    """Writes `sae` to directory `path` as SAELens `cfg.json` + `sae_weights.safetensors`, read back by `load_sae`.

    `hook_name` is the site in SAELens's spelling (e.g. `blocks.8.hook_resid_pre`); it must
    name the SAE's own site.
    """
    if translate(hook_name) != sae.site:
        raise ArgumentError(f"hook_name: expected a name of the SAE's site {sae.site!r}, found {hook_name!r}")
    from safetensors.numpy import save_file

    folder = pathlib.Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    names = ("W_enc", "b_enc", "W_dec", "b_dec") + (("threshold",) if sae.architecture == "jumprelu" else ())
    save_file({name: np.asarray(getattr(sae, name), np.float32) for name in names}, str(folder / "sae_weights.safetensors"))
    d_in, d_sae = sae.W_enc.shape
    cfg = {"architecture": sae.architecture, "d_in": int(d_in), "d_sae": int(d_sae), "hook_name": hook_name,
           "apply_b_dec_to_input": sae.apply_b_dec_to_input, "normalize_activations": "none",
           **({"k": sae.k} if sae.architecture == "topk" else {})}
    (folder / "cfg.json").write_text(json.dumps(cfg, indent=1))
