"""Fuzzing the loaders: random byte mutations of a small safetensors and GGUF checkpoint.

Every mutated file must either load as a model with the original's parameter tree, shapes
and dtypes, or raise a `JaxinterpError`; never another exception, a crash or a hang. Loads
run in a child process (`tests.isolated.LoaderWorker`) with a timeout, so a segfault or a
hang fails the test instead of killing the runner. When a byte is overwritten in place and
the config is unchanged, at most one parameter per changed byte may differ.

The default run is fixed (derandomised, a bounded number of examples). A soak run explores
freely with many more:

    JAXINTERP_SOAK=1 pytest tests/test_fuzz_files.py      # replay a failure with --hypothesis-seed=N
"""

from __future__ import annotations

import os
import random
import shutil

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jaxinterp.converters.gguf_header import read_header
from tests.isolated import LoaderWorker

SOAK = bool(os.environ.get("JAXINTERP_SOAK"))
FUZZ = settings(max_examples=5000 if SOAK else 100, derandomize=not SOAK, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def _tiny_llama():
    """A one-block Llama small enough that one load takes a fraction of a second."""
    import torch
    import transformers

    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                      tie_word_embeddings=False)
    return transformers.LlamaForCausalLM(config).eval()


@pytest.fixture(scope="module")
def originals(tmp_path_factory):
    """{'safetensors': HF directory, 'gguf': F32 file, 'gguf_q8': Q8_0 file} of one tiny model."""
    pytest.importorskip("torch")
    from tests import gguf_tiny

    model, folder = _tiny_llama(), tmp_path_factory.mktemp("originals")
    model.save_pretrained(folder / "hf")
    gguf_tiny.write(model, str(folder / "f32.gguf"))
    gguf_tiny.write(model, str(folder / "q8.gguf"), quantize=True)
    return {"safetensors": folder / "hf", "gguf": folder / "f32.gguf", "gguf_q8": folder / "q8.gguf"}


@pytest.fixture(scope="module")
def worker():
    worker = LoaderWorker()
    yield worker
    worker.close()


def _header_end(kind: str, data: bytes) -> int:
    """Bytes before the tensor data: where most of a format's checks live."""
    if kind == "safetensors":
        return 8 + int.from_bytes(data[:8], "little")
    tensors = read_header("original", np.frombuffer(data, np.uint8)).tensors.values()
    return min(tensor.start for tensor in tensors)


def mutations(seed: int, size: int, header_end: int) -> list[tuple]:
    """One to three edits, each ('set', at, byte), ('truncate', at), ('insert', at, bytes) or
    ('delete', at, count), drawn uniformly from `seed` (hypothesis's own draws crowd at byte 0):
    in-place bytes are the most common edit and half land in the header."""
    rng = random.Random(seed)
    edits = []
    for _ in range(rng.randint(1, 3)):
        at = rng.randrange(header_end if rng.random() < 0.5 else size)
        op = rng.choices(["set", "json", "truncate", "insert", "delete"], weights=[6, 2, 1, 1, 1])[0]
        if op == "set":
            edits.append(("set", at, rng.randrange(256)))
        elif op == "json":  # damage shaped like the JSON / integers a header holds
            edits.append(("set", at, rng.choice(b'0123456789[]{},:"')))
        elif op == "truncate":
            edits.append(("truncate", at))
        elif op == "insert":
            edits.append(("insert", at, rng.randbytes(rng.randint(1, 8))))
        else:
            edits.append(("delete", at, rng.randint(1, 64)))
    return edits


def _mutate(data: bytes, edits: list[tuple]) -> bytes:
    out = bytearray(data)
    for op, at, *arg in edits:
        at %= max(len(out), 1)
        if op == "set":
            out[at] = arg[0]
        elif op == "truncate":
            del out[at:]
        elif op == "insert":
            out[at:at] = arg[0]
        else:
            del out[at: at + arg[0]]
    return bytes(out)


def _check(worker: LoaderWorker, original: dict, path: str, edits: list[tuple]) -> None:
    result = worker.load(path)
    assert result["outcome"] in ("loaded", "refused"), f"{edits}: {result['outcome']}\n{result.get('message')}"
    if result["outcome"] == "refused":
        assert os.path.basename(path) in result["message"] or os.path.dirname(path) in result["message"], result
        return
    assert {k: v[:2] for k, v in result["params"].items()} == {k: v[:2] for k, v in original["params"].items()}
    if result["config"] == original["config"] and all(op == "set" for op, *_ in edits):
        changed = [k for k in original["params"] if result["params"][k][2] != original["params"][k][2]]
        assert len(changed) <= len(edits), f"{edits} changed {changed}"


@pytest.mark.parametrize("kind", ["safetensors", "gguf", "gguf_q8"])
def test_mutated_files_load_the_same_model_or_raise_a_jaxinterp_error(kind, originals, worker, tmp_path):
    source = originals[kind]
    target = tmp_path / "mutated"
    if kind == "safetensors":
        shutil.copytree(source, target)
        path, victim = str(target), target / "model.safetensors"
    else:
        target.mkdir()
        path = str(target / "model.gguf")
        victim = target / "model.gguf"
        shutil.copy(source, victim)
    data = victim.read_bytes()
    original = worker.load(path)
    assert original["outcome"] == "loaded", original

    header_end = _header_end(kind, data)

    @FUZZ
    @given(seed=st.integers(0, 2**63))
    def fuzz(seed):
        edits = mutations(seed, len(data), header_end)
        victim.write_bytes(_mutate(data, edits))
        _check(worker, original, path, edits)

    fuzz()


def test_the_harness_reports_a_segfault_and_a_hang():
    """A child that segfaults or stops answering is reported (and replaced), not suffered."""
    prelude = "import ctypes, time\nji.load = lambda path, **_: ctypes.string_at(0) if path == 'crash' else time.sleep(600)"
    probe = LoaderWorker(timeout=3, prelude=prelude)
    try:
        assert probe.load("crash")["outcome"] == "died"
        assert probe.load("hang")["outcome"] == "hung"
    finally:
        probe.close()
