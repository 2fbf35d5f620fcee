"""Figures: every function returns a matplotlib Figure and optionally saves it (the HTML report writes a file)."""

from jaxinterp.viz.heatmap import layer_head_heatmap
from jaxinterp.viz.layer_profile import layer_profiles
from jaxinterp.viz.overlay import image_overlay, layer_grid
from jaxinterp.viz.report import attribution_report, feature_report
from jaxinterp.viz.token_strip import token_strip

__all__ = ["attribution_report", "feature_report", "image_overlay", "layer_grid", "layer_head_heatmap", "layer_profiles", "token_strip"]
