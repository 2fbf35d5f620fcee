"""Images -> pixel values, exactly as transformers' CLIP and SigLIP image processors compute them.

Reproduces the PIL backends (`CLIPImageProcessorPil`, `SiglipImageProcessorPil`; the
torchvision backends resample differently) without torch. Each image is

1. converted to RGB (transparency composited onto white),
2. resized with PIL (`size`: the shortest edge, the long edge truncated to an integer, or an
   exact (height, width); bicubic by default),
3. center-cropped to `crop_size` (zero-padded first where it is smaller than the crop),
4. rescaled (x * 1/255 in float64, stored as float32),
5. normalised ((x - mean) / std in float32),

and returned channels first. Arrays take the same PIL round trip as in transformers: uint8
values and whole numbers in 0..255 as they are, other floats in [0, 1] scaled to 0..255 for
resampling and back, after which `rescale_factor` still applies. So, as with transformers,
pass [0, 1] floats to a processor with `rescale_factor=None`.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import PIL.Image

from jaxinterp.converters.files import read_json
from jaxinterp.errors import ArgumentError, ConfigError

Image = PIL.Image.Image | np.ndarray

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_STANDARD_MEAN = (0.5, 0.5, 0.5)
IMAGENET_STANDARD_STD = (0.5, 0.5, 0.5)
BICUBIC = int(PIL.Image.Resampling.BICUBIC)


@dataclasses.dataclass(frozen=True, kw_only=True)
class ImageProcessor:
    """How images become pixel values (see the module docstring); None switches a step off.

    Attributes:
      size: resize target: an int is the shortest edge (aspect ratio kept), a pair is
        (height, width).
      crop_size: (height, width) of the center crop.
      resample: PIL resampling filter (`PIL.Image.Resampling`, 3 = bicubic).
      rescale_factor: multiplier of the pixel values (1/255 maps uint8 to [0, 1]).
      image_mean, image_std: per-channel normalisation (RGB).
    """

    size: int | tuple[int, int] | None
    crop_size: tuple[int, int] | None
    resample: int = BICUBIC
    rescale_factor: float | None = 1 / 255
    image_mean: tuple[float, float, float] | None
    image_std: tuple[float, float, float] | None

    @classmethod
    def defaults(cls, kind: str, image_size: int = 224) -> ImageProcessor:
        """transformers' defaults for `kind` (`clip` or `siglip`) at a tower's image size: CLIP
        resizes the shortest edge and center-crops a square; SigLIP resizes to the square."""
        if kind == "clip":
            return cls(size=image_size, crop_size=(image_size, image_size),
                       image_mean=OPENAI_CLIP_MEAN, image_std=OPENAI_CLIP_STD)
        if kind == "siglip":
            return cls(size=(image_size, image_size), crop_size=None,
                       image_mean=IMAGENET_STANDARD_MEAN, image_std=IMAGENET_STANDARD_STD)
        raise ArgumentError(f"kind: expected 'clip' or 'siglip', found {kind!r}")

    @classmethod
    def from_hf(cls, config: Mapping[str, Any], *, source: str = "preprocessor_config.json") -> ImageProcessor:
        """The processor a Hugging Face `preprocessor_config.json` describes (a CLIP or SigLIP one;
        keys it leaves out take that processor class's defaults)."""
        kind_name = config.get("image_processor_type") or config.get("feature_extractor_type")
        kinds = {"CLIP": "clip", "Siglip": "siglip"}
        kind = next((k for prefix, k in kinds.items() if str(kind_name).startswith(prefix)), None)
        if kind is None:
            raise ConfigError(
                f"{source}: image_processor_type: expected a CLIP or SigLIP image processor, found {kind_name!r}"
            )
        base = cls.defaults(kind)
        square = bool(config.get("default_to_square", False))

        def step(flag: str, key: str, default: Any, parse: Callable[[Any], Any]) -> Any:
            """None where `flag` switches the step off, else the config's `key`, else the default."""
            if not config.get(flag, default is not None):
                return None
            return default if config.get(key) is None else parse(config[key])

        return cls(
            size=step("do_resize", "size", base.size, lambda v: _size(v, "size", square=square, source=source)),
            crop_size=step("do_center_crop", "crop_size", base.crop_size,
                           lambda v: _size(v, "crop_size", square=True, source=source)),
            resample=int(config.get("resample", BICUBIC)),
            rescale_factor=step("do_rescale", "rescale_factor", base.rescale_factor, float),
            image_mean=step("do_normalize", "image_mean", base.image_mean,
                            lambda v: _per_channel(v, "image_mean", source)),
            image_std=step("do_normalize", "image_std", base.image_std, lambda v: _per_channel(v, "image_std", source)),
        )

    def __call__(self, images: Image | Sequence[Image]) -> np.ndarray:
        """Pixel values [N, 3, H, W] float32 of a PIL image, an [H, W] / [H, W, C] array (C in 1, 3
        or 4, channels last; uint8 or float), an [N, H, W, C] array, or a list of them."""
        if isinstance(images, PIL.Image.Image) or (isinstance(images, np.ndarray) and images.ndim < 4):
            images = [images]
        pixels = [self._one(image, f"images[{i}]") for i, image in enumerate(images)]
        if not pixels:
            raise ArgumentError("images: expected at least one image, found none")
        shapes = {p.shape for p in pixels}
        if len(shapes) > 1:
            raise ArgumentError(
                f"images: processed images must share one shape to form a batch (set crop_size or an exact size), "
                f"found {sorted(shapes)}"
            )
        return np.stack(pixels).astype(np.float32)

    def _one(self, image: Image, where: str) -> np.ndarray:
        x = _rgb(image, where)
        if self.size is not None:
            x = _resize(x, self._target(x.shape[:2]), self.resample, where)
        if self.crop_size is not None:
            x = _center_crop(x, self.crop_size)
        if self.rescale_factor is not None:
            x = (x.astype(np.float64) * self.rescale_factor).astype(np.float32)
        if self.image_mean is not None:
            x = x if np.issubdtype(x.dtype, np.floating) else x.astype(np.float32)
            x = (x - np.array(self.image_mean, x.dtype)) / np.array(self.image_std, x.dtype)
        return x.transpose(2, 0, 1)

    def _target(self, shape: tuple[int, int]) -> tuple[int, int]:
        """(height, width) after resizing: transformers' `get_resize_output_image_size`."""
        if not isinstance(self.size, int):
            return tuple(self.size)
        height, width = shape
        short, long = (width, height) if width <= height else (height, width)
        new_long = int(self.size * long / short)
        return (new_long, self.size) if width <= height else (self.size, new_long)


def _size(value: Any, key: str, *, square: bool, source: str) -> int | tuple[int, int]:
    """A transformers size (int, [h, w], {"shortest_edge"} or {"height", "width"}) in our form:
    an int is a shortest edge unless `square`."""
    if isinstance(value, int):
        return (value, value) if square else value
    if isinstance(value, (list, tuple)) and len(value) == 2:
        return int(value[0]), int(value[1])
    if isinstance(value, Mapping) and set(value) == {"shortest_edge"} and not square:
        return int(value["shortest_edge"])
    if isinstance(value, Mapping) and set(value) == {"height", "width"}:
        return int(value["height"]), int(value["width"])
    expected = "{'height', 'width'}" if square else "{'shortest_edge'} or {'height', 'width'}"
    raise ConfigError(
        f"{source}: {key}: expected an int, [height, width] or a dict with keys {expected}, found {value!r}"
    )


def _per_channel(value: Any, key: str, source: str) -> tuple[float, float, float]:
    values = [value] * 3 if isinstance(value, (int, float)) else list(value)
    if len(values) != 3:
        raise ConfigError(f"{source}: {key}: expected one value or 3 (RGB), found {value!r}")
    return tuple(float(v) for v in values)


def _rgb(image: Image, where: str) -> np.ndarray:
    """[H, W, 3] RGB array of the image (transformers' `convert_to_rgb`)."""
    if isinstance(image, PIL.Image.Image):
        if "A" in image.getbands() or image.info.get("transparency") is not None:
            rgba = image.convert("RGBA")
            white = PIL.Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            return np.array(PIL.Image.alpha_composite(white, rgba).convert("RGB"))
        return np.array(image.convert("RGB"))
    if not isinstance(image, np.ndarray):
        raise ArgumentError(f"{where}: expected a PIL image or a numpy array, found {type(image).__name__}")
    x = image[..., None] if image.ndim == 2 else image
    if x.ndim != 3 or x.shape[-1] not in (1, 3, 4):
        raise ArgumentError(
            f"{where}: expected an image of shape [H, W] or [H, W, C] with C in (1, 3, 4) channels "
            f"(channels last), found shape {image.shape}"
        )
    if x.shape[-1] == 1:
        return np.repeat(x, 3, axis=-1)
    if x.shape[-1] == 3:
        return x
    whole = np.issubdtype(x.dtype, np.integer)
    if not whole and (x.min() < 0.0 or x.max() > 1.0):
        raise ArgumentError(f"{where}: expected float RGBA values in [0, 1], found [{x.min()}, {x.max()}]")
    white = 255 if whole else 1.0
    alpha = x[..., 3:4] / white
    composite = alpha * x[..., :3] + (1 - alpha) * white
    return np.round(composite).astype(x.dtype) if whole else composite.astype(x.dtype)


def _resize(x: np.ndarray, size: tuple[int, int], resample: int, where: str) -> np.ndarray:
    """PIL resize to (height, width) through uint8, as transformers' `resize` does."""
    scaled = _needs_scaling(x, where)
    if scaled:
        x = (x.astype(np.float64) * 255).astype(np.float32)
    height, width = size
    resized = np.array(PIL.Image.fromarray(x.astype(np.uint8)).resize((width, height), resample=resample))
    return (resized.astype(np.float64) * (1 / 255)).astype(np.float32) if scaled else resized


def _needs_scaling(x: np.ndarray, where: str) -> bool:
    """Whether values must be scaled from [0, 1] to 0..255 before PIL (`_rescale_for_pil_conversion`)."""
    if x.dtype == np.uint8:
        return False
    if np.allclose(x, x.astype(int)) and x.min() >= 0 and x.max() <= 255:
        return False
    if x.min() >= 0 and x.max() <= 1:
        return True
    raise ArgumentError(
        f"{where}: expected uint8 values, whole numbers in 0..255 or floats in [0, 1], found [{x.min()}, {x.max()}]"
    )


def _center_crop(x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The centered (height, width) window, zero-padding (centered) where the image is smaller."""
    (height, width), (crop_h, crop_w) = x.shape[:2], size
    new_h, new_w = max(crop_h, height), max(crop_w, width)
    pad_top, pad_left = math.ceil((new_h - height) / 2), math.ceil((new_w - width) / 2)
    padded = np.zeros((new_h, new_w, x.shape[2]), x.dtype)
    padded[pad_top:pad_top + height, pad_left:pad_left + width] = x
    top, left = (height - crop_h) // 2 + pad_top, (width - crop_w) // 2 + pad_left
    return padded[max(0, top):min(new_h, top + crop_h), max(0, left):min(new_w, left + crop_w)]


def load_image_processor(folder: str | os.PathLike) -> ImageProcessor | None:
    """The processor of a checkpoint directory's `preprocessor_config.json` (None without one)."""
    path = os.path.join(folder, "preprocessor_config.json")
    return ImageProcessor.from_hf(read_json(path, folder=folder), source=path) if os.path.lexists(path) else None
