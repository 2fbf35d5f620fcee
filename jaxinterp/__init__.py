"""jaxinterp: transformer models open to inspection and surgery in JAX.

    import jaxinterp as ji
    model = ji.load("smollm2")
    run = model.run("The capital of France is", capture=["blocks.*.attn.probs"])
    logits = model("The capital of France is", edits=ji.ScaleHead(layer=5, head=2, scale=0.0))
"""

from jaxinterp.cache import library_version as _library_version
from jaxinterp.edits import AddToResidual, Edit, FunctionEdit, Patch, PatchHeads, PatchLayer, PatternFromScores, ScaleHead, SetHead, compose
from jaxinterp.generate import Generation, Labeler
from jaxinterp.errors import ArgumentError, CheckpointError, ConfigError, JaxinterpError, NonFiniteError, SiteError
from jaxinterp.loader import convert, load, save
from jaxinterp.model import Model, Run
from jaxinterp.models import SEGMENTS, Batch, Context, make_batch
from jaxinterp.sharding import shard
from jaxinterp.sweep import sweep

__version__ = _library_version()

__all__ = [
    "AddToResidual", "ArgumentError", "Batch", "CheckpointError", "ConfigError", "Context", "Edit",
    "FunctionEdit", "Generation", "JaxinterpError", "Labeler", "NonFiniteError", "Model", "Patch", "PatchHeads", "PatchLayer", "PatternFromScores", "Run", "SEGMENTS", "ScaleHead",
    "SetHead", "SiteError", "compose", "convert", "load", "make_batch", "save", "shard", "sweep",
]
