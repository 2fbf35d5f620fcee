"""What the CLIP and SigLIP vision towers' name maps share: the encoder blocks, and where a
checkpoint keeps the tower.

transformers 4 saved a standalone tower under `vision_model.` (as a full CLIP/SigLIP model
still does); transformers 5 saves a freshly built `CLIPVisionModel`/`SiglipVisionModel`
without a prefix. `PLACEMENTS` lists both; the shared converter picks the one whose tensors
the checkpoint holds.
"""

from __future__ import annotations

from jaxinterp.models.layouts import LINEAR, LINEAR_SPLIT_IN, LINEAR_SPLIT_OUT, SAME, SPLIT, Layout

PLACEMENTS = ({"prefix": "vision_model."}, {"prefix": ""})

# The rest of a full CLIP/SigLIP image-text model, skipped when only its vision tower is loaded.
OTHER_HALF = (r"text_model\..*", r"logit_scale", r"logit_bias", r"(text|visual)_projection\.weight")


def encoder_map(config, prefix: str) -> dict[str, tuple[str, Layout]]:
    """Parameter path -> (Hugging Face tensor name, layout) for the encoder blocks of a tower."""
    table = {}
    for i in range(config.num_layers):
        ours, theirs = f"vision/blocks_{i}", f"{prefix}encoder.layers.{i}"
        for norm, hf in (("attn_norm", "layer_norm1"), ("mlp_norm", "layer_norm2")):
            table[f"{ours}/{norm}/scale"] = (f"{theirs}.{hf}.weight", SAME)
            table[f"{ours}/{norm}/bias"] = (f"{theirs}.{hf}.bias", SAME)
        for proj in ("q_proj", "k_proj", "v_proj"):
            table[f"{ours}/{proj}/kernel"] = (f"{theirs}.self_attn.{proj}.weight", LINEAR_SPLIT_OUT)
            table[f"{ours}/{proj}/bias"] = (f"{theirs}.self_attn.{proj}.bias", SPLIT)
        table[f"{ours}/o_proj/kernel"] = (f"{theirs}.self_attn.out_proj.weight", LINEAR_SPLIT_IN)
        table[f"{ours}/o_proj/bias"] = (f"{theirs}.self_attn.out_proj.bias", SAME)
        for ours_name, hf in (("fc", "fc1"), ("proj", "fc2")):
            table[f"{ours}/{ours_name}/kernel"] = (f"{theirs}.mlp.{hf}.weight", LINEAR)
            table[f"{ours}/{ours_name}/bias"] = (f"{theirs}.mlp.{hf}.bias", SAME)
    return table
