"""Visual and token attribution: one `attribute` interface over gradient CAMs (Grad-CAM, Grad-CAM++,
LLaVA-CAM and its smooth variant), Score-CAM, TAM, gradient x input, integrated gradients and
Diffusion-CAM, with targets, localisation metrics and perturbation curves; and perturbation attribution
of prompt features to an answer (`feature_attribution`: occlusion, Shapley, KernelSHAP, LIME)."""

from jaxinterp.attribution.api import METHODS, attribute
from jaxinterp.attribution.feature_attribution import FeatureAttribution, feature_attribution
from jaxinterp.attribution.metrics import (
    concentration, contrast, f3, localisation, obj_iou, otsu_threshold, pointing_game,
)
from jaxinterp.attribution.perturbation import deletion_insertion
from jaxinterp.attribution.request import Attribution
from jaxinterp.attribution.targets import Contrast, Function, Tokens, answer_tokens

__all__ = [
    "METHODS", "Attribution", "Contrast", "FeatureAttribution", "feature_attribution", "Function", "Tokens", "answer_tokens", "attribute", "concentration",
    "contrast", "deletion_insertion", "f3", "localisation", "obj_iou", "otsu_threshold", "pointing_game",
]
