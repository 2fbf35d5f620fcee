"""The MoA family (mixture of attention heads): `model.py` holds the config, the Flax model
and the training objective. It has no public checkpoints, so no Hugging Face config or name map."""

from jaxinterp.models.family import Family
from jaxinterp.models.moa.model import MoA, MoAConfig, aux_losses, moa_loss, route

FAMILY = Family(config=MoAConfig)

__all__ = ["FAMILY", "MoA", "MoAConfig", "aux_losses", "moa_loss", "route"]
