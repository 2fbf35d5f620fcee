"""Running jaxinterp on a Cloud TPU slice (multi-host), or on any set of local devices.

On a TPU pod slice, start this same script on every host (one process per host), e.g.

    gcloud compute tpus tpu-vm ssh NAME --worker=all --command \
        "cd jaxinterp && python -m experiments.tpu_slice --strategy tensor --model converted/"

`jax.distributed.initialize()` connects the processes (on Cloud TPU it needs no arguments);
`jax.devices()` then lists the devices of every host, the mesh spans them all, and each
process loads the model straight into its shards (`load(..., mesh=...)`). Every process runs the same jitted programs
(SPMD); only process 0 prints. Load a converted directory (`jaxinterp convert`) that every
host can read. To try it on one machine: `--local` (simulate devices with
`XLA_FLAGS=--xla_force_host_platform_device_count=8`).
"""

from __future__ import annotations

import argparse

import jax
import numpy as np
from jax.sharding import Mesh


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--strategy", default="fsdp", choices=["data", "fsdp", "tensor"])
    parser.add_argument("--model-axis", type=int, default=1, help="size of the tensor-parallel mesh axis")
    parser.add_argument("--local", action="store_true", help="single process: skip jax.distributed.initialize()")
    args = parser.parse_args()
    if not args.local:
        jax.distributed.initialize()

    import jaxinterp

    devices = np.array(jax.devices())
    mesh = Mesh(devices.reshape(-1, args.model_axis), ("data", "model"))
    # each tensor goes straight into its shards: no device (and no second host copy) holds the whole model
    model = jaxinterp.load(args.model, progress=jax.process_index() == 0, mesh=mesh, strategy=args.strategy)
    prompts = ["What is the capital of France?"] * mesh.shape["data"]
    out = model.generate(prompts, 16, chat=True)
    probs = model.run(prompts[0], capture="blocks.0.attn.probs")["blocks.0.attn.probs"]
    if jax.process_index() == 0:
        print(f"{jax.process_count()} process(es), {len(devices)} devices, mesh {dict(mesh.shape)}, {args.strategy}")
        print("answer:", out.texts[0])
        print("layer-0 attention shape:", probs.shape)


if __name__ == "__main__":
    main()
