"""Our resid_pre patching grid against TransformerLens `get_act_patch_resid_pre` on the same tiny GPT-2.

TransformerLens (4.x) wraps the Hugging Face model through `TransformerBridge`, so both sides
run the same weights; skipped where `transformer-lens` is not installed (`pip install
"jaxinterp[transformer-lens]"`). Slow: importing TransformerLens alone takes 4 s here.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest

import jaxinterp as ji
from jaxinterp import patching


@pytest.mark.slow
def test_resid_pre_grid_matches_transformer_lens(tiny_checkpoint):
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformer_lens", reason="the TransformerLens comparison needs `pip install transformer-lens`")
    from transformer_lens import patching as tl_patching
    from transformer_lens.model_bridge import TransformerBridge

    folder, torch_model = tiny_checkpoint("gpt2")
    bridge = TransformerBridge.boot_transformers(folder, hf_model=torch_model)
    clean = np.random.default_rng(0).integers(0, 96, size=(1, 8)).astype(np.int32)
    corrupted = clean.copy()
    corrupted[0, 3] = (clean[0, 3] + 1) % 96
    answer, wrong = 7, 9

    _, clean_cache = bridge.run_with_cache(torch.from_numpy(clean).long())
    expected = tl_patching.get_act_patch_resid_pre(
        bridge, torch.from_numpy(corrupted).long(), clean_cache,
        lambda logits: logits[0, -1, answer] - logits[0, -1, wrong]).detach().numpy()

    with jax.default_matmul_precision("highest"):
        ours = patching.activation_patching(ji.load(folder, progress=False), clean, corrupted,
                                            patching.logit_diff(answer, wrong))
    assert expected.shape == ours.values.shape == (2, 8)
    assert np.ptp(expected) > 0.1  # the corruption moves the metric, so the grid is not constant
    np.testing.assert_allclose(ours.values, expected, atol=1e-4, rtol=0)
