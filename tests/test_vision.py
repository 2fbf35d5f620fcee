"""CLIP and SigLIP vision towers: parity with transformers through the user's loading path, sites, errors."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxinterp
from jaxinterp.edits import FunctionEdit
from jaxinterp.errors import ArgumentError, ConfigError
from jaxinterp.models import init_params, llama, make_batch, siglip_vision
from jaxinterp.models.sites import Tap
from jaxinterp.models.vit import VisionTower, pixel_batch

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
from tests import hf_tiny  # noqa: E402  (imports torch)

TINY = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4)
# CLIP: 4 x 4 patches + class token, quick-GELU; SigLIP: 30 px at patch 8 leaves 6 px outside
# the 3 x 3 grid (as so400m's 384 px at patch 14), GELU-tanh.
TOWERS = {
    "clip": (transformers.CLIPVisionModel, transformers.CLIPVisionConfig(**TINY, image_size=32, patch_size=8)),
    "siglip": (transformers.SiglipVisionModel, transformers.SiglipVisionConfig(**TINY, image_size=30, patch_size=8)),
}
SIDE = {"clip": 32, "siglip": 30}


def _tower(kind):
    torch.manual_seed(0)
    cls, config = TOWERS[kind]
    return hf_tiny.redraw(cls(config).eval())


@pytest.fixture(scope="module")
def towers(tmp_path_factory):
    """kind -> (the PyTorch tower, our model loaded from its saved directory)."""
    made = {}
    for kind in TOWERS:
        reference = _tower(kind)
        folder = tmp_path_factory.mktemp(kind)
        reference.save_pretrained(folder)
        made[kind] = reference, jaxinterp.load(str(folder), progress=False)
    return made


def _pixels(kind, batch=2):
    return np.random.default_rng(1).normal(size=(batch, 3, SIDE[kind], SIDE[kind])).astype(np.float32)


def _reference(model, pixels):
    with torch.no_grad():
        out = model(torch.as_tensor(pixels), output_hidden_states=True)
    return [h.numpy() for h in out.hidden_states], out.last_hidden_state.numpy()


@pytest.mark.parametrize("kind", sorted(TOWERS))
def test_every_hidden_state_matches_transformers(kind, towers):
    reference, model = towers[kind]
    pixels = _pixels(kind)
    run = model.run(pixel_batch(model.config, pixels), capture=["vision.embed", "vision.blocks.*.resid_post"])
    theirs, last = _reference(reference, pixels)
    names = ["vision.embed"] + [f"vision.blocks.{i}.resid_post" for i in range(model.config.num_layers)]
    assert len(theirs) == len(names)
    for name, expected in zip(names, theirs):
        assert np.abs(expected).max() > 1.0  # not near-degenerate
        np.testing.assert_allclose(np.asarray(run[name]), expected, atol=1e-4, rtol=0, err_msg=name)
    np.testing.assert_allclose(np.asarray(run.hidden), last, atol=1e-4, rtol=0)
    if kind == "siglip":  # the post-LayerNorm really applies, through its site
        assert np.abs(last - theirs[-1]).max() > 0.1
        post = model.run(pixel_batch(model.config, pixels), capture=["vision.post_norm"])["vision.post_norm"]
        np.testing.assert_allclose(np.asarray(post), last, atol=1e-4, rtol=0)


def test_truncated_tower_skips_the_last_layers(towers):
    """`layers=k` gives the first k + 1 hidden states and never touches later layers' parameters."""
    reference, model = towers["clip"]
    pixels = _pixels("clip")
    params = {k: v for k, v in model.params["vision"].items() if k != "blocks_2"}
    hidden = VisionTower(model.config).apply({"params": params}, pixels, Tap(), layers=2)
    theirs, _ = _reference(reference, pixels)
    assert len(hidden) == 3
    for ours, expected in zip(hidden, theirs[:3]):
        np.testing.assert_allclose(np.asarray(ours), expected, atol=1e-4, rtol=0)
    with pytest.raises(ArgumentError, match="layers: expected 0..3, found 4"):
        VisionTower(model.config).apply({"params": model.params["vision"]}, pixels, Tap(), layers=4)


def test_transformers_4_and_full_model_checkpoints(towers, tmp_path):
    """A tower saved under `vision_model.` (transformers 4) and a full CLIP model load the same tower."""
    import safetensors.numpy

    reference, model = towers["clip"]
    reference.save_pretrained(tmp_path / "v5")
    tensors = safetensors.numpy.load_file(str(tmp_path / "v5" / "model.safetensors"))
    tensors = {f"vision_model.{name}": value for name, value in tensors.items()}
    safetensors.numpy.save_file(tensors, str(tmp_path / "v5" / "model.safetensors"), metadata={"format": "pt"})
    old = jaxinterp.load(str(tmp_path / "v5"), progress=False)

    torch.manual_seed(0)
    full = transformers.CLIPModel(transformers.CLIPConfig(
        vision_config=TOWERS["clip"][1].to_dict(),
        text_config=dict(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=8),
    )).eval()
    full.vision_model.load_state_dict(reference.state_dict())
    full.save_pretrained(tmp_path / "full")
    whole = jaxinterp.load(str(tmp_path / "full"), progress=False)
    for loaded in (old, whole):
        assert loaded.config == model.config
        for ours, theirs in zip(jax.tree.leaves(loaded.params), jax.tree.leaves(model.params)):
            np.testing.assert_array_equal(np.asarray(ours), np.asarray(theirs))


