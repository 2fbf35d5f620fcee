"""Fuzzing the loaders: random byte mutations of a small safetensors and GGUF checkpoint, and
well-formed containers (a JSON header, GGUF metadata and tensor layouts) holding random values.

Every mutated file must either load as a model with the original's parameter tree, shapes
and dtypes, or raise a `JaxinterpError`; never another exception, a crash or a hang. Loads
run in a child process (`tests.isolated.LoaderWorker`) with a timeout, so a segfault or a
hang fails the test instead of killing the runner. When a byte is overwritten in place and
the config is unchanged, at most one parameter per changed byte may differ. Well-formed
containers with random values are opened in-process (their readers are pure Python and
numpy): each opens, or raises a `CheckpointError` naming the file.

The default run is fixed (derandomised, a bounded number of examples). A soak run explores
freely with many more:

    JAXINTERP_SOAK=1 pytest tests/test_fuzz_files.py      # replay a failure with --hypothesis-seed=N
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import jaxinterp as ji
from jaxinterp.converters.gguf_file import GGUFFile
from jaxinterp.converters.gguf_header import read_header
from jaxinterp.converters.safetensors_file import SafetensorsFile
from tests import gguf_raw
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


# -- structure-aware: well-formed containers holding random values (in-process: pure Python and numpy) --

JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=4),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3),
                    max_leaves=6)
ITEMSIZES = {"F32": 4, "F16": 2, "BF16": 2, "I64": 8, "U8": 1, "BOOL": 1}


@st.composite
def headers(draw) -> tuple[dict, int]:
    """A valid header of one to three small tensors (and its data size), then up to three of its
    fields (a dtype, a shape, offsets, a name, a whole entry, the data size) replaced at random."""
    header, size = {}, 0
    for i in range(draw(st.integers(1, 3))):
        dtype, shape = draw(st.sampled_from(sorted(ITEMSIZES))), draw(st.lists(st.integers(0, 3), max_size=2))
        end = size + math.prod(shape) * ITEMSIZES[dtype]
        header[f"t{i}"], size = {"dtype": dtype, "shape": shape, "data_offsets": [size, end]}, end
    anything = st.one_of(JSON, st.integers(-2, 40), st.lists(st.integers(-2, 40), max_size=3))
    for _ in range(draw(st.integers(0, 3))):
        name, field = draw(st.sampled_from(sorted(header))), draw(st.sampled_from(["dtype", "shape", "data_offsets",
                                                                                   "name", "entry", "size"]))
        if field == "name":
            header[draw(st.text(max_size=3))] = header.pop(name)
        elif field == "entry":
            header[name] = draw(anything)
        elif field == "size":
            size = max(size + draw(st.integers(-3, 3)), 0)
        elif isinstance(header[name], dict):
            header[name][field] = draw(anything)
    return header, size


@settings(FUZZ, max_examples=5000 if SOAK else 300)
@given(header_and_size=headers())
def test_random_safetensors_headers_open_or_raise_a_checkpoint_error(tmp_path, header_and_size):
    header, size = header_and_size
    path = tmp_path / "model.safetensors"
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + bytes(size))
    try:
        tensors = SafetensorsFile(path)
    except ji.CheckpointError as e:
        assert str(path) in str(e)
        return
    for name in tensors.names:
        assert tensors.get(name).shape == tensors.shape(name)


GGUF_VALUES = st.one_of(
    st.tuples(st.just(gguf_raw.UINT32), st.integers(0, 2**32 - 1)),
    st.tuples(st.just(gguf_raw.INT32), st.integers(-2**31, 2**31 - 1)),
    st.tuples(st.just(gguf_raw.FLOAT32), st.floats(width=32)),
    st.tuples(st.just(gguf_raw.BOOL), st.booleans()),
    st.tuples(st.just(gguf_raw.STRING), st.sampled_from(["llama", "qwen2", "linear", "none", "yarn", ""])),
    st.tuples(st.just(gguf_raw.ARRAY), st.tuples(st.just(gguf_raw.UINT32), st.lists(st.integers(0, 9), max_size=2))),
    st.tuples(st.just(gguf_raw.ARRAY), st.tuples(st.just(gguf_raw.STRING), st.lists(st.text(max_size=3), max_size=2))),
)
GGUF_KEYS = [key for key, _, _ in gguf_raw.LLAMA] + [
    f"llama.{key}" for key in ("attention.head_count_kv", "attention.key_length", "vocab_size", "context_length",
                               "rope.freq_base", "attention.layer_norm_rms_epsilon", "rope.scaling.type",
                               "rope.scaling.factor")
] + ["tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id", "general.alignment"]
GGUF_TENSORS = st.lists(st.tuples(
    st.sampled_from(["token_embd.weight", "blk.0.attn_q.weight", "blk.0.attn_k.weight", "blk.1.ffn_up.weight",
                     "output.weight", "output_norm.weight"]),
    st.lists(st.sampled_from([0, 1, 2, 4, 8, 32]), min_size=1, max_size=5).map(tuple),
    st.sampled_from([gguf_raw.F32, 1, gguf_raw.Q8_0, gguf_raw.Q8_1, gguf_raw.I32, 99]),
    st.integers(0, 8).map(lambda k: 32 * k),
), max_size=4)


@settings(FUZZ, max_examples=5000 if SOAK else 300)
@given(overrides=st.dictionaries(st.sampled_from(GGUF_KEYS), GGUF_VALUES, max_size=5), tensors=GGUF_TENSORS)
def test_random_gguf_metadata_and_layouts_open_or_raise_a_checkpoint_error(tmp_path, overrides, tensors):
    pairs = {key: (kind, value) for key, kind, value in gguf_raw.LLAMA} | overrides
    path = gguf_raw.write(tmp_path / "model.gguf", [(key, *item) for key, item in pairs.items()], tensors,
                          data=b"\x01" * 320)
    try:
        gguf = GGUFFile(path)
        gguf.hf_config()
    except ji.CheckpointError as e:
        assert str(path) in str(e)
        return
    for name in gguf.names:
        assert gguf.get(name).shape == gguf.shape(name)
