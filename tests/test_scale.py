"""Sharding over 8 simulated CPU devices, and batched sweeps."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxinterp as ji
from jaxinterp.models import init_params
from jaxinterp.models.llama import LlamaConfig

TINY = dict(vocab_size=128, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=8, num_kv_heads=4,
            head_dim=8, eos_token_ids=(127,))

SHARDED = textwrap.dedent("""
    import os
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
    import jax, jax.numpy as jnp, numpy as np
    import jaxinterp as ji
    from jaxinterp.models import init_params, make_batch
    from jaxinterp.models.llama import LlamaConfig
    from jax.sharding import Mesh
    assert len(jax.devices()) == 8
    config = LlamaConfig(**TINY)
    model = ji.Model(config, init_params(config, jax.random.key(0)))
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 127, (8, 12)).astype(np.int32)
    mask = np.ones((8, 12), bool); mask[3, 9:] = False
    batch = make_batch(tokens, mask)
    prompt = make_batch(tokens[:, :6], np.ones((8, 6), bool))
    base_logits = np.asarray(model(batch))
    base_tokens = model.generate(prompt, 8).tokens
    objective = lambda run: run.logits[:, -1].sum()
    base_grad = np.asarray(model.grad(objective, batch, wrt="blocks.1.resid_mid")[1]["blocks.1.resid_mid"])
    mesh = Mesh(np.array(jax.devices()).reshape(2, 4), ("data", "model"))
    for strategy in ("data", "fsdp", "tensor"):
        sharded = ji.shard(model, mesh, strategy)
        kinds = {str(x.sharding.spec) for x in jax.tree.leaves(sharded.params)}
        assert strategy == "data" or len(kinds) > 1, (strategy, kinds)
        logits = np.asarray(sharded(batch))
        assert np.abs(logits - base_logits)[mask].max() <= 1e-5, strategy
        assert sharded.generate(prompt, 8).tokens == base_tokens, strategy
        grad = np.asarray(sharded.grad(objective, batch, wrt="blocks.1.resid_mid")[1]["blocks.1.resid_mid"])
        assert np.abs(grad - base_grad).max() <= 1e-5, strategy
    def ablate(batch, v):
        return model(batch, edits=ji.ScaleHead(layer=1, head=v[0], scale=v[1]))[:, -1]
    heads, scales = np.meshgrid(np.arange(8), np.linspace(0, 1.5, 8), indexing="ij")
    variations = jnp.stack([heads.ravel().astype(np.float32), scales.ravel().astype(np.float32)], axis=1)
    ablate_int = lambda batch, v: ablate(batch, (v[0].astype(jnp.int32), v[1]))
    swept = np.asarray(ji.sweep(ablate_int, batch, variations, mesh=mesh, chunk_size=16, progress=False))
    loop = np.stack([np.asarray(ablate_int(batch, v)) for v in variations])
    assert swept.shape == (64, 8, 128)
    assert np.abs(swept - loop).max() <= 1e-5
    try:
        ji.shard(model, Mesh(np.array(jax.devices()), ("model",)), "tensor")
    except ji.ArgumentError as e:
        assert "num_kv_heads=4" in str(e), e
    else:
        raise AssertionError("expected an error for 8 devices on 4 kv heads")
    print("OK")
""")


def test_strategies_on_eight_simulated_devices():
    script = f"TINY = {TINY!r}\n" + SHARDED
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=900)
    assert result.returncode == 0 and result.stdout.strip().endswith("OK"), result.stderr[-3000:]


@pytest.fixture(scope="module")
def tiny():
    config = LlamaConfig(**TINY)
    return ji.Model(config, init_params(config, jax.random.key(1)))


def test_sweep_matches_loop_and_chunks(tiny):
    batch = ji.make_batch(np.arange(10, dtype=np.int32)[None] % 128)

    def steer(batch, vector):
        return tiny(batch, edits=ji.AddToResidual(layer=0, vector=vector))[0, -1]

    vectors = jax.random.normal(jax.random.key(2), (7, 64))
    loop = np.stack([np.asarray(steer(batch, v)) for v in vectors])
    for chunk in (None, 1, 3, 7, 20):
        out = ji.sweep(steer, batch, vectors, chunk_size=chunk, progress=False)
        np.testing.assert_allclose(out, loop, atol=1e-5)


def test_sweep_budget_sets_chunks_and_bad_variations_fail(tiny):
    from jaxinterp.sweep import _hoisted, chunk_size_for

    batch = ji.make_batch(np.arange(16, dtype=np.int32)[None])
    fn = lambda b, s: tiny(b, edits=ji.ScaleHead(layer=1, head=0, scale=s))  # noqa: E731
    _, consts, jaxpr = _hoisted(fn, batch, jnp.float32(1.0))
    assert len(consts) > 0  # the params became arguments, not compiled-in constants
    small, large = chunk_size_for(jaxpr, "1MB"), chunk_size_for(jaxpr, "64MB")
    assert 1 <= small < large
    with pytest.raises(ji.ArgumentError, match="leading axis"):
        ji.sweep(fn, batch, {"a": jnp.zeros(3), "b": jnp.zeros(4)})
    with pytest.raises(ji.ArgumentError, match="memory_budget"):
        ji.sweep(fn, batch, jnp.zeros(3), memory_budget="12 parsecs")


def test_sweep_spreads_the_budget_chunk_evenly(tiny, monkeypatch):
    """90 variations at 64 per chunk run as 2 chunks of 45, not 64 + a 64-row chunk holding 26."""
    sweep_module = importlib.import_module("jaxinterp.sweep")  # `jaxinterp.sweep` the attribute is the function
    hoisted, seen = sweep_module._hoisted, []

    def spied(*args):
        batched, consts, jaxpr = hoisted(*args)
        return (lambda c, i, chunk: seen.append(chunk.shape[0]) or batched(c, i, chunk)), consts, jaxpr

    monkeypatch.setattr(sweep_module, "_hoisted", spied)
    monkeypatch.setattr(sweep_module, "chunk_size_for", lambda jaxpr, budget: 64)
    batch = ji.make_batch(np.arange(6, dtype=np.int32)[None])
    scales = jnp.linspace(0.0, 1.0, 90)
    out = ji.sweep(lambda b, s: tiny(b, edits=ji.ScaleHead(layer=1, head=0, scale=s))[0, -1], batch, scales,
                   progress=False)
    assert seen == [45, 45] and out.shape[0] == 90
    seen.clear()
    ji.sweep(lambda b, s: tiny(b, edits=ji.ScaleHead(layer=1, head=0, scale=s))[0, -1], batch, scales, chunk_size=64,
             progress=False)
    assert seen == [64, 64]  # an explicit chunk_size is taken as given


@pytest.mark.slow
def test_tpu_slice_example_runs_locally():
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
    result = subprocess.run([sys.executable, "-m", "experiments.tpu_slice", "--local", "--strategy", "fsdp"],
                            capture_output=True, text=True, env=env, timeout=900,
                            cwd=os.path.dirname(os.path.dirname(__file__)))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "4 devices" in result.stdout and "Paris" in result.stdout
