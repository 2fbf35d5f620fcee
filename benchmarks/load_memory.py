"""Memory of loading a ~300M-parameter bfloat16 safetensors checkpoint, whole and sharded.

    python -m benchmarks.load_memory [--folder /tmp/jaxinterp-load-300m]

Writes (once) a random Llama of 302M parameters in bfloat16 with transformers, then, each in a
fresh subprocess:
- how much `ji.load(folder, dtype="bfloat16")` raises the peak resident set size (ru_maxrss) over
  the process before the load, as a multiple of the weight file's bytes (target <= 1.2x). Tensors
  are read one at a time into their own buffers (`converters/safetensors_file.py`), so the peak is
  the converted parameters plus one tensor;
- with 4 simulated CPU devices and `mesh=..., strategy="fsdp"`, the bytes each device holds, as a
  share of the model (target <= 0.35x plus one tensor), and the largest tensor's share.
Prints both and writes them to `--out`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

from benchmarks.common import write_results

MEASURE = """
import json, os, resource, sys, time
import jaxinterp as ji
folder = sys.argv[1]
size = sum(os.path.getsize(os.path.join(folder, f)) for f in os.listdir(folder) if f.endswith(".safetensors"))
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
start = time.perf_counter()
ji.load(folder, dtype="bfloat16", progress=False)
growth = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
print(f"weights {size / 2**20:.0f} MiB; peak RSS +{growth / 2**20:.0f} MiB = {growth / size:.2f}x the file "
      f"(target <= 1.2x); {time.perf_counter() - start:.1f} s")
print(json.dumps({"file_mib": size / 2**20, "peak_rss_growth_mib": growth / 2**20, "peak_rss_over_file": growth / size}))
"""

SHARDED = """
import json, os, sys
os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"
import jax, numpy as np
from jax.sharding import Mesh
import jaxinterp as ji
mesh = Mesh(np.array(jax.devices()).reshape(4, 1), ("data", "model"))
model = ji.load(sys.argv[1], dtype="bfloat16", mesh=mesh, strategy="fsdp", progress=False)
leaves = jax.tree.leaves(model.params)
total = sum(x.nbytes for x in leaves)
held = {}
for x in leaves:
    for shard in x.addressable_shards:
        held[shard.device] = held.get(shard.device, 0) + shard.data.nbytes
largest = max(x.nbytes for x in leaves)
share = max(held.values()) / total
print(f"fsdp over {len(held)} devices: the fullest holds {share:.3f}x of the model (target <= 0.35x plus one tensor; "
      f"the largest tensor is {largest / total:.3f}x)")
print(json.dumps({"devices": len(held), "per_device_share": share, "largest_tensor_share": largest / total}))
"""


def write_checkpoint(folder: str) -> None:
    import torch
    import transformers

    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=32000, hidden_size=1024, intermediate_size=2816, num_hidden_layers=22,
                                      num_attention_heads=16, num_key_value_heads=4, tie_word_embeddings=False)
    transformers.LlamaForCausalLM(config).to(torch.bfloat16).save_pretrained(folder)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--folder", default=os.path.join(os.environ.get("TMPDIR", "/tmp"), "jaxinterp-load-300m"))
    parser.add_argument("--out", default="results/load_memory/results.json")
    args = parser.parse_args()
    if not os.path.exists(os.path.join(args.folder, "model.safetensors")):
        # in its own process: a child's ru_maxrss starts from its parent's peak, which torch would raise
        subprocess.run([sys.executable, "-c", "import sys; from benchmarks.load_memory import write_checkpoint; "
                        "write_checkpoint(sys.argv[1])", args.folder], check=True)
    results = {}
    for name, script in (("whole", MEASURE), ("sharded", SHARDED)):
        out = subprocess.run([sys.executable, "-c", script, args.folder], check=True, capture_output=True, text=True).stdout
        print("\n".join(out.strip().splitlines()[:-1]))
        results[name] = json.loads(out.strip().splitlines()[-1])
    write_results(args.out, results)


if __name__ == "__main__":
    main()
