"""Every family exposes the same site vocabulary, so one capture pattern works on all of them."""

from __future__ import annotations

import re

import jax
import numpy as np
import pytest

import jaxinterp as ji
from jaxinterp.models import init_params
from jaxinterp.models.gpt2 import GPT2Config
from jaxinterp.models.llama import LlamaConfig
from jaxinterp.models.llava import LlavaConfig
from jaxinterp.models.moa import MoAConfig
from jaxinterp.models.siglip_vision import SiglipVisionConfig

BLOCK_SITES = {"resid_pre", "attn.in", "attn.q", "attn.k", "attn.v", "attn.scores", "attn.probs", "attn.head_out", "attn.out",
               "resid_mid", "mlp.in", "mlp.act", "mlp.out", "resid_post"}
VISION = SiglipVisionConfig(image_size=8, patch_size=4, num_channels=3, hidden_size=16, intermediate_size=32,
                            num_layers=2, num_heads=2, head_dim=8, layer_norm_eps=1e-6, activation="gelu_pytorch_tanh")
LLAMA = LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_layers=2, num_heads=2, num_kv_heads=1,
                    head_dim=8)
FAMILIES = {
    "llama": LLAMA,
    "gpt2": GPT2Config(vocab_size=32, hidden_size=16, intermediate_size=32, num_layers=2, num_heads=2,
                       max_position_embeddings=16),
    "moa": MoAConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_layers=2, num_experts=4, top_k=2,
                     head_dim=8),
    "llava": LlavaConfig(vision=VISION, text=LLAMA, image_token_id=31, select_strategy="full", feature_layer=-1),
    "siglip_vision": VISION,
}


def _blocks(sites, prefix):
    found = {}
    for site in sites:
        match = re.fullmatch(rf"{re.escape(prefix)}blocks\.(\d+)\.(.+)", site)
        if match:
            found.setdefault(int(match.group(1)), set()).add(match.group(2))
    return found


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_same_sites_in_every_family(family):
    config = FAMILIES[family]
    model = ji.Model(config, init_params(config, jax.random.key(0)))
    prefixes = {"siglip_vision": ["vision."], "llava": ["", "vision."]}.get(family, [""])
    for prefix in prefixes:
        blocks = _blocks(model.sites, prefix)
        assert sorted(blocks) == [0, 1]
        assert all(BLOCK_SITES <= sites for sites in blocks.values()), blocks  # families may add their own
    if family != "siglip_vision":
        assert {"embed", "final_norm", "logits"} <= set(model.sites)
        run = model.run(ji.models.example_batch(config), capture="blocks.*.attn.probs")
        assert len(run.captured) == 2


def test_sites_are_listed_in_forward_order():
    model = ji.Model(LLAMA, init_params(LLAMA, jax.random.key(0)))
    sites = list(model.sites)
    assert sites[0] == "embed" and sites[-1] == "logits"
    assert sites.index("blocks.0.resid_post") < sites.index("blocks.1.resid_pre") < sites.index("final_norm")
    assert sites.index("blocks.0.attn.q") < sites.index("blocks.0.attn.scores") < sites.index("blocks.0.attn.probs")


def test_check_finite_names_the_first_bad_site():
    model = ji.Model(LLAMA, init_params(LLAMA, jax.random.key(0)))
    poison = ji.FunctionEdit(patterns=("blocks.1.mlp.act",), fn=lambda x, ctx, _: x.at[0, 0, 0].set(jax.numpy.nan))
    tokens = np.arange(6, dtype=np.int32)[None]
    assert model.run(tokens, check_finite=True).logits.shape == (1, 6, 32)
    with pytest.raises(ji.NonFiniteError, match="'blocks.1.mlp.act'"):
        model.run(tokens, edits=poison, check_finite=True)
    with pytest.raises(ji.NonFiniteError, match="'blocks.1.mlp.act'"):
        model.grad(lambda r: r.logits.sum(), tokens, wrt="blocks.0.resid_post", edits=poison, check_finite=True)
