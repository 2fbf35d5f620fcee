"""Attention statistics computed from captured `attn.probs` (entropy, and more to come)."""

from jaxinterp.attention.stats import normalised_entropy, visible_keys

__all__ = ["normalised_entropy", "visible_keys"]
