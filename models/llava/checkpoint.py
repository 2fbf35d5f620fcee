"""Name map of LLaVA (`LlavaForConditionalGeneration`): the tower's, the projector's and the decoder's.

The tower and decoder maps are their own families' maps under the LLaVA prefixes. Every
checkpoint layout of transformers is read: the current one (`model.vision_tower.`,
`model.multi_modal_projector.`, `model.language_model.`, `lm_head.`) and the older ones
(`[model.]vision_tower.vision_model.`, `multi_modal_projector.`, `language_model.model.`,
`language_model.lm_head.`), which `canonical` renames. Tower layers after the selected feature layer are never computed
and their tensors are skipped.
"""

from __future__ import annotations

import re

from jaxinterp.models import registry
from jaxinterp.models.layouts import LINEAR, SAME, Layout

VISION_PREFIX = "model.vision_tower."
TEXT_PREFIX = "model.language_model."
OLD_LAYOUT = (
    (r"^language_model\.model\.", TEXT_PREFIX),
    (r"^language_model\.lm_head\.", "lm_head."),
    (r"^(model\.)?vision_tower\.(vision_model\.)?", VISION_PREFIX),
    (r"^multi_modal_projector\.", "model.multi_modal_projector."),
)


def canonical(name: str) -> str:
    """A tensor name of either checkpoint layout in the current layout."""
    for pattern, replacement in OLD_LAYOUT:
        name = re.sub(pattern, replacement, name)
    return name


def name_map(config) -> dict[str, tuple[str, Layout]]:
    """Parameter path -> (tensor name, layout) for a `LlavaConfig`."""
    table = dict(registry.checkpoint_names(config.vision).name_map(config.vision, prefix=VISION_PREFIX, tower_only=True))
    layers = config.vision_layers
    table = {path: rule for path, rule in table.items()
             if not (m := re.match(r"vision/blocks_(\d+)/", path)) or int(m.group(1)) < layers}
    for layer in ("linear_1", "linear_2"):
        table[f"projector/{layer}/kernel"] = (f"model.multi_modal_projector.{layer}.weight", LINEAR)
        if config.projector_bias:
            table[f"projector/{layer}/bias"] = (f"model.multi_modal_projector.{layer}.bias", SAME)
    text = registry.checkpoint_names(config.text).name_map(config.text, prefix=TEXT_PREFIX)
    table.update({f"text/{path}": rule for path, rule in text.items()})
    return table


def ignored(config) -> tuple[str, ...]:
    unused_layers = "|".join(str(i) for i in range(config.vision_layers, config.vision.num_layers)) or "(?!)"
    return (
        *registry.checkpoint_names(config.vision).ignored(config.vision, prefix=VISION_PREFIX, tower_only=True),
        re.escape(VISION_PREFIX) + rf"encoder\.layers\.({unused_layers})\..*",
        *registry.checkpoint_names(config.text).ignored(config.text, prefix=TEXT_PREFIX),
    )
