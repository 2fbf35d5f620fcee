"""Shared fixtures: the default model, its PyTorch reference, and tiny saved checkpoints."""

from __future__ import annotations

import getpass
import os
import tempfile

# The suite spends most of its time compiling (tests/test_per_row.py: 238 s cold, 70 s with its
# programs cached), so its workers and child processes share a persistent compilation cache (the
# same programs compile once per machine, not once per process), and LLVM compiles without its
# optimisation passes (the same file: 180 s instead of 238 s; XLA's HLO passes still run). A user's own
# settings win: both are defaults only. A run writes ~130 MiB there; the cache is not size-bounded,
# because with JAX's bounded (LRU) mode two workers failed to write 1,778 entries whose bookkeeping
# files the other had evicted (delete the folder to reclaim the space).
CACHE_DIR = os.environ.setdefault(
    "JAX_COMPILATION_CACHE_DIR", os.path.join(tempfile.gettempdir(), f"jaxinterp-tests-xla-cache-{getpass.getuser()}"))
MIN_COMPILE_SECONDS = float(os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0"))
if "--xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0").strip()

import jax  # noqa: E402  (after the environment it reads)
import numpy as np  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")
# the environment is for child processes; this process may have imported jax before reading it
jax.config.update("jax_compilation_cache_dir", CACHE_DIR)
jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_SECONDS)


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
