"""`load(..., mesh=...)` puts each parameter straight into its shards (from safetensors, reading only
each device's slices of the file): same model as `shard(load(...))`."""

from __future__ import annotations

import json

import pytest

from tests.isolated import run_python

SCRIPT = """
    import os, json
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
    import jax, numpy as np
    from jax.sharding import Mesh
    import jaxinterp as ji
    folder, converted = FOLDER, CONVERTED
    mesh = Mesh(np.array(jax.devices()).reshape(4, 1), ("data", "model"))
    plain = ji.load(folder, progress=False)
    ji.convert(folder, converted, progress=False)
    tokens = np.arange(24, dtype=np.int32).reshape(4, 6) % 90
    out = {}
    for name, source in (("checkpoint", folder), ("converted", converted)):
        for strategy in ("fsdp", "tensor"):
            model = ji.load(source, mesh=mesh, strategy=strategy, progress=False)
            reference = ji.shard(plain, mesh, strategy)
            specs = [str(x.sharding.spec) for x in jax.tree.leaves(model.params)]
            same = [str(x.sharding.spec) for x in jax.tree.leaves(reference.params)]
            held = {}
            for leaf in jax.tree.leaves(model.params):
                for piece in leaf.addressable_shards:
                    held[piece.device.id] = held.get(piece.device.id, 0) + piece.data.nbytes
            total = sum(x.nbytes for x in jax.tree.leaves(plain.params))
            largest = max(x.nbytes for x in jax.tree.leaves(plain.params))
            out[f"{name}-{strategy}"] = dict(
                specs_equal=specs == same, sharded=len(set(specs)) > 1,
                logits=float(np.abs(np.asarray(model(tokens)) - np.asarray(plain(tokens))).max()),
                per_device=max(held.values()) / total, largest=largest / total)
    print(json.dumps(out))
"""


@pytest.mark.parametrize("kind", ["smol", "gpt2"])  # gpt2: fused q/k/v columns read slice by slice
def test_sharded_load_equals_shard_of_load(tiny_checkpoint, tmp_path, kind):
    folder, _ = tiny_checkpoint(kind)
    script = SCRIPT.replace("FOLDER", repr(folder)).replace("CONVERTED", repr(str(tmp_path / "converted")))
    results = json.loads(run_python(script).strip().splitlines()[-1])
    assert len(results) == 4
    for case, r in results.items():
        assert r["specs_equal"] and r["sharded"], case
        assert r["logits"] <= 1e-5, case
    # fsdp over 4 devices: a quarter of the model per device, plus what cannot be split
    assert results["checkpoint-fsdp"]["per_device"] <= 0.35 + results["checkpoint-fsdp"]["largest"]
    assert results["converted-fsdp"]["per_device"] <= 0.35 + results["converted-fsdp"]["largest"]


def test_unknown_strategy_is_named(tiny_checkpoint):
    import jax
    import numpy as np
    from jax.sharding import Mesh

    import jaxinterp as ji
    from jaxinterp.errors import ArgumentError

    folder, _ = tiny_checkpoint("smol")
    mesh = Mesh(np.array(jax.devices()[:1]).reshape(1, 1), ("data", "model"))
    with pytest.raises(ArgumentError, match="strategy: expected one of"):
        ji.load(folder, mesh=mesh, strategy="zero3", progress=False)
