"""Hostile checkpoints: no code from a checkpoint ever runs, and malformed files fail early and clearly.

Every malformed file must raise a `CheckpointError` naming the file and the field, before
any allocation the file's own size would not justify (checked with tracemalloc against
headers that claim terabytes).
"""

from __future__ import annotations

import ast
import json
import os
import pathlib
import struct
import tracemalloc

import pytest
import safetensors.numpy

import jaxinterp as ji
from jaxinterp.converters.gguf_file import GGUFFile
from jaxinterp.converters.safetensors_file import SafetensorsFile
from tests.gguf_raw import ARRAY, F32, FLOAT32, I32, INT32, LLAMA, Q8_0, Q8_1, STRING, TENSORS, UINT32, pair, write
from tests.isolated import run_python

PACKAGE = pathlib.Path(ji.__file__).parent
SOURCES = [PACKAGE, PACKAGE.parent / "converters", PACKAGE.parent / "models"]


# -- pickles ---------------------------------------------------------------------------


class WritesFile:
    """Unpickling this runs `exec`, which writes a marker file: what a hostile `.bin` does."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').write('code ran')",)


def _hostile_bin(tmp_path, name: str, payload) -> tuple[pathlib.Path, pathlib.Path]:
    """A checkpoint directory (config.json + `name`) whose pickle holds `payload`; returns (folder, file)."""
    import torch

    folder = tmp_path / "hostile"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "llama", "vocab_size": 8, "hidden_size": 4}))
    torch.save(payload, folder / name)
    return folder, folder / name


@pytest.mark.parametrize("name, via", [("pytorch_model.bin", "folder"), ("pytorch_model.bin", "file"), ("weights.pt", "file")])
def test_a_pickle_that_would_write_a_file_is_refused_without_running(tmp_path, monkeypatch, name, via):
    pytest.importorskip("torch")
    marker = tmp_path / "written-by-the-checkpoint"
    folder, path = _hostile_bin(tmp_path, name, {"model.embed_tokens.weight": WritesFile(str(marker))})
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")  # must not weaken an explicit weights_only=True
    with pytest.raises(ji.CheckpointError) as error:
        ji.load(str(folder if via == "folder" else path), progress=False)
    assert not marker.exists()
    message = str(error.value)
    assert str(path) in message
    assert "refused" in message and "safetensors" in message and "weights_only" in message


def test_a_pickled_module_is_refused(tmp_path, tiny_checkpoint):
    _, model = tiny_checkpoint("smol")
    folder, path = _hostile_bin(tmp_path, "pytorch_model.bin", model)
    with pytest.raises(ji.CheckpointError, match="refused"):
        ji.load(str(folder), progress=False)


@pytest.mark.parametrize("payload, found", [
    ([1, 2, 3], "expected a dict of tensors, found list"),
    ({"model": {"w": 1}}, "entry 'model': expected a dense tensor"),
    ({7: 1.0}, "entry 7: expected a dense tensor"),
])
def test_a_bin_that_is_not_a_flat_dict_of_tensors_is_named(tmp_path, payload, found):
    pytest.importorskip("torch")
    folder, path = _hostile_bin(tmp_path, "pytorch_model.bin", payload)
    with pytest.raises(ji.CheckpointError, match=found) as error:
        ji.load(str(folder), progress=False)
    assert str(path) in str(error.value)


# -- code shipped beside the weights ---------------------------------------------------------------

EVIL_TOKENIZER = """
open({marker!r}, "w").write("code ran")
from transformers import PreTrainedTokenizer
class EvilTokenizer(PreTrainedTokenizer):
    pass
"""


def _plant_tokenizer_code(folder: pathlib.Path, marker: pathlib.Path) -> None:
    """Makes `folder`'s tokenizer one that transformers would build by importing `evil.py` from it."""
    folder.mkdir(exist_ok=True)
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"auto_map": {"AutoTokenizer": ["evil.EvilTokenizer", None]}, "tokenizer_class": "EvilTokenizer"}))
    (folder / "evil.py").write_text(EVIL_TOKENIZER.format(marker=str(marker)))


