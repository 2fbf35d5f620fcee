"""Peak memory of loading a ~300M-parameter bfloat16 safetensors checkpoint (target: <= 1.2x its bytes).

    python -m benchmarks.load_memory [--folder /tmp/jaxinterp-load-300m]

Writes (once) a random Llama of 302M parameters in bfloat16 with transformers, then in a fresh
subprocess measures how much `ji.load(folder, dtype="bfloat16")` raises the peak resident set
size (ru_maxrss) over the process before the load, as a multiple of the weight file's bytes.
Tensors are read one at a time into their own buffers (`converters/safetensors_file.py`), so
the peak is the converted parameters plus one tensor.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

MEASURE = """
import os, resource, sys, time
import jaxinterp as ji
folder = sys.argv[1]
size = sum(os.path.getsize(os.path.join(folder, f)) for f in os.listdir(folder) if f.endswith(".safetensors"))
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
start = time.perf_counter()
ji.load(folder, dtype="bfloat16", progress=False)
growth = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
print(f"weights {size / 2**20:.0f} MiB; peak RSS +{growth / 2**20:.0f} MiB = {growth / size:.2f}x the file "
      f"(target <= 1.2x); {time.perf_counter() - start:.1f} s")
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
    args = parser.parse_args()
    if not os.path.exists(os.path.join(args.folder, "model.safetensors")):
        write_checkpoint(args.folder)
    subprocess.run([sys.executable, "-c", MEASURE, args.folder], check=True)


if __name__ == "__main__":
    main()
