"""Positional schemes: ids and masks on a 4 x 4 grid by hand, identity = plain model, cached = uncached."""

from __future__ import annotations

import numpy as np
import pytest

import jaxinterp as ji
from jaxinterp.methods import positions as ps
from jaxinterp.methods.recompute import greedy
from jaxinterp.models.masks import MASKED
from tests.attention_fixtures import spanned_batch, tiny_decoder, tiny_vlm, vlm_batch

CCA_4 = np.array([[0, 0, 0, 0], [0, 1, 1, 0], [0, 1, 1, 0], [0, 0, 0, 0]])
MCA_4 = np.array([[0, 1, 1, 0], [1, 2, 2, 1], [1, 2, 2, 1], [0, 1, 1, 0]])


def test_ids_and_spans_on_a_4_by_4_grid():
    for scheme, ranks in ((ps.cca(4, 4), CCA_4), (ps.mca(4, 4), MCA_4)):
        np.testing.assert_array_equal(scheme.offsets, ranks)
        np.testing.assert_array_equal(scheme.ranks, ranks)
        assert scheme.span == ranks.max() + 1
    raster = ps.raster(4, 4)
    np.testing.assert_array_equal(raster.offsets.ravel(), np.arange(16))
    assert raster.span == 16
    # DAPE-BR, fused distance from the centre: 0.71 inside, 1.71 on edges, 2.12 at corners -> 1, 0, 0
    np.testing.assert_array_equal(ps.dape_br(4, 4).offsets, CCA_4)
    fine = ps.dape_br(4, 4, step=0.5)  # (2.12 - d) / 0.5 = 2.83, 0.83, 0 -> 3, 1, 0
    np.testing.assert_array_equal(fine.offsets, [[0, 1, 1, 0], [1, 3, 3, 1], [1, 3, 3, 1], [0, 1, 1, 0]])
    assert fine.span == 4
    for size in (4, 6):
        np.testing.assert_array_equal(ps.dape_br(size, size, metric="linf").offsets, ps.cca(size, size).offsets)
        np.testing.assert_array_equal(ps.dape_br(size, size, metric="l1").offsets, ps.mca(size, size).offsets)
    parts = ps.dape_br(4, 4, raster_ids=True, band=False, patch_mask=False)
    np.testing.assert_array_equal(parts.offsets.ravel(), np.arange(16))
    assert parts.span == 16 and parts.ranks is None
    assert ps.cca(24, 24).span == 12 and ps.mca(24, 24).span == 23  # the released LLaVA-1.5 settings


def test_position_ids_of_a_batch_by_hand():
    batch = spanned_batch(before=3, span=16, after=4, pad_first=2)
    ids = np.asarray(ps.scheme_positions(batch, ps.cca(4, 4)).positions)
    image = 3 + CCA_4.ravel()
    np.testing.assert_array_equal(ids[0], [0, 0, 0, 1, 2, *image, 5, 6, 7, 8])  # pads keep position 0
    np.testing.assert_array_equal(ids[1], [0, 1, 2, 3, 4, *(5 + CCA_4.ravel()), 7, 8, 9, 10])
    two = ps.scheme_positions(spanned_batch(before=1, span=32, after=2), ps.mca(4, 4), offset=0)
    np.testing.assert_array_equal(np.asarray(two.positions)[0], [0, *(1 + MCA_4.ravel()), *(4 + MCA_4.ravel()), 7, 8])
    np.testing.assert_array_equal(ps.scheme_positions(batch, ps.raster(4, 4)).positions, batch.positions)


def _allowed_by_hand(length: int, start: int, ranks: np.ndarray) -> np.ndarray:
    allowed = np.tril(np.ones((length, length), bool))
    flat = ranks.ravel()
    for q in range(16):
        for k in range(16):
            allowed[start + q, start + k] = flat[k] <= flat[q]
    return allowed


@pytest.mark.parametrize("name, ranks", [("cca", CCA_4), ("mca", MCA_4), ("dape_br", CCA_4)])
def test_masks_by_hand(name, ranks):
    model = ps.with_scheme(tiny_decoder(layers=1), ps.SCHEMES[name](4, 4))
    batch = spanned_batch(before=3, span=16, after=4)
    scores = np.asarray(model.run(batch, capture=["blocks.0.attn.scores"])["blocks.0.attn.scores"])
    allowed = _allowed_by_hand(23, 3, ranks)
    for row in range(2):
        np.testing.assert_array_equal(scores[row, 0] > MASKED / 2, allowed)


def test_identity_scheme_equals_the_plain_model_and_cached_equals_uncached():
    vlm = tiny_vlm()
    batch = vlm_batch(vlm, answers=True)
    identity = ps.with_scheme(vlm, "raster")
    np.testing.assert_allclose(identity(batch), vlm(batch), atol=1e-5)
    cca = ps.with_scheme(vlm, "cca")
    assert not np.allclose(cca(batch), vlm(batch))
    prompt = vlm_batch(vlm, padding="left")
    cached = cca.generate(prompt, max_new_tokens=3, capture=["logits"])
    tokens, logits = greedy(cca, prompt, 3)
    np.testing.assert_array_equal(np.asarray(cached.tokens), tokens)
    np.testing.assert_allclose(cached.captured_steps["logits"][:2, :, 0].transpose(1, 0, 2), logits[:, 1:], atol=1e-5)
    assert int(cached.prompt.positions[0, -1]) == int(cca.batch(prompt).positions[0, -1])


def test_grid_errors_are_clear():
    with pytest.raises(ji.ArgumentError, match=r"image grid: 4 x 4 patches \(\+0\) = 16 tokens per image do not fit"):
        ps.scheme_positions(spanned_batch(span=12), ps.cca(4, 4))
    with pytest.raises(ji.ArgumentError, match="image grid: the model's images are 4 x 4 patches, the mca scheme was "
                                               "built for 3 x 3"):
        ps.with_scheme(tiny_vlm(), ps.mca(3, 3))
    with pytest.raises(ji.ArgumentError, match="has no image grid"):
        ps.with_scheme(tiny_decoder(), "cca")
    with pytest.raises(ji.ArgumentError, match="metric"):
        ps.dape_br(4, 4, metric="cosine")
