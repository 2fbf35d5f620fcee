"""The contract between a model family and the rest of jaxinterp.

A family is one package under `models/` that provides a `Family` record, registered with
one line in `models/__init__.py`:

- its config: a frozen dataclass subclassing `FamilyConfig` (hashable: it keys compiled
  programs) whose `module()` is a Flax module taking `(batch, tap, cache, decoding)` and
  returning an `Output`, every intermediate through a named site;
- `hf_configs`: Hugging Face `model_type` -> a builder of the config from a config.json
  dictionary (`builder(hf, source=...)`);
- `checkpoint`: its name map (`name_map(config, **placement)` -> parameter path ->
  (tensor name, layout), `ignored(config, **placement)` -> regexes of unused tensors, and
  optionally `PLACEMENTS`, the prefixes different transformers versions save under, and
  `canonical(name)`, a renaming of older tensor names);
- `formats`: checkpoint `model_type` -> name map, where a format's names differ (LLaDA);
- `gguf`: llama.cpp architecture -> the `GGUFNames` that translate its tensors.

`FamilyConfig` states, by attribute, what every config answers; the defaults below hold for
a family that does not override them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, Protocol

import jax.numpy as jnp

from jaxinterp.errors import ArgumentError, ConfigError
from jaxinterp.models.batch import Batch, make_batch

OBJECTIVES = ("next_token", "masked_token")
# what every config must answer (a dataclass field, a property or a class attribute)
REQUIRED = ("family", "num_layers", "num_heads", "hidden_size", "vocab_size", "causal", "objective", "module")


class FamilyConfig:
    """Base of every family config: the contract's optional parts, with their defaults.

    Every config states `family` (its registry name), `num_layers`, `num_heads`,
    `hidden_size`, `vocab_size` (None for a model without a vocabulary, e.g. a vision tower),
    `causal` (the attention mask: causal, or bidirectional when False: which keys a query
    sees) and `objective` (what the logits predict: `next_token`, the row at t scores token
    t + 1; `masked_token`, the row at t scores token t). Only the objective decides which
    logit row a target reads, so a positional scheme changes the mask without moving targets.
    """

    family: ClassVar[str]
    objective: ClassVar[str] = "next_token"
    image_grid: ClassVar[tuple[int, int, int] | None] = None  # (offset, rows, cols) of a VLM's image tokens
    image_token_id: ClassVar[int | None] = None  # the placeholder an image's features replace
    mask_token_id: ClassVar[int | None] = None  # the mask token of a masked-diffusion LM
    learned_positions: ClassVar[bool] = False  # positions index a table: none may lie past its end

    @property
    def decoder(self) -> FamilyConfig:
        """The config of the part that holds the KV cache and produces the logits (itself here)."""
        return self

    def bidirectional(self) -> FamilyConfig:
        """This config with a bidirectional attention mask (for positional schemes)."""
        if "causal" not in {f.name for f in dataclasses.fields(self)} or not self.causal:
            raise ArgumentError(f"{self.family}: positional schemes need a causal decoder with a causal switch "
                                "(the Llama family)")
        return dataclasses.replace(self, causal=False)

    def example_batch(self) -> Batch:
        """A small batch that exercises every part of the model (two tokens here)."""
        return make_batch(jnp.zeros((1, 2), jnp.int32))

    def check_batch(self, batch: Batch) -> None:
        """Raises ArgumentError for a batch this family cannot read (any batch of tokens here)."""

    def tensor_parallel_rules(self) -> dict[str, int]:
        """Parameter path regex -> the dimension that tensor parallelism splits (none here)."""
        return {}

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FamilyConfig:
        return cls(**data)


class CheckpointNames(Protocol):
    """A family's name map (usually its `checkpoint` module)."""

    def name_map(self, config: Any, **placement: Any) -> Mapping[str, tuple[str, Any]]: ...

    def ignored(self, config: Any, **placement: Any) -> tuple[str, ...]: ...


@dataclasses.dataclass(frozen=True)
class GGUFNames:
    """How one llama.cpp architecture's tensors read as a Hugging Face checkpoint.

    Attributes:
      model_type: the Hugging Face `model_type` the file's config is given.
      blocks: llama.cpp block tensor name -> the Hugging Face name inside `model.layers.{i}`.
      top: llama.cpp top-level tensor name -> Hugging Face name.
      permuted: llama.cpp's converter interleaved the rotary rows of q/k (undone on read).
    """

    model_type: str
    blocks: Mapping[str, str]
    top: Mapping[str, str]
    permuted: bool


@dataclasses.dataclass(frozen=True)
class Family:
    """What one family package provides to the rest of jaxinterp (see the module docstring)."""

    config: type
    hf_configs: Mapping[str, Callable[..., Any]] = dataclasses.field(default_factory=dict)
    checkpoint: CheckpointNames | None = None
    formats: Mapping[str, CheckpointNames] = dataclasses.field(default_factory=dict)
    gguf: Mapping[str, GGUFNames] = dataclasses.field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.config.family

    def check(self) -> None:
        """Raises ConfigError unless the record states the whole contract (run at registration)."""
        config = self.config
        if not (isinstance(config, type) and issubclass(config, FamilyConfig) and dataclasses.is_dataclass(config)):
            raise ConfigError(f"family {config!r}: expected a dataclass subclassing FamilyConfig")
        if not config.__dataclass_params__.frozen:
            raise ConfigError(f"family {self.name}: its config must be a frozen dataclass (it keys compiled programs)")
        fields = {f.name for f in dataclasses.fields(config)}
        missing = [name for name in REQUIRED if name not in fields and not hasattr(config, name)]
        if missing:
            raise ConfigError(f"family {self.name}: its config lacks {missing}")
        for names in (self.checkpoint, *self.formats.values()):
            if names is not None and not (callable(getattr(names, "name_map", None))
                                          and callable(getattr(names, "ignored", None))):
                raise ConfigError(f"family {self.name}: a name map needs name_map(config) and ignored(config)")
        if self.hf_configs and self.checkpoint is None:
            raise ConfigError(f"family {self.name}: reads Hugging Face configs but has no name map")


def check_objective(objective: str) -> None:
    if objective not in OBJECTIVES:
        raise ConfigError(f"objective: expected one of {OBJECTIVES}, found {objective!r}")


def predicts_next_token(config: Any) -> bool:
    """Whether the logits at position t score token t + 1 (else token t itself)."""
    return config.objective == "next_token"
