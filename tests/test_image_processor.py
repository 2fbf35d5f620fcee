"""The image processor gives transformers' pixel values (PIL backends) for CLIP and SigLIP settings."""

from __future__ import annotations

import json

import numpy as np
import PIL.Image
import pytest

from jaxinterp.errors import ArgumentError, ConfigError
from jaxinterp.images import ImageProcessor, load_image_processor

transformers = pytest.importorskip("transformers")

# transformers' processor, and the settings a checkpoint would ship in preprocessor_config.json
SETTINGS = {
    "clip": lambda: transformers.CLIPImageProcessorPil(),
    "clip_336": lambda: transformers.CLIPImageProcessorPil(size={"shortest_edge": 336},
                                                           crop_size={"height": 336, "width": 336}),
    "siglip": lambda: transformers.SiglipImageProcessorPil(),
    "siglip_384": lambda: transformers.SiglipImageProcessorPil(size={"height": 384, "width": 384}),
    # no resize: the crop is larger than the small image, which is zero-padded
    "clip_crop_only": lambda: transformers.CLIPImageProcessorPil(do_resize=False,
                                                                 crop_size={"height": 150, "width": 250}),
}
DEFAULTS = {"clip": ("clip", 224), "clip_336": ("clip", 336), "siglip": ("siglip", 224), "siglip_384": ("siglip", 384)}


def _images():
    """Portrait, landscape, and smaller than the crop: smooth gradients with noise, uint8 RGB."""
    rng = np.random.default_rng(0)
    images = []
    for height, width in ((300, 200), (180, 320), (100, 90)):
        ys, xs = np.mgrid[0:height, 0:width]
        smooth = np.stack([255 * ys / height, 255 * xs / width, 127 + 100 * np.sin(xs / 7 + ys / 11)], axis=-1)
        images.append(np.clip(smooth + rng.normal(0, 20, smooth.shape), 0, 255).astype(np.uint8))
    return images


def _processor(hf, tmp_path) -> ImageProcessor:
    """Ours, read from the processor's saved preprocessor_config.json."""
    hf.save_pretrained(tmp_path)
    return load_image_processor(tmp_path)


@pytest.mark.parametrize("setting", sorted(SETTINGS))
def test_pixel_values_match_transformers(setting, tmp_path):
    hf = SETTINGS[setting]()
    ours = _processor(hf, tmp_path)
    if setting in DEFAULTS:
        assert ours == ImageProcessor.defaults(*DEFAULTS[setting])
    arrays = _images()
    rgba = np.concatenate([arrays[2], np.linspace(0, 255, 90, dtype=np.uint8)[None, :, None].repeat(100, 0)], -1)
    inputs = {
        "pil": [PIL.Image.fromarray(a) for a in arrays],
        "uint8": arrays,
        "float": [a.astype(np.float32) for a in arrays],  # whole numbers in 0..255
        "gray_and_alpha": [PIL.Image.fromarray(arrays[0][..., 0]), PIL.Image.fromarray(rgba), rgba],
    }
    for name, images in inputs.items():
        theirs = hf(images, return_tensors="np")["pixel_values"]
        mine = ours(images)
        assert mine.dtype == np.float32 and mine.shape == theirs.shape, name
        np.testing.assert_allclose(mine, theirs, atol=1e-5, rtol=0, err_msg=f"{setting}: {name}")


def test_unit_range_floats_follow_transformers(tmp_path):
    """Floats in [0, 1] take transformers' PIL round trip; without rescaling they equal the uint8 path."""
    hf = SETTINGS["clip"]()
    ours = _processor(hf, tmp_path)
    unit = [a.astype(np.float32) / 255 for a in _images()]
    np.testing.assert_allclose(ours(unit), hf(unit, return_tensors="np")["pixel_values"], atol=1e-5, rtol=0)
    import dataclasses

    unscaled = dataclasses.replace(ours, rescale_factor=None)
    np.testing.assert_allclose(unscaled(unit), ours(_images()), atol=1e-5, rtol=0)


def test_wrong_channel_count_is_a_clear_error():
    ours = ImageProcessor.defaults("clip")
    image = np.zeros((40, 30, 2), np.uint8)
    with pytest.raises(ArgumentError, match=r"images\[1\]: expected .*C in \(1, 3, 4\).*found shape \(40, 30, 2\)"):
        ours([np.zeros((40, 30, 3), np.uint8), image])
    with pytest.raises(ArgumentError, match=r"images\[0\]: expected uint8 values.*found \[-0.5, -0.5\]"):
        ours(np.full((8, 8, 3), -0.5, np.float32))


def test_configs_are_checked(tmp_path):
    with pytest.raises(ConfigError, match="image_processor_type: expected a CLIP or SigLIP .* found .ViTImage"):
        ImageProcessor.from_hf({"image_processor_type": "ViTImageProcessor"})
    with pytest.raises(ConfigError, match="size: expected an int, .* found {'longest_edge': 10}"):
        ImageProcessor.from_hf({"image_processor_type": "CLIPImageProcessor", "size": {"longest_edge": 10}})
    # old feature-extractor configs: int sizes are the shortest edge and a square crop
    old = ImageProcessor.from_hf({"feature_extractor_type": "CLIPFeatureExtractor", "size": 224, "crop_size": 224})
    assert old == ImageProcessor.defaults("clip")
    assert load_image_processor(tmp_path) is None
    (tmp_path / "preprocessor_config.json").write_text(json.dumps({"image_processor_type": "SiglipImageProcessor"}))
    assert load_image_processor(tmp_path) == ImageProcessor.defaults("siglip")
