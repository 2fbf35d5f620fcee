"""Every wrapper survives every path: {plain, identity positional scheme, fsdp over 4 simulated
devices, a default edit} x {__call__, run with captures, grad, attribute (grad_cam, integrated
gradients), streamed head statistics, Step-Saliency, greedy generate}, on the tiny VLM.

One child process (4 simulated CPU devices need their own XLA flags) computes every path under
every wrapper and prints the largest difference from the reference: the plain model, or for
the default edit the plain model given that edit explicitly.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import textwrap

ROOT = pathlib.Path(__file__).resolve().parents[1]

CHILD = textwrap.dedent("""
    import os, json
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
    import jax, jax.numpy as jnp, numpy as np
    jax.config.update("jax_default_matmul_precision", "highest")
    import jaxinterp as ji
    from jax.sharding import Mesh
    from jaxinterp.attention import head_statistics
    from jaxinterp.attribution import attribute
    from jaxinterp.methods.positions import with_scheme
    from jaxinterp.methods.step_saliency import step_maps
    from tests.attention_fixtures import tiny_vlm, vlm_batch

    assert len(jax.devices()) == 4
    vlm = tiny_vlm()
    batch, answered, prompt = vlm_batch(vlm), vlm_batch(vlm, answers=True), vlm_batch(vlm, padding="left")
    steps = np.minimum(np.arange(batch.tokens.shape[1]) // 8, 3)[None].repeat(2, 0)
    objective = lambda run: run.logits[:, -1, 3].sum()
    edit = ji.ScaleHead(layer=1, head=2, scale=0.5)

    def paths(model, edits):
        run = model.run(batch, capture=["blocks.1.attn.probs", "blocks.0.resid_post"], edits=edits)
        value, grads = model.grad(objective, batch, wrt=["blocks.0.resid_post"], edits=edits)
        cam = attribute(model, answered, method="grad_cam", edits=edits)
        ig = attribute(model, answered, method="integrated_gradients", edits=edits, steps=8)
        stats = head_statistics(model, batch, edits=edits)
        loss, maps = step_maps(model, batch, steps, edits=edits)
        tokens = model.generate(prompt, 4, edits=edits, stop=[]).tokens
        return {"call": model(batch, edits=edits), "run.probs": run["blocks.1.attn.probs"],
                "run.resid": run["blocks.0.resid_post"], "grad.value": value, "grad": grads["blocks.0.resid_post"],
                "grad_cam": cam.image, "grad_cam.values": cam.values, "integrated_gradients": ig.image,
                "entropy": stats["entropy"], "m_index": stats["m_index"], "step_saliency": maps,
                "step_saliency.loss": loss, "generate": np.asarray(tokens, np.float32)}

    def gap(a, b):
        return {k: float(np.max(np.abs(np.asarray(a[k], np.float32) - np.asarray(b[k], np.float32)))) for k in a}

    plain, edited = paths(vlm, ()), paths(vlm, (edit,))
    mesh = Mesh(np.array(jax.devices()).reshape(4), ("fsdp",))
    out = {
        "scheme": gap(paths(with_scheme(vlm, "raster"), ()), plain),
        "fsdp": gap(paths(ji.shard(vlm, mesh, "fsdp"), ()), plain),
        "default_edit": gap(paths(vlm.with_edits(edit), ()), edited),
        "edit_changes_something": gap(edited, plain)["call"],
    }
    print("RESULT" + json.dumps(out))
""")


def test_every_wrapper_survives_every_path():
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", CHILD], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.split("RESULT", 1)[1])
    assert result.pop("edit_changes_something") > 1e-4  # the default-edit rows compare a real edit
    bad = {f"{wrapper}/{path}": gap for wrapper, gaps in result.items() for path, gap in gaps.items() if gap > 1e-5}
    assert not bad, bad
