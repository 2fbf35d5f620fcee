"""`plan`: bytes per device from shapes alone, checked against real shards and known model sizes."""

from __future__ import annotations

import json

import pytest

from jaxinterp.cli import main
from jaxinterp.models.llama import LlamaConfig
from jaxinterp.plan import parse_mesh, plan
from tests.isolated import run_python

TINY = dict(vocab_size=128, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=8, num_kv_heads=4,
            head_dim=8)

# The largest per-device parameter bytes of `ji.shard` on 8 simulated devices, per strategy.
SHARDED_BYTES = """
    import os, json
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
    import jax, numpy as np
    from jax.sharding import Mesh
    import jaxinterp as ji
    from jaxinterp.models import init_params
    from jaxinterp.models.llama import LlamaConfig
    config = LlamaConfig(**TINY)
    model = ji.Model(config, init_params(config, jax.random.key(0)))
    mesh = Mesh(np.array(jax.devices()).reshape(4, 2), ("data", "model"))
    out = {}
    for strategy in ("data", "fsdp", "tensor"):
        held = {}
        for leaf in jax.tree.leaves(ji.shard(model, mesh, strategy).params):
            for shard in leaf.addressable_shards:
                held[shard.device.id] = held.get(shard.device.id, 0) + shard.data.nbytes
        out[strategy] = max(held.values())
    print(json.dumps(out))
"""


def test_parameter_bytes_equal_real_shards():
    measured = json.loads(run_python(SHARDED_BYTES.replace("TINY", repr(TINY))).strip().splitlines()[-1])
    for strategy, held in measured.items():
        planned = plan(LlamaConfig(**TINY), mesh={"data": 4, "model": 2}, strategy=strategy, dtype="float32")
        assert planned.parameter_bytes_per_device == held, strategy
    assert measured["fsdp"] < measured["tensor"] < measured["data"]


def test_named_sizes_have_their_published_parameter_counts():
    # Llama-2-7B: 6,738,415,616 parameters (Meta's model card rounds it to 7B)
    assert plan("llama-2-7b", mesh={"data": 8}, dtype="bfloat16", prefill=16, cache=16).parameters == 6_738_415_616


def test_cache_and_prefill_scale_with_their_lengths():
    config = LlamaConfig(**TINY)
    short = plan(config, mesh={"data": 2}, batch=2, prefill=64, cache=128)
    long = plan(config, mesh={"data": 2}, batch=2, prefill=256, cache=512)
    # KV cache: 2 (k, v) x layers x batch x slots x kv heads x head_dim x 2 bytes, the batch over 2 devices
    assert short.cache_bytes_per_device == 2 * 2 * 2 * 128 * 4 * 8 * 2 // 2
    assert long.cache_bytes_per_device == 4 * short.cache_bytes_per_device
    assert long.prefill_bytes_per_device > 2 * short.prefill_bytes_per_device


@pytest.mark.parametrize("text, expected", [("8", {"data": 8}), ("4x2", {"data": 4, "model": 2})])
def test_parse_mesh(text, expected):
    assert parse_mesh(text) == expected


@pytest.mark.parametrize("argv, message", [
    (["plan", "no-such-model"], "neither a named size"),
    (["plan", "llada-8b", "--mesh", "4y2"], "expected axis sizes like 8 or 4x2"),
    (["plan", "llada-8b", "--mesh", "3x3", "--strategy", "tensor"], "must divide num_heads=32"),
    (["plan", "llada-8b", "--prefill", "0"], "prefill: expected a positive integer"),
])
def test_cli_errors_are_one_line(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err


def test_cli_plan_prints_and_writes(tmp_path, capsys):
    out = tmp_path / "plan.json"
    assert main(["plan", "llada-8b", "--mesh", "4x2", "--dtype", "bfloat16", "--prefill", "128", "--cache", "256",
                 "--out", str(out)]) == 0
    assert "parameters" in capsys.readouterr().out
    assert json.loads(out.read_text())["parameters"] == plan("llada-8b", mesh={"data": 4, "model": 2},
                                                            prefill=16, cache=16).parameters
