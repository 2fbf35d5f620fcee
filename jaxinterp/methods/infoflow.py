"""Information flow across layers: attention mass from each segment to the output, and the cliff layer.

Zhang et al., "From Redundancy to Relevance: Information Flow in LVLMs Across Reasoning Tasks"
(NAACL 2025), Algorithm B (spec llava_cam_infoflow.md): for each layer, the head-averaged
attention mass lambda_seg that the output tokens draw from the system, image and question
tokens (`jaxinterp.attention.flow.segment_mass`), averaged over the output tokens and the batch.
The paper reads the "information-flow cliff" off two curves, lambda_img and the LLaVA-CAM
intensity of the image, by inspection; `cliff_layer` makes that a rule: the first layer, after
both peaks, from which both curves stay below `fraction` of their peak. The CAM curve comes in
through the `intensity` hook (any function of (model, batch) returning one number per layer).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from jaxinterp.attention.flow import segment_mass
from jaxinterp.attention.spans import require_tokens
from jaxinterp.attention.streaming import layer_patterns
from jaxinterp.edits import Edit
from jaxinterp.errors import ArgumentError

IntensityProfile = Callable[[Any, Any], np.ndarray]  # (model, batch) -> [L] per-layer intensity


@dataclasses.dataclass(frozen=True)
class Flow:
    """Per-layer information flow into the output tokens.

    Attributes:
      sources: the source segments, in column order.
      mass: [L, len(sources)] mean attention mass from each source to the output tokens
        (NaN where no row of the batch has tokens of that source).
      intensity: [L] the intensity profile (e.g. LLaVA-CAM's), when one was given.
      cliff: the suggested cliff layer (`cliff_layer` of the image flow and the intensity).
    """

    sources: tuple[str, ...]
    mass: np.ndarray
    intensity: np.ndarray | None
    cliff: int | None

    def to_dict(self) -> dict[str, Any]:
        return {"sources": list(self.sources), "mass": self.mass.tolist(), "cliff": self.cliff,
                "intensity": None if self.intensity is None else self.intensity.tolist()}


def cliff_layer(*profiles: np.ndarray, fraction: float = 0.5) -> int | None:
    """The first layer after every profile's peak from which every profile stays below
    `fraction` x its peak (None if there is none)."""
    if not 0 < fraction < 1:
        raise ArgumentError(f"fraction: expected a number in (0, 1), found {fraction!r}")
    profiles = [np.asarray(p, np.float64) for p in profiles]
    if not profiles or len({p.shape for p in profiles}) != 1 or profiles[0].ndim != 1:
        raise ArgumentError("profiles: expected one or more [layers] arrays of equal length")
    low = np.all([p < fraction * np.nanmax(p) for p in profiles], axis=0)
    after = max(int(np.nanargmax(p)) for p in profiles)
    stays = np.flip(np.cumprod(np.flip(low))).astype(bool)  # low here and at every later layer
    found = [layer for layer in range(after + 1, len(low)) if stays[layer]]
    return found[0] if found else None


def llava_cam_intensity(model: Any, inputs: Any, *, site: str = "blocks.*.mlp.in") -> np.ndarray:
    """[L] LLaVA-CAM intensity per layer, the `intensity` hook of `information_flow`: the mean over
    the image patches (and rows) of each layer's unnormalised LLaVA-CAM of the teacher-forced
    answer (spec B.3: the CAM and the image flow drop together after the cliff layer). The map is
    taken before the max-normalisation and the 0.5 threshold, which would hide its size."""
    from jaxinterp.attribution import attribute

    maps = attribute(model, inputs, method="llava_cam_intensity", site=site, region="image").image
    return np.asarray(maps, np.float64).reshape(maps.shape[0], -1).mean(axis=1)


def information_flow(model: Any, inputs: Any, *, sources: Sequence[str] = ("system", "image", "question"),
                     target: str = "answer", image: str = "image", intensity: IntensityProfile | None = None,
                     fraction: float = 0.5, edits: Edit | tuple | None = ()) -> Flow:
    """Per-layer mass from each source segment to the `target` tokens, streamed layer by layer.

    Args:
      model, inputs: the model and prompts with their output tokens (segment `target`:
        teacher-forced answers, or `generated` tokens of a finished generation).
      sources: the source segments (system / image / question by default).
      target: the output segment.
      image: the source whose flow, with the intensity profile, defines the cliff layer.
      intensity: optional hook returning the [L] intensity profile (LLaVA-CAM's in the paper).
      fraction: cliff threshold, as a fraction of each curve's peak.
      edits: edits of the forward.
    """
    batch = model.batch(inputs)
    require_tokens(target, batch.segments)
    masses = []
    for pattern in layer_patterns(model, batch, edits=edits):
        mass = segment_mass(pattern.probs, batch.segments, batch.segments, queries=[target], keys=list(sources))
        masses.append(np.nanmean(np.asarray(mass)[:, 0], axis=0))
    mass = np.stack(masses)
    profile = None if intensity is None else np.asarray(intensity(model, batch), np.float64)
    if profile is not None and profile.shape != (model.config.num_layers,):
        raise ArgumentError(f"intensity: expected one value per layer ({model.config.num_layers}), "
                            f"found shape {profile.shape}")
    cliff = None
    if image in sources:
        curves = [mass[:, list(sources).index(image)]] + ([] if profile is None else [profile])
        cliff = cliff_layer(*curves, fraction=fraction)
    return Flow(sources=tuple(sources), mass=mass, intensity=profile, cliff=cliff)
