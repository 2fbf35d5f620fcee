"""Activation patching, attribution patching and their metrics (see each module).

    result = patching.activation_patching(model, clean, corrupted, patching.logit_diff(mary, john))
    result.normalised        # [layer, position]: 1 where the cell restores the clean answer
    result.figure("resid_pre.png")
"""

from jaxinterp.patching.activation import activation_patching
from jaxinterp.patching.attribution import attribution_patching
from jaxinterp.patching.grid import SITES
from jaxinterp.patching.metrics import last_logits, logit_diff, normalised, target_probability
from jaxinterp.patching.result import PatchingResult

__all__ = ["SITES", "PatchingResult", "activation_patching", "attribution_patching", "last_logits", "logit_diff",
           "normalised", "target_probability"]
