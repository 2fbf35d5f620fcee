"""`benchmarks/device.py` starts and completes on CPU (tiny shapes), so the accelerator run cannot fail on a typo."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytest.importorskip("torch")


@pytest.mark.slow
def test_device_benchmark_runs_on_cpu(tmp_path):
    out = tmp_path / "device.json"
    subprocess.run([sys.executable, "-m", "benchmarks.device", "--size", "cpu", "--repeats", "1", "--out", str(out)],
                   check=True, timeout=900, capture_output=True)
    results = json.loads(out.read_text())
    for section in ("prefill", "generate", "grad", "sweep"):
        assert "error" not in results[section], results[section].get("traceback")
    prefill = results["prefill"]
    # same weights in bfloat16 on both sides: logits agree to bf16 rounding
    assert prefill["max_abs_logit_difference_64_tokens"] < 0.05 * prefill["logit_scale"]
    assert results["generate"]["batch_4"]["jaxinterp_tokens_per_s"] > 0
