"""Diffusion-CAM for masked-diffusion multimodal LLMs (Zuo et al., ACL 2026; spec diffusion_cam.md):
structurally valid step selection, the contrastive objective, the Grad-CAM base map and the
four refinement modules AKD, DACG, CBA and SICD."""

from jaxinterp.attribution.diffusion_cam.akd import akd, kernel_size
from jaxinterp.attribution.diffusion_cam.cba import attenuation, background_threshold, cba
from jaxinterp.attribution.diffusion_cam.dacg import dacg, gate_percentile, threshold
from jaxinterp.attribution.diffusion_cam.method import DEFAULT_SITE, MODULES, diffusion_cam, refine
from jaxinterp.attribution.diffusion_cam.objective import contrast_target, default_target
from jaxinterp.attribution.diffusion_cam.sicd import interference, repeat_ratio, sicd
from jaxinterp.attribution.diffusion_cam.steps import step_batch

__all__ = [
    "DEFAULT_SITE", "MODULES", "akd", "attenuation", "background_threshold", "cba", "contrast_target", "dacg",
    "default_target", "diffusion_cam", "gate_percentile", "interference", "kernel_size", "refine", "repeat_ratio",
    "sicd", "step_batch", "threshold",
]
