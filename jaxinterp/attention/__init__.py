"""Attention statistics shared by the attention methods, computed from captured `attn.probs`
or streamed layer by layer (`layer_patterns`): normalised entropy, ART's m-index, column sink
scores and sink density over a span, segment-to-segment mass, and attention rollout."""

from jaxinterp.attention.flow import segment_mass
from jaxinterp.attention.rollout import attention_rollout, rollout_step
from jaxinterp.attention.sinks import column_sink_scores, sink_density
from jaxinterp.attention.spans import Span, span_mask
from jaxinterp.attention.stats import head_statistics, normalised_entropy
from jaxinterp.attention.streaming import Pattern, layer_patterns, visible_keys
from jaxinterp.attention.uniformity import m_index

__all__ = [
    "Pattern", "Span", "attention_rollout", "column_sink_scores", "head_statistics", "layer_patterns", "m_index",
    "normalised_entropy", "rollout_step", "segment_mass", "sink_density", "span_mask", "visible_keys",
]
