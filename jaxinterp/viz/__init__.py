"""Figures: every function returns a matplotlib Figure and optionally saves it."""

from jaxinterp.viz.heatmap import layer_head_heatmap

__all__ = ["layer_head_heatmap"]