@pytest.mark.parametrize("kind", sorted(TOWERS))
def test_sites_have_the_text_families_names_and_shapes(kind, towers):
    _, model = towers[kind]
    cfg = model.config
    text = jaxinterp.Model(
        text_config := llama.LlamaConfig(vocab_size=8, hidden_size=8, intermediate_size=8, num_layers=1, num_heads=2,
                                         num_kv_heads=2, head_dim=4),
        init_params(text_config, jax.random.key(0)),
    )
    block_sites = lambda names, prefix: {n[len(prefix):] for n in names if n.startswith(prefix)}  # noqa: E731
    assert block_sites(model.sites, "vision.blocks.0.") == block_sites(text.sites, "blocks.0.")

    pixels = _pixels(kind, batch=3)
    run = model.run(pixel_batch(cfg, pixels), capture=["vision.blocks.0.*"])
    b, p, d, h, dh = 3, cfg.tokens_per_image, cfg.hidden_size, cfg.num_heads, cfg.head_dim
    shapes = {"resid_pre": (b, p, d), "attn.in": (b, p, d), "mlp.in": (b, p, d), "attn.q": (b, p, h, dh), "attn.k": (b, p, h, dh), "attn.v": (b, p, h, dh),
              "attn.scores": (b, h, p, p), "attn.probs": (b, h, p, p), "attn.head_out": (b, p, h, dh),
              "attn.out": (b, p, d), "resid_mid": (b, p, d), "mlp.act": (b, p, cfg.intermediate_size),
              "mlp.out": (b, p, d), "resid_post": (b, p, d)}
    assert {name: run[f"vision.blocks.0.{name}"].shape for name in shapes} == shapes
    probs = np.asarray(run["vision.blocks.0.attn.probs"])
    assert probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-5)
    assert (probs > 0).all()  # bidirectional: every patch sees every patch
    assert cfg.tokens_per_image == {"clip": 17, "siglip": 9}[kind]


def _zero_first_head_on_images(x, ctx, _):
    return jnp.where(ctx.segment_mask("image")[:, None, :, None], x.at[:, 0].set(0.0), x)


def test_edits_act_at_vision_sites(towers):
    """An edit at a vision site sees `image` segments in its context and changes the output."""
    _, model = towers["clip"]
    batch = pixel_batch(model.config, _pixels("clip"))
    edit = FunctionEdit(patterns=("vision.blocks.1.attn.probs",), fn=_zero_first_head_on_images)
    edited, plain = model.run(batch, edits=edit).hidden, model.run(batch).hidden
    assert np.abs(np.asarray(edited) - np.asarray(plain)).max() > 1e-2


def test_bad_pixels_and_configs_are_clear_errors(towers):
    _, model = towers["clip"]
    with pytest.raises(ArgumentError, match=r"pixels: expected shape \[B, 3, 32, 32\].*found \(1, 4, 32, 32\)"):
        model.run(pixel_batch(model.config, np.zeros((1, 4, 32, 32), np.float32)))
    with pytest.raises(ArgumentError, match="inputs: expected a batch with pixels"):
        model.run(make_batch(np.zeros((1, 17), np.int32)))
    hf = TOWERS["siglip"][1].to_dict()
    with pytest.raises(ConfigError, match="hidden_act: expected one of .* found 'swish_cubed'"):
        siglip_vision.from_hf_config({**hf, "hidden_act": "swish_cubed"})
    with pytest.raises(ConfigError, match="num_attention_heads: expected a divisor of hidden_size=32, found 5"):
        siglip_vision.from_hf_config({**hf, "num_attention_heads": 5})
    with pytest.raises(ConfigError, match="model_type: expected one of .*siglip_vision_model.* found 'clip'"):
        siglip_vision.from_hf_config({**hf, "model_type": "clip"})


def test_configs_round_trip_and_fill_transformers_defaults(towers):
    for _, model in towers.values():
        assert jaxinterp.models.config_from_dict(jaxinterp.models.config_to_dict(model.config)) == model.config
    # LLaVA-1.5's vision_config leaves out keys that hold transformers' defaults
    sparse = {"model_type": "clip_vision_model", "hidden_size": 1024, "image_size": 336, "intermediate_size": 4096,
              "num_attention_heads": 16, "num_hidden_layers": 24, "patch_size": 14, "projection_dim": 768}
    config = jaxinterp.models.config_from_hf(sparse)
    assert (config.activation, config.layer_norm_eps, config.num_channels, config.grid, config.tokens_per_image) == (
        "quick_gelu", 1e-5, 3, (24, 24), 577)
