"""The contract between a model family and the rest of jaxinterp.

A family is a frozen config dataclass (hashable: it keys compiled programs) whose `module()`
is a Flax module taking `(batch, tap, cache, decoding)` and returning an `Output`. Every
config states, by attribute:

- `family`: its registry name; `num_layers`, `num_heads`, `hidden_size`;
- `causal`: the attention mask (causal, or bidirectional when False): which keys a query sees;
- `objective`: what the logits predict (`next_token`: the row at t scores token t + 1;
  `masked_token`: the row at t scores token t). Only the objective decides which logit row
  a target reads, so a positional scheme can change the mask without moving targets;
- `to_dict()` / `from_dict()`; optionally `tensor_parallel_rules()`, `example_batch()`,
  `image_grid` (vision-language families) and `learned_positions`.
"""

from __future__ import annotations

from typing import Any

from jaxinterp.errors import ConfigError

OBJECTIVES = ("next_token", "masked_token")


def check_objective(objective: str) -> None:
    if objective not in OBJECTIVES:
        raise ConfigError(f"objective: expected one of {OBJECTIVES}, found {objective!r}")


def predicts_next_token(config: Any) -> bool:
    """Whether the logits at position t score token t + 1 (else token t itself)."""
    return config.objective == "next_token"