def test_tokenizer_code_in_a_checkpoint_never_runs_even_when_a_user_says_yes(tmp_path, tiny_checkpoint):
    """transformers asks on a terminal whether to run a tokenizer's `auto_map` code unless
    trust_remote_code is given; we always pass False, so answering "y" changes nothing."""
    folder, _ = tiny_checkpoint("smol")
    checkpoint, converted, marker = tmp_path / "checkpoint", tmp_path / "converted", tmp_path / "ran"
    checkpoint.mkdir()
    for name in ("config.json", "model.safetensors"):
        (checkpoint / name).write_bytes((pathlib.Path(folder) / name).read_bytes())
    ji.convert(folder, str(converted), progress=False)
    _plant_tokenizer_code(checkpoint, marker)
    _plant_tokenizer_code(converted / "tokenizer", marker)
    run_python(f"""
        import jaxinterp as ji
        for source in ({str(checkpoint)!r}, {str(converted)!r}):
            try:
                ji.load(source, progress=False).tokenizer
            except ji.CheckpointError as e:
                assert "never runs code" in str(e), e
            else:
                raise AssertionError(source + " loaded a tokenizer that needs its own code")
    """, input="y\ny\n")
    assert not marker.exists()


def _calls(tree: ast.AST):
    return (node for node in ast.walk(tree) if isinstance(node, ast.Call))


def test_trust_remote_code_is_never_set_in_the_package():
    """Every `from_pretrained` call passes trust_remote_code=False, and nothing passes another value."""
    files = [path for folder in SOURCES for path in folder.rglob("*.py")]
    assert len(files) > 20
    for path in files:
        source = path.read_text()
        assert "trust_remote_code=True" not in source.replace(" ", ""), path
        for call in _calls(ast.parse(source)):
            keywords = {k.arg: k.value for k in call.keywords}
            if "trust_remote_code" in keywords:
                value = keywords["trust_remote_code"]
                assert isinstance(value, ast.Constant) and value.value is False, f"{path}:{call.lineno}"
            if getattr(call.func, "attr", None) == "from_pretrained":
                assert "trust_remote_code" in keywords, f"{path}:{call.lineno}: from_pretrained without trust_remote_code=False"


def test_pickles_load_only_through_the_weights_only_path():
    """The package's only unpickling is torch.load(..., weights_only=True)."""
    for path in (p for folder in SOURCES for p in folder.rglob("*.py")):
        tree = ast.parse(path.read_text())
        for call in _calls(tree):
            name = ast.unparse(call.func)
            assert name not in ("pickle.load", "pickle.loads", "np.load", "numpy.load", "joblib.load"), f"{path}:{call.lineno}"
            if name == "torch.load":
                keywords = {k.arg: k.value for k in call.keywords}
                assert ast.literal_eval(keywords["weights_only"]) is True, f"{path}:{call.lineno}"


def _refused_cheaply(reader, path: pathlib.Path, field: str) -> None:
    """`reader(path)` raises a CheckpointError naming the file and `field`, printable, having
    allocated under 8 MiB (the headers claim far more)."""
    tracemalloc.start()
    try:
        with pytest.raises(ji.CheckpointError) as error:
            reader(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert str(path) in str(error.value) and field in str(error.value)
    assert str(error.value).isprintable()
    assert peak < 8 * 2**20, f"{peak} bytes allocated to reject a {path.stat().st_size}-byte file"


# -- malformed safetensors -------------------------------------------------------------------------


def _safetensors(path: pathlib.Path, header: object, data: bytes = b"", *, length: int | None = None,
                 raw: bytes | None = None) -> pathlib.Path:
    """A safetensors file with this header (JSON-encoded unless `raw`), header length and data."""
    encoded = raw if raw is not None else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(encoded) if length is None else length) + encoded + data)
    return path


