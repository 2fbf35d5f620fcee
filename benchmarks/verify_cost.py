"""Cost of checking a converted directory's digests, against the load time of SmolLM2 (target: < 10%).

    python -m benchmarks.verify_cost [--repeats 5]

Loads the cached SmolLM2 entry (converting it once if needed) `repeats` times with
`verify=True` and with `verify=False`, alternating, and times `orbax_dir.verify` alone on
the same entry; prints the medians and the check's share of a verified load.
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax

import jaxinterp as ji
from jaxinterp import cache
from jaxinterp.converters import orbax_dir


def _seconds(call) -> float:
    start = time.perf_counter()
    jax.block_until_ready(call())
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    ji.load("smollm2", progress=False)  # builds the cache entry once
    entry = cache.entry_path("smollm2", cache.file_hash(cache.builtin_source("smollm2")))
    manifest = orbax_dir.read_manifest(entry)
    times: dict[str, list[float]] = {"verified load": [], "unverified load": [], "verify alone": []}
    for _ in range(args.repeats):
        times["verified load"].append(_seconds(lambda: ji.load("smollm2", progress=False).params))
        times["unverified load"].append(_seconds(lambda: ji.load("smollm2", progress=False, verify=False).params))
        times["verify alone"].append(_seconds(lambda: orbax_dir.verify(entry, manifest)))
    medians = {name: statistics.median(values) for name, values in times.items()}
    size = sum(d["bytes"] for d in manifest["digests"].values())
    print(f"SmolLM2 cache entry: {len(manifest['digests'])} files, {size / 2**20:.0f} MiB; medians of {args.repeats}:")
    for name, value in medians.items():
        print(f"  {name:16s} {value:.3f} s")
    print(f"verify is {100 * medians['verify alone'] / medians['verified load']:.1f}% of a verified load (target < 10%)")


if __name__ == "__main__":
    main()
