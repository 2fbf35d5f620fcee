"""Model families as pure functions of explicit parameters.

Each family is one configuration dataclass plus one Flax module whose `__call__` takes
`(batch, tap, cache, decoding)` and returns an `Output` (logits, last hidden states, cache). `forward` wraps any of them
into the library-wide contract

    forward(config, params, batch, *, edits=(), deltas=None, capture=(), cache=None)
        -> (Output, captured)

which is safe under `jit`, `grad` and `vmap`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from jaxinterp.errors import ConfigError, shown
from jaxinterp.models import clip_vision, gpt2, llama, llava, moa, siglip_vision
from jaxinterp.models.config_checks import check_config, check_hf
from jaxinterp.models.batch import Batch, KVCache, Output, make_batch
from jaxinterp.models.sites import SEGMENTS, Context, Tap, segment_id

Array = jax.Array

# family name -> config class (one entry per line, so parallel additions merge cleanly)
FAMILIES = {
    config.family: config
    for config in (
        llama.LlamaConfig,
        gpt2.GPT2Config,
        moa.MoAConfig,
        clip_vision.ClipVisionConfig,
        siglip_vision.SiglipVisionConfig,
        llava.LlavaConfig,
    )
}
# Hugging Face `model_type` -> function building our config from its config.json.
HF_MODEL_TYPES = {
    **{model_type: llama.from_hf_config for model_type in llama.HF_MODEL_TYPES},
    "gpt2": gpt2.from_hf_config,
    "llada": llama.from_llada_config,
    **{model_type: clip_vision.from_hf_config for model_type in clip_vision.ClipVisionConfig.hf_model_types},
    **{model_type: siglip_vision.from_hf_config for model_type in siglip_vision.SiglipVisionConfig.hf_model_types},
    "llava": llava.from_hf_config,
}


def forward(
    config: Any,
    params: Mapping[str, Any],
    batch: Batch,
    *,
    edits: Sequence[Any] = (),
    deltas: Mapping[str, Array] | None = None,
    capture: Sequence[str] = (),
    cache: KVCache | None = None,
    decoding: bool = False,
    record_all: bool = False,
    check_finite: bool = False,
    remat: bool = False,
) -> tuple[Output, dict[str, Array]]:
    """Runs a model of any family through its sites (see the module docstring); `remat`
    recomputes each block in the backward pass (`decoder.call_block`)."""
    for edit in edits:
        batch = edit.inputs(batch, decoding)
    tap = Tap(edits=tuple(edits), deltas=deltas, capture=tuple(capture), record_all=record_all,
              check_finite=check_finite, remat=remat)
    output = config.module().apply({"params": params}, batch, tap, cache, decoding)
    return (output.replace(finite=tap.finite) if check_finite else output), tap.captured


def config_from_hf(hf: Mapping[str, Any], *, source: str = "config.json") -> Any:
    """Our config for a Hugging Face config.json dictionary (any supported family)."""
    model_type = hf.get("model_type")
    if model_type not in HF_MODEL_TYPES:
        architectures = hf.get("architectures")
        raise ConfigError(
            f"{source}: model_type: expected one of {sorted(HF_MODEL_TYPES)}, found {shown(repr(model_type))}"
            + (f" (architectures {shown(repr(architectures))})" if architectures else "")
        )
    check_hf(hf, source=source)
    config = _built(lambda: HF_MODEL_TYPES[model_type](hf, source=source), source)
    check_config(config, source=source)
    return config


def _built(build: Any, source: str) -> Any:
    """`build()`, a family's config builder, with a missing or malformed key as a ConfigError naming it."""
    try:
        return build()
    except ConfigError as e:  # raised by a config class, which does not know the file
        raise e if str(e).startswith(source) else ConfigError(f"{source}: {e}") from None
    except KeyError as e:
        raise ConfigError(f"{source}: {shown(str(e.args[0]))}: missing (the family needs it)") from None
    except (TypeError, ValueError, ZeroDivisionError, AttributeError) as e:
        raise ConfigError(f"{source}: malformed ({type(e).__name__}: {shown(str(e), 300)})") from None


def example_batch(config: Any) -> Batch:
    """A small batch that exercises every part of a model (a family's `example_batch`, else two tokens)."""
    return config.example_batch() if hasattr(config, "example_batch") else make_batch(jnp.zeros((1, 2), jnp.int32))


def init_params(config: Any, key: Array, dtype: Any = jnp.float32) -> dict[str, Any]:
    """Randomly initialised parameters of a family config (for tests and training from scratch)."""
    params = config.module().init(key, example_batch(config), Tap())["params"]
    return jax.tree.map(lambda x: x.astype(dtype), params)


def abstract_params(config: Any, dtype: Any = jnp.float32) -> dict[str, Any]:
    """Shapes and dtypes of the parameters of a family config, computed without allocating them."""
    return jax.eval_shape(lambda: init_params(config, jax.random.key(0), dtype))


def config_from_dict(data: Mapping[str, Any], *, source: str = "config") -> Any:
    """Rebuilds a family config saved with `config_to_dict` (`source`: where it was read, for errors)."""
    family = data.get("family")
    if family not in FAMILIES:
        raise ConfigError(f"{source}: family: expected one of {sorted(FAMILIES)}, found {shown(repr(family))}")
    config = _built(lambda: FAMILIES[family].from_dict(data["config"]), source)
    check_config(config, source=source)
    return config


def config_to_dict(config: Any) -> dict[str, Any]:
    """A JSON-ready dictionary from which `config_from_dict` rebuilds `config`."""
    return {"family": config.family, "config": config.to_dict()}


__all__ = [
    "FAMILIES", "SEGMENTS", "Batch", "Context", "KVCache", "Output", "Tap", "abstract_params",
    "config_from_dict", "config_from_hf", "config_to_dict", "example_batch", "forward", "init_params", "make_batch", "segment_id",
]