F32_8 = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}
MALFORMED_SAFETENSORS = {
    "header length beyond the file": (dict(header={}, length=10**6), "header length"),
    "header length of 2**63": (dict(header={}, length=2**63), "header length"),
    "offsets beyond the file": (dict(header={"w": {**F32_8, "data_offsets": [0, 8]}}, data=b"\0" * 4), "tensor w"),
    "absurd offsets": (dict(header={"w": {"dtype": "F32", "shape": [2**30, 2**30], "data_offsets": [0, 2**62]}},
                            data=b"\0" * 8), "tensor w"),
    "begin after end": (dict(header={"w": {**F32_8, "data_offsets": [8, 0]}}, data=b"\0" * 8), "tensor w"),
    "size not shape x itemsize": (dict(header={"w": {**F32_8, "shape": [3]}}, data=b"\0" * 8), "tensor w"),
    "overlapping ranges": (dict(header={"a": F32_8, "b": {**F32_8, "data_offsets": [4, 12]}}, data=b"\0" * 12),
                           "overlaps"),
    "gap between ranges": (dict(header={"a": F32_8, "b": {**F32_8, "data_offsets": [12, 20]}}, data=b"\0" * 20),
                           "leaves a gap"),
    "bytes after the last tensor": (dict(header={"w": F32_8}, data=b"\0" * 12), "data: expected 8 bytes"),
    "dtype a list": (dict(header={"w": {**F32_8, "dtype": ["F32"]}}, data=b"\0" * 8), "dtype"),
    "unknown dtype": (dict(header={"w": {**F32_8, "dtype": "F8_E9"}}, data=b"\0" * 8), "dtype"),
    "negative dimension": (dict(header={"w": {**F32_8, "shape": [-2]}}, data=b"\0" * 8), "shape"),
    "boolean dimension": (dict(header={"w": {**F32_8, "shape": [True, 2]}}, data=b"\0" * 8), "shape"),
    "header not an object": (dict(header=[1, 2]), "header"),
    "header not JSON": (dict(header=None, raw=b"\xff\xfe{"), "header"),
    "deeply nested header": (dict(header=None, raw=b"[" * 100_000 + b"]" * 100_000), "header"),
    "5000-digit number": (dict(header=None, raw=b'{"w": ' + b"9" * 5000 + b"}"), "header"),
    "terminal escape in a name": (dict(header={"\x1b[2Jw": F32_8}, data=b"\0" * 8), "tensor name: expected printable"),
    "repeated tensor name": (dict(header=None, raw=b'{"w": %s, "w": %s}' % ((json.dumps(F32_8).encode(),) * 2),
                                  data=b"\0" * 8), "tensor w: appears twice"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED_SAFETENSORS))
def test_malformed_safetensors_are_rejected_naming_file_and_field_before_allocating(tmp_path, case):
    kwargs, field = MALFORMED_SAFETENSORS[case]
    path = _safetensors(tmp_path / "model.safetensors", **kwargs)
    _refused_cheaply(SafetensorsFile, path, field)


