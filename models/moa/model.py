"""MoA: a language model whose attention is a mixture of attention heads (Zhang et al., EMNLP 2022).

Each block keeps one shared key/value projection (W_k, W_v in R^{D x Dh}) and E attention
experts, each with its own query and output projections (W_q^i, W_o^i). A router picks, per
token, the top-k experts of p_t = softmax(h_t W_g) (eq. 2); expert i attends with
softmax(q_t W_q^i K^T / sqrt(Dh)) V (eq. 3) and the block output is
y_t = sum_{i in top-k} p_{t,i} E_i(q_t, K, V) W_o^i (eq. 4; gates are the full-softmax
probabilities, not renormalised over the top-k, as in the official `moe.py`).

The k selected experts fill k head slots, so attention is multi-query attention (one shared
key/value head) through the library's shared attention core and every usual site exists with
slots in the place of heads. Sites, per block `blocks.{i}` (E experts, k slots):

  resid_pre [B,T,D] -> attn.in [B,T,D] -> attn.router_logits [B,T,E] f32 -> attn.gates [B,T,E] f32 (top-k
  probabilities, 0 for unselected experts) -> attn.q [B,T,k,Dh], attn.k / attn.v [B,T,1,Dh]
  -> attn.scores / attn.probs [B,k,T,S] f32 -> attn.head_out [B,T,k,Dh] (slot j holds the
  expert of rank j, before its gate and output projection) -> attn.out [B,T,D]
  -> resid_mid -> mlp.in -> mlp.act [B,T,F] -> mlp.out -> resid_post

and `embed`, `final_norm`, `logits` around the blocks. Zeroing `attn.gates[..., e]` ablates
expert e without re-routing; biasing `attn.router_logits` re-routes. The auxiliary losses
(`aux_losses`, eq. 5) are computed from the captured router sites.

Choices for a decoder-only LM (the paper's models are post-LN encoder-decoders for MT):
pre-RMSNorm blocks, rotary positions on the queries and the shared key, and the same gated
SiLU MLP as the Llama family, so that a dense Llama of equal width is the baseline.
Initialisation follows the official code: W_k, W_v xavier-uniform with gain 1/sqrt(2), each
expert's W_q^i, W_o^i xavier-uniform, W_g = 0 (uniform routing at the start).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any, ClassVar

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from jaxinterp.errors import ConfigError
from jaxinterp.models.attention import attend
from jaxinterp.models.batch import Batch, KVCache
from jaxinterp.models.family import FamilyConfig
from jaxinterp.models.layers import DenseGeneral, RMSNorm
from jaxinterp.models.rope import RopeConfig, apply_rotary
from jaxinterp.models.shell import gated_mlp, rotary_decoder
from jaxinterp.models.sites import Context, Tap

Array = jax.Array
AUX_LOSS_SCALINGS = ("per_token_mean", "fairseq_sum")


@dataclasses.dataclass(frozen=True, kw_only=True)
class MoAConfig(FamilyConfig):
    """Shape of a MoA language model.

    Attributes:
      vocab_size, hidden_size, intermediate_size, num_layers: as in the Llama family.
      num_experts: attention experts per block (E).
      top_k: experts selected per token (k); they fill k head slots.
      head_dim: width of each expert and of the shared key/value (Dh).
      rms_norm_eps, rope, max_position_embeddings, tie_word_embeddings, causal: as in Llama.
      bos_token_id, eos_token_ids, pad_token_id: special tokens.
    """

    family: ClassVar[str] = "moa"

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_experts: int
    top_k: int
    head_dim: int
    rms_norm_eps: float = 1e-6
    rope: RopeConfig = RopeConfig()
    max_position_embeddings: int = 2048
    tie_word_embeddings: bool = True
    causal: bool = True
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()
    pad_token_id: int | None = None

    def __post_init__(self):
        if self.num_experts < 1:
            raise ConfigError(f"num_experts: expected at least 1, found {self.num_experts}")
        if not 1 <= self.top_k <= self.num_experts:
            raise ConfigError(f"top_k: expected 1 <= top_k <= num_experts={self.num_experts}, found {self.top_k}")

    @property
    def num_heads(self) -> int:
        """Head slots per token: the k selected experts."""
        return self.top_k

    @property
    def num_kv_heads(self) -> int:
        """One shared key/value head."""
        return 1

    def module(self) -> nn.Module:
        return MoA(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> MoAConfig:
        data = dict(data)
        data["rope"] = RopeConfig(**data["rope"])
        data["eos_token_ids"] = tuple(data.get("eos_token_ids", ()))
        return cls(**data)


def route(router_logits: Array, top_k: int) -> tuple[Array, Array]:
    """Top-k routing (eq. 2): dense gates [..., E] (softmax probabilities of the chosen experts,
    zero elsewhere) and the chosen experts [..., k] in decreasing probability order."""
    probs = jax.nn.softmax(router_logits.astype(jnp.float32), axis=-1)
    top, experts = jax.lax.top_k(probs, top_k)
    gates = jnp.sum(jax.nn.one_hot(experts, probs.shape[-1], dtype=probs.dtype) * top[..., None], axis=-2)
    return gates, experts


def _xavier_experts(key: Array, shape: tuple[int, int, int], dtype: Any = jnp.float32) -> Array:
    """Per-expert xavier-uniform: U(-a, a), a = sqrt(6 / (fan_in + fan_out)) for [E, in, out]."""
    bound = math.sqrt(6.0 / (shape[1] + shape[2]))
    return jax.random.uniform(key, shape, dtype, -bound, bound)


class MoABlock(nn.Module):
    """One pre-norm block: mixture-of-attention-heads then gated MLP, each added to the residual."""

    config: MoAConfig
    layer: int

    @nn.compact
    def __call__(self, x, *, tap: Tap, ctx: Context, rotary, allowed, cache, write_at):
        cfg, prefix = self.config, f"blocks.{self.layer}"
        ctx = ctx.replace(layer=self.layer)
        experts_shape = (cfg.num_experts, cfg.hidden_size, cfg.head_dim)
        x = tap(f"{prefix}.resid_pre", x, ctx)
        h = tap(f"{prefix}.attn.in", RMSNorm(cfg.rms_norm_eps, name="attn_norm")(x), ctx)
        w_gate = self.param("router", nn.initializers.zeros, (cfg.hidden_size, cfg.num_experts))
        logits = jnp.einsum("btd,de->bte", h, w_gate.astype(h.dtype), preferred_element_type=jnp.float32)
        logits = tap(f"{prefix}.attn.router_logits", logits, ctx)
        gates, experts = route(logits, cfg.top_k)
        gates = tap(f"{prefix}.attn.gates", gates, ctx)
        w_q = self.param("q_experts", _xavier_experts, experts_shape)
        w_o = self.param("o_experts", _xavier_experts, (cfg.num_experts, cfg.head_dim, cfg.hidden_size))
        kv_init = nn.initializers.variance_scaling(0.5, "fan_avg", "uniform")  # xavier, gain 1/sqrt(2)
        k = DenseGeneral((1, cfg.head_dim), use_bias=False, kernel_init=kv_init, name="k_proj")(h)
        v = DenseGeneral((1, cfg.head_dim), use_bias=False, kernel_init=kv_init, name="v_proj")(h)
        # Dense dispatch: every expert's query, then the k chosen ones (cheap for small E).
        q_all = jnp.einsum("btd,edh->bteh", h, w_q.astype(h.dtype))
        q = jnp.take_along_axis(q_all, experts[..., None], axis=2)
        q, k = apply_rotary(q, *rotary), apply_rotary(k, *rotary)
        heads, cache = attend(
            q, k, v, allowed=allowed, tap=tap, prefix=prefix, ctx=ctx,
            scale=cfg.head_dim ** -0.5, cache=cache, write_at=write_at,
        )
        slot_gates = jnp.take_along_axis(gates, experts, axis=-1).astype(heads.dtype)
        dispatch = jax.nn.one_hot(experts, cfg.num_experts, dtype=heads.dtype)  # [B, T, k, E]
        attn_out = jnp.einsum("btkh,btke,ehd->btd", heads * slot_gates[..., None], dispatch, w_o.astype(heads.dtype))
        x = tap(f"{prefix}.resid_mid", x + tap(f"{prefix}.attn.out", attn_out, ctx), ctx)
        return gated_mlp(x, cfg=cfg, prefix=prefix, tap=tap, ctx=ctx), cache


class MoA(nn.Module):
    """Token ids (or input embeddings) -> float32 logits, every intermediate through a site."""

    config: MoAConfig

    @nn.compact
    def __call__(self, batch: Batch, tap: Tap, cache: KVCache | None = None, decoding: bool = False):
        cfg = self.config
        return rotary_decoder(self, cfg, batch, tap, cache, decoding, lambda i: MoABlock(cfg, i, name=f"blocks_{i}"),
                              [None] * cfg.num_layers)


# ---------------------------------------------------------------------------------------
# Training objective (eq. 5)


def aux_losses(router_logits: Array, gates: Array, mask: Array) -> dict[str, Array]:
    """The three auxiliary losses of one MoA module, as the official `moe.py` computes them.

    Args:
      router_logits: [B, T, E] captured at `attn.router_logits`.
      gates: [B, T, E] captured at `attn.gates`.
      mask: [B, T] True for real tokens (padding is excluded, as the code's skip_mask does).
    Returns {"switch", "z", "cv"}:
      switch = E sum_i normL1(sum_t p_t)_i normL1(count)_i, count_i = tokens with a nonzero gate
        for expert i (load balance, Switch-Transformer style);
      z = mean_t (log sum_j exp logits_{t,j})^2 over every token, padding included as in the code;
      cv = Var / Mean^2 of normL1(sum_t gates_t) (unbiased variance, as torch's .var()).
    """
    chex.assert_rank([router_logits, gates, mask], [3, 3, 2])
    chex.assert_equal_shape([router_logits, gates])
    experts = router_logits.shape[-1]
    real = mask[..., None].astype(jnp.float32)
    probs = jax.nn.softmax(router_logits.astype(jnp.float32), axis=-1) * real
    counts = jnp.sum((gates > 0) * real, axis=(0, 1))
    l1 = lambda x: x / jnp.maximum(jnp.sum(jnp.abs(x)), 1e-12)  # noqa: E731  (torch F.normalize, p=1)
    switch = experts * jnp.sum(l1(probs.sum((0, 1))) * l1(counts))
    z = jnp.mean(jax.nn.logsumexp(router_logits.astype(jnp.float32), axis=-1) ** 2)
    load = l1(jnp.sum(gates * real, axis=(0, 1)))
    cv = jnp.var(load, ddof=1) / (jnp.mean(load) ** 2 + 1e-10) if experts > 1 else jnp.zeros(())
    return {"switch": switch, "z": z, "cv": cv}


def moa_loss(
    logits: Array,
    targets: Array,
    mask: Array,
    captured: Mapping[str, Array],
    *,
    num_layers: int,
    switch_weight: float = 0.01,
    z_weight: float = 0.001,
    cv_weight: float = 0.0,
    label_smoothing: float = 0.0,
    aux_loss_scaling: str = "per_token_mean",
) -> tuple[Array, dict[str, Array]]:
    """L = L_CE + sum_blocks (alpha L_switch + beta L_z + gamma L_cv) (eq. 5; official defaults
    alpha = 0.01, beta = 0.001, gamma = 0).

    `captured` must hold `blocks.*.attn.router_logits` and `blocks.*.attn.gates`.
    `aux_loss_scaling` chooses how the auxiliary sum meets the token-mean cross-entropy:
    "per_token_mean" adds it as is (the paper's formula); "fairseq_sum" divides it by the
    number of target tokens, the effective weight of the official fairseq code (which sums
    the CE over tokens, adds the aux sum, and divides gradients by the token count).
    `label_smoothing` is 0.1 in the official MT recipe; 0 keeps perplexities plain.
    Returns (loss, {"ce", "switch", "z", "cv"}) with the aux terms summed over blocks.
    """
    if aux_loss_scaling not in AUX_LOSS_SCALINGS:
        raise ConfigError(f"aux_loss_scaling: expected one of {AUX_LOSS_SCALINGS}, found {aux_loss_scaling!r}")
    chex.assert_rank([logits, targets, mask], [3, 2, 2])
    weights = mask.astype(jnp.float32)
    tokens = jnp.maximum(weights.sum(), 1.0)
    smoothed = optax.smooth_labels(jax.nn.one_hot(targets, logits.shape[-1]), label_smoothing)
    ce = jnp.sum(optax.softmax_cross_entropy(logits, smoothed) * weights) / tokens
    terms = [aux_losses(captured[f"blocks.{i}.attn.router_logits"], captured[f"blocks.{i}.attn.gates"], mask)
             for i in range(num_layers)]
    summed = {name: sum(t[name] for t in terms) for name in ("switch", "z", "cv")}
    aux = switch_weight * summed["switch"] + z_weight * summed["z"] + cv_weight * summed["cv"]
    scale = 1.0 if aux_loss_scaling == "per_token_mean" else 1.0 / tokens
    return ce + scale * aux, {"ce": ce, **summed}
