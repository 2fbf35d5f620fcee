"""Activation, attribution and path patching, and their metrics (see each module).

    result = patching.activation_patching(model, clean, corrupted, patching.logit_diff(mary, john))
    result.normalised        # [layer, position]: 1 where the cell restores the clean answer
    result.figure("resid_pre.png")
    heads = patching.path_patching(model, clean, corrupted, metric, receivers=[(9, 9), (10, 0)])  # senders -> 9.9, 10.0
"""

from jaxinterp.patching.activation import activation_patching
from jaxinterp.patching.attribution import attribution_patching
from jaxinterp.patching.grid import SITES
from jaxinterp.patching.metrics import last_logits, logit_diff, normalised, target_probability
from jaxinterp.patching.path import path_patching
from jaxinterp.patching.result import PatchingResult

__all__ = ["SITES", "PatchingResult", "activation_patching", "attribution_patching", "last_logits", "logit_diff",
           "normalised", "path_patching", "target_probability"]