def test_malformed_safetensors_fail_through_load_and_leave_nothing(tmp_path, tiny_checkpoint):
    folder, _ = tiny_checkpoint("smol")
    target = tmp_path / "checkpoint"
    target.mkdir()
    (target / "config.json").write_bytes((pathlib.Path(folder) / "config.json").read_bytes())
    tensors = safetensors.numpy.load_file(os.path.join(folder, "model.safetensors"))
    safetensors.numpy.save_file(tensors, target / "model.safetensors")
    data = bytearray((target / "model.safetensors").read_bytes())
    data[:8] = struct.pack("<Q", len(data))  # header length beyond the file
    (target / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(ji.CheckpointError, match=r"model\.safetensors: header length"):
        ji.convert(str(target), str(tmp_path / "out"), progress=False)
    assert not (tmp_path / "out").exists()


# -- malformed GGUF --------------------------------------------------------------------------------

def test_the_hand_packed_gguf_is_valid(tmp_path):
    path = write(tmp_path / "ok.gguf", pairs=[*LLAMA, ("tokenizer.ggml.tokens", ARRAY, (STRING, ["a", "b"]))])
    gguf = GGUFFile(path)
    assert gguf.metadata["tokenizer.ggml.tokens"] == ["a", "b"]
    assert gguf.shape("model.embed_tokens.weight") == (8, 4)
    assert gguf.hf_config()["num_hidden_layers"] == 1


BIG = 2**62
MALFORMED_GGUF = {
    "bad magic": (dict(magic=b"GGML"), "magic"),
    "version 1": (dict(version=1), "version"),
    "big-endian version": (dict(version=3 << 24), "version"),
    "absurd tensor count": (dict(counts=(BIG, len(LLAMA))), "metadata_kv_count"),
    "absurd pair count": (dict(counts=(2, BIG)), "metadata_kv_count"),
    "string longer than the file": (dict(pairs=[("general.architecture", STRING, struct.pack("<Q", BIG))]),
                                    "metadata field general.architecture"),
    "array longer than the file": (dict(pairs=[*LLAMA, ("x", ARRAY, struct.pack("<IQ", UINT32, BIG))]),
                                   "metadata field x"),
    "string array longer than the file": (dict(pairs=[*LLAMA, ("x", ARRAY, struct.pack("<IQ", STRING, BIG))]),
                                          "metadata field x"),
    "nested arrays": (dict(pairs=[*LLAMA, ("x", ARRAY, struct.pack("<IQ", ARRAY, 1) + struct.pack("<IQ", UINT32, 0))]),
                      "arrays do not nest"),
    "unknown value type": (dict(pairs=[*LLAMA, ("x", 13, b"")]), "metadata field x: value type"),
    "repeated key": (dict(pairs=[*LLAMA, LLAMA[1]]), "llama.block_count: appears twice"),
    "terminal escape in a key": (dict(raw_pairs=pair("\x1b]8;;evil\x07", UINT32, 0)),
                                 "expected printable text"),
    "undecodable key": (dict(raw_pairs=pair(b"\xff\xfe", UINT32, 0)), "UTF-8"),
    "unknown quantisation type": (dict(tensors=[("token_embd.weight", (4, 8), 99, 0)]),
                                  "tensor token_embd.weight: type"),
    "type the gguf package cannot dequantise": (dict(tensors=[("token_embd.weight", (32, 8), Q8_1, 0)]), "Q8_1"),
    "integer tensor": (dict(tensors=[("token_embd.weight", (4, 8), I32, 0)]), "I32"),
    "five dimensions": (dict(tensors=[("token_embd.weight", (1, 1, 1, 1, 1), F32, 0)]), "n_dims"),
    "truncated tensor data": (dict(data=b"\0" * 150), "tensor blk.0.attn_q.weight: data"),
    "terabyte tensor": (dict(tensors=[("token_embd.weight", (2**20, 2**20), F32, 0)]), "beyond the end"),
    "misaligned offset": (dict(tensors=[("token_embd.weight", (4, 8), F32, 4)]), "offset"),
    "overlapping tensors": (dict(tensors=[TENSORS[0], ("blk.0.attn_q.weight", (4, 4), F32, 96)]), "overlaps"),
    "block not a multiple of the quantisation block": (dict(tensors=[("token_embd.weight", (16, 8), Q8_0, 0)]),
                                                       "multiple of Q8_0's block"),
    "repeated tensor": (dict(tensors=[TENSORS[0], TENSORS[0]]), "appears twice"),
    "bad alignment": (dict(pairs=[*LLAMA, ("general.alignment", UINT32, 3)]), "general.alignment"),
    "architecture a list": (dict(pairs=[("general.architecture", ARRAY, (UINT32, [])), *LLAMA[1:]]),
                            "general.architecture"),
    "unknown architecture": (dict(pairs=[("general.architecture", STRING, "bert"), *LLAMA[1:]]),
                             "general.architecture"),
    "foreign tensor name": (dict(tensors=[("blk.0.ssm_conv.weight", (4, 8), F32, 0)]), "blk.0.ssm_conv.weight"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED_GGUF))
def test_malformed_gguf_is_rejected_naming_file_and_field_before_allocating(tmp_path, case):
    kwargs, field = MALFORMED_GGUF[case]
    path = write(tmp_path / "model.gguf", **kwargs)
    _refused_cheaply(GGUFFile, path, field)


def _with(key: str, kind: int, value) -> list:
    return [entry for entry in LLAMA if entry[0] != key] + [(key, kind, value)]


METADATA_THAT_DISAGREES = {
    "more blocks than the file holds": (_with("llama.block_count", UINT32, 2**31), "llama.block_count"),
    "no blocks": (_with("llama.block_count", UINT32, 0), "llama.block_count"),
    "width beyond every tensor": (_with("llama.embedding_length", UINT32, 2**30), "llama.embedding_length"),
    "head count as text": (_with("llama.attention.head_count", STRING, "two"), "llama.attention.head_count"),
    "missing head count": ([p for p in LLAMA if p[0] != "llama.attention.head_count"], "llama.attention.head_count"),
    "odd head size": (_with("llama.attention.key_length", UINT32, 3), "llama.attention.key_length"),
    "infinite rope base": (_with("llama.rope.freq_base", FLOAT32, float("inf")), "llama.rope.freq_base"),
    "negative token id": (_with("tokenizer.ggml.eos_token_id", INT32, -1), "tokenizer.ggml.eos_token_id"),
    "unknown rope scaling": (_with("llama.rope.scaling.type", STRING, "yarn"), "llama.rope.scaling.type"),
}


@pytest.mark.parametrize("case", sorted(METADATA_THAT_DISAGREES))
def test_gguf_metadata_that_disagrees_with_the_tensors_is_named(tmp_path, case):
    pairs, field = METADATA_THAT_DISAGREES[case]
    path = write(tmp_path / "model.gguf", pairs=pairs)
    with pytest.raises(ji.CheckpointError) as error:
        GGUFFile(path).hf_config()
    assert str(path) in str(error.value) and f"metadata field {field}" in str(error.value)


def test_truncated_gguf_fails_through_load(tmp_path, tiny_checkpoint):
    from tests import gguf_tiny

    _, model = tiny_checkpoint("smol")
    path = tmp_path / "model.gguf"
    gguf_tiny.write(model, str(path), quantize=True)
    path.write_bytes(path.read_bytes()[:-50])
    with pytest.raises(ji.CheckpointError, match=r"model\.gguf: tensor .*: data .* beyond the end"):
        ji.load(str(path), progress=False)


def test_empty_and_tiny_files_are_named(tmp_path):
    for size in (0, 3, 7):
        for name, reader in (("model.gguf", GGUFFile), ("model.safetensors", SafetensorsFile)):
            path = tmp_path / f"{size}-{name}"
            path.write_bytes(b"G" * size)
            with pytest.raises(ji.CheckpointError, match=str(path)):
                reader(path)


@pytest.mark.parametrize("manifest, field", [
    ("{not json", "unreadable"),
    ("[1, 2]", "expected a JSON object"),
    ('{"format": 3}', "format"),
    ('{"format": 1, "config": {}}', "family"),
    ('{"format": 1, "family": "llama", "config": []}', "config"),
    ('{"format": 1, "family": "llama", "config": {}, "dtype": "object"}', "dtype"),
])
def test_a_converted_directory_with_a_broken_manifest_is_named(tmp_path, manifest, field):
    (tmp_path / "jaxinterp.json").write_text(manifest)
    with pytest.raises(ji.CheckpointError, match=field) as error:
        ji.load(str(tmp_path))
    assert str(tmp_path / "jaxinterp.json") in str(error.value)


def test_gguf_rope_factors_are_refused_by_name(tmp_path):
    path = write(tmp_path / "model.gguf", tensors=[*TENSORS, ("rope_freqs.weight", (8,), F32, 192)], data=b"\0" * 224)
    with pytest.raises(ji.CheckpointError, match="rope_freqs.weight: per-frequency rope factors are not supported"):
        GGUFFile(path)


def test_absurd_config_sizes_are_refused_before_building_shapes(tmp_path):
    config = {"model_type": "llama", "vocab_size": 32, "hidden_size": 16, "intermediate_size": 32,
              "num_hidden_layers": 10**9, "num_attention_heads": 2}
    (tmp_path / "config.json").write_text(json.dumps(config))
    (tmp_path / "model.safetensors").write_bytes(b"\x02\x00\x00\x00\x00\x00\x00\x00{}")
    with pytest.raises(ji.ConfigError, match=r"num_layers: expected an integer in 1\.\.1024, found 1000000000"):
        ji.load(str(tmp_path), progress=False)
