"""Localisation metrics (Otsu, Obj-IoU, Contrast, Concentration, F3, pointing game) on maps with known
answers, and deletion/insertion curves on a model that sees the image through one patch."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from jaxinterp.attribution import Tokens, deletion_insertion, localisation, otsu_threshold
from jaxinterp.attribution.metrics import contrast, f3
from tests.attribution_tiny import GRID, image_batch, planted, vlm


def np_otsu(levels):
    """Brute force: the first t maximising the between-class variance of {<= t} and {> t}."""
    best, best_t = -1.0, 0
    for t in range(255):
        low, high = levels[levels <= t], levels[levels > t]
        if len(low) and len(high):
            between = len(low) * len(high) / levels.size ** 2 * (low.mean() - high.mean()) ** 2
            if between > best + 1e-12:
                best, best_t = between, t
    return best_t


def test_otsu_matches_a_brute_force_search():
    rng = np.random.default_rng(0)
    for _ in range(3):
        levels = np.concatenate([rng.normal(60, 15, 300), rng.normal(180, 25, 200)]).clip(0, 255).astype(np.int32)
        assert int(otsu_threshold(jnp.asarray(levels))) == np_otsu(levels)


def test_metrics_on_maps_with_known_answers():
    masks = np.zeros((2, 8, 8), bool)
    masks[0, 1:4, 1:4] = True  # 9 pixels
    masks[1, 5:7, 5:8] = True  # 6 pixels
    heat = np.full((8, 8), 0.1, np.float32)
    heat[1:4, 1:4] = 1.0
    out = localisation(jnp.asarray(heat), jnp.asarray(masks))
    h = (heat - 0.1) / 0.9  # the min-max normalised map: 1 on object 0, 0 elsewhere
    assert float(out["obj_iou"]) == pytest.approx(1.0)  # Otsu separates object 0 exactly
    fg = masks.any(0)
    assert float(out["contrast"]) == pytest.approx(h[fg].mean() / (h[~fg].mean() + 1e-8), rel=1e-5)
    assert float(out["concentration"]) == pytest.approx(1.0, abs=1e-6)
    assert float(out["pointing"]) == 1.0
    assert float(out["f3"]) == pytest.approx(1.0, rel=1e-6)  # contrast >= 20 caps at 1
    np.testing.assert_allclose(f3(jnp.float32(0.5), jnp.float32(10.0), jnp.float32(0.25)), 3 / (2 + 2 + 4))
    assert float(f3(jnp.float32(0.0), jnp.float32(10.0), jnp.float32(0.5))) == 0.0
    off = np.zeros((8, 8), np.float32)
    off[7, 0] = 1.0
    missed = localisation(jnp.asarray(off), jnp.asarray(masks))
    assert float(missed["pointing"]) == 0.0 and float(missed["obj_iou"]) < 0.1
    assert float(contrast(jnp.zeros((4, 4)) + 0.5, jnp.zeros((4, 4), bool))) == pytest.approx(1 / (0.5 + 1e-8))


def test_grid_maps_are_upsampled_onto_the_masks():
    masks = np.zeros((1, 32, 32), bool)
    masks[0, 8:12, 20:24] = True  # patch (2, 5) of an 8 x 8 grid of 4-pixel patches
    grid = np.zeros((8, 8), np.float32)
    grid[2, 5] = 1.0
    out = localisation(jnp.asarray(grid), jnp.asarray(masks))
    assert float(out["pointing"]) == 1.0 and float(out["obj_iou"]) > 0.3


def test_deletion_and_insertion_follow_the_ranking():
    model = vlm()
    batch, patch = image_batch(model), 6
    edits = planted(model, batch, patch, through_pixels=True)
    good = np.zeros((1, 1, GRID, GRID), np.float32)
    good[0, 0, patch // GRID, patch % GRID] = 1.0
    target = Tokens.at(batch.tokens.shape[1] - 1, score="prob")
    first = deletion_insertion(model, batch, good, target, steps=4, edits=edits)
    last = deletion_insertion(model, batch, 1.0 - good, target, steps=4, edits=edits)
    deletion, insertion = np.asarray(first["deletion"])[:, 0], np.asarray(first["insertion"])[:, 0]
    assert abs(deletion[0] - deletion[1]) > 1e-4  # removing the one patch that matters changes the score at once
    np.testing.assert_allclose(deletion[1:], deletion[-1], rtol=1e-5)
    np.testing.assert_allclose(insertion[1:], deletion[0], rtol=1e-5)  # showing it alone restores the full score
    late = np.asarray(last["deletion"])[:, 0]
    np.testing.assert_allclose(late[:-1], late[0], rtol=1e-5)  # ranked last, it goes at the last step
    assert first["deletion_auc"].shape == (1,) and np.asarray(first["fractions"]).tolist() == [0, 0.25, 0.5, 0.75, 1]
