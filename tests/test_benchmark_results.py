"""Benchmarks record where they ran next to what they measured."""

import json

from benchmarks.common import machine, write_results


def test_write_results_records_the_machine_and_creates_the_folder(tmp_path):
    path = tmp_path / "nested" / "folder" / "results.json"
    write_results(str(path), {"speedup": 1.5, "rows": [1, 2]})
    written = json.loads(path.read_text())
    assert written["speedup"] == 1.5 and written["rows"] == [1, 2]
    assert written["machine"] == json.loads(json.dumps(machine()))
    assert written["machine"]["cpus"] >= 1 and written["machine"]["jax"]
    assert set(written["machine"]["cpu_features"]) <= {"avx2", "avx512f", "avx512_bf16", "amx_bf16"}
