"""Shared fixtures: the default model, its PyTorch reference, and tiny saved checkpoints."""

from __future__ import annotations

import os

import jax
import numpy as np
import pytest

jax.config.update("jax_default_matmul_precision", "highest")


@pytest.fixture(scope="session")
def smollm2():
    import jaxinterp

    return jaxinterp.load("smollm2", progress=False)


@pytest.fixture(scope="session")
def smollm2_reference():
    """transformers' PyTorch model dequantised from the same GGUF file into dense fp32 weights."""
    torch = pytest.importorskip("torch")
    from transformers import AutoModelForCausalLM, GgufConfig

    from jaxinterp.cache import builtin_source

    path = builtin_source("smollm2")
    model = AutoModelForCausalLM.from_pretrained(
        os.path.dirname(path), gguf_file=os.path.basename(path), dtype=torch.float32,
        quantization_config=GgufConfig(dequantize=True),
    )
    return model.eval()


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """Factory: kind -> (saved HF directory, the PyTorch model)."""
    pytest.importorskip("torch")
    from tests import hf_tiny

    made = {}

    def make(kind: str):
        if kind not in made:
            model = hf_tiny.build(kind)
            folder = tmp_path_factory.mktemp(kind)
            model.save_pretrained(folder)
            made[kind] = (str(folder), model)
        return made[kind]

    return make


@pytest.fixture
def padded_batch():
    """A right-padded batch of two rows (12 and 7 real tokens) for a vocabulary of 96."""
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 96, size=(2, 12)).astype(np.int32)
    mask = np.ones((2, 12), bool)
    mask[1, 7:] = False
    return tokens, mask
