"""Terminal control characters from a checkpoint never reach the terminal.

Every message that quotes text from a file or from a third-party exception goes through the
one escaping helper, `jaxinterp.errors.shown`. Two checks hold that promise: a reading of
the source (every `raise` inside an `except ... as e:` quotes `e` only through `shown`), and
probes that drive hostile bytes (an erase-screen escape, a bell, a carriage return, a
newline) through every error path a file can reach, asserting one printable line.
"""

from __future__ import annotations

import ast
import json
import pathlib
import shutil

import pytest

import jaxinterp as ji
from jaxinterp import errors
from tests import gguf_raw
from tests.hostile import one_clean_line, within

PACKAGE = pathlib.Path(ji.__file__).parent
SOURCES = [PACKAGE, PACKAGE.parent / "converters", PACKAGE.parent / "models"]
HOSTILE = "\x1b[2J\x07\r\nowned"
ESCAPERS = {"shown", "_cause"}  # _cause (converters/tokenizers.py) passes its text through shown
OWN_ERRORS = {name for name in dir(errors) if name.endswith("Error")}  # their text was escaped where raised


def _unescaped_uses(expression: ast.AST, name: str) -> list[ast.AST]:
    """Places in `expression` that read the exception `name` outside `shown(...)` (its type name is safe)."""
    if isinstance(expression, ast.Call) and getattr(expression.func, "id", None) in ESCAPERS:
        return []
    if isinstance(expression, ast.Attribute) and expression.attr == "__name__":
        return []
    if isinstance(expression, ast.Name):
        return [expression] if expression.id == name else []
    return [use for child in ast.iter_child_nodes(expression) for use in _unescaped_uses(child, name)]


def _caught(handler: ast.ExceptHandler) -> set[str]:
    kinds = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
    return {ast.unparse(kind).rsplit(".", 1)[-1] for kind in kinds}


def _violations(tree: ast.AST, path: pathlib.Path) -> list[str]:
    """`raise` statements quoting a caught third-party exception unescaped; exceptions of jaxinterp and
    of the module itself (its own private classes) carry text that was escaped where they were raised."""
    own = OWN_ERRORS | {node.name for node in tree.body if isinstance(node, ast.ClassDef)}
    found = []
    for handler in ast.walk(tree):
        if not (isinstance(handler, ast.ExceptHandler) and handler.name) or _caught(handler) <= own:
            continue
        for statement in (node for body in handler.body for node in ast.walk(body)):
            if not isinstance(statement, ast.Raise) or statement.exc is None:
                continue
            for text in (node for node in ast.walk(statement.exc) if isinstance(node, ast.JoinedStr)):
                for part in (p for p in text.values if isinstance(p, ast.FormattedValue)):
                    found += [f"{path}:{use.lineno}: {ast.unparse(part.value)}"
                              for use in _unescaped_uses(part.value, handler.name)]
    return found


def test_every_wrapped_exception_is_quoted_through_shown():
    files = [path for folder in SOURCES for path in sorted(folder.rglob("*.py"))]
    assert len(files) > 50, "the source reading found too few files to mean anything"
    found = [v for path in files for v in _violations(ast.parse(path.read_text()), path.relative_to(PACKAGE.parent))]
    assert not found, "exception text quoted without jaxinterp.errors.shown:\n" + "\n".join(found)


def test_the_reading_catches_an_unescaped_quote():
    planted = ast.parse("try:\n    pass\nexcept OSError as e:\n    raise ValueError(f'{path}: {e} and {type(e).__name__}')")
    assert [v.split(": ", 1)[1] for v in _violations(planted, pathlib.Path("x.py"))] == ["e"]
    escaped = ast.parse("try:\n    pass\nexcept OSError as e:\n    raise ValueError(f'{shown(str(e))}')")
    own = ast.parse("try:\n    pass\nexcept ConfigError as e:\n    raise ConfigError(f'{path}: {e}')")
    assert not _violations(escaped, pathlib.Path("x.py")) and not _violations(own, pathlib.Path("x.py"))


# -- hostile bytes through the error paths ------------------------------------------------------


def _clean_refusal(call, error=ji.JaxinterpError) -> str:
    with within(30), pytest.raises(error) as raised:
        call()
    message = str(raised.value)
    one_clean_line(message)
    assert "\x1b" not in message and "\x07" not in message
    return message


@pytest.fixture
def checkpoint(tmp_path, tiny_checkpoint):
    folder = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint("smol")[0], folder)
    return folder


def _edit_config(folder: pathlib.Path, **changes) -> None:
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, **changes}))


@pytest.mark.parametrize("changes", [
    {"model_type": HOSTILE},
    {"rope_scaling": {"rope_type": HOSTILE, "factor": 2.0}, "rope_parameters": {"rope_type": HOSTILE}},
    {"hidden_act": HOSTILE},
    {"num_hidden_layers": HOSTILE},
])
def test_hostile_config_values_are_escaped(checkpoint, changes):
    _edit_config(checkpoint, **changes)
    _clean_refusal(lambda: ji.load(str(checkpoint), progress=False))


def test_a_hostile_shard_name_in_an_index_is_escaped(checkpoint):
    (checkpoint / "model.safetensors").rename(checkpoint / "model-00001-of-00001.safetensors")
    (checkpoint / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {"model.embed_tokens.weight": f"shard{HOSTILE}.safetensors"}}))
    _clean_refusal(lambda: ji.load(str(checkpoint), progress=False))


def test_undecodable_json_is_escaped(checkpoint):
    (checkpoint / "config.json").write_bytes(b'{"model_type": "\x1b[2J' + b"\xff\xfe" + b'"}')
    _clean_refusal(lambda: ji.load(str(checkpoint), progress=False))


def test_a_hostile_safetensors_header_is_escaped(tmp_path):
    raw = f'{{"{HOSTILE}": '.encode() + b"\xff"
    path = tmp_path / "model.safetensors"
    path.write_bytes(len(raw).to_bytes(8, "little") + raw)
    _clean_refusal(lambda: ji.load(str(path), progress=False))


def test_a_hostile_gguf_string_is_escaped(tmp_path):
    pairs = [*gguf_raw.LLAMA, ("tokenizer.ggml.model", gguf_raw.STRING, HOSTILE)]
    path = gguf_raw.write(tmp_path / "model.gguf", pairs=pairs)
    bad_utf8 = gguf_raw.write(tmp_path / "bad.gguf", raw_pairs=gguf_raw.pair("x", gguf_raw.STRING, b"\x1b[2J\xff"))
    for target in (path, bad_utf8):
        _clean_refusal(lambda: ji.load(str(target), progress=False))


def test_torchs_unpickler_text_is_escaped(tmp_path):
    """The wrapped third-party message of the issue: a pickle naming a hostile global."""
    pytest.importorskip("torch")
    import pickle
    import zipfile

    folder = tmp_path / "hostile"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "llama", "vocab_size": 8, "hidden_size": 4}))
    payload = b"\x80\x02c" + f"os{HOSTILE}\nsystem{HOSTILE}\n".encode() + b"q\x00." + pickle.STOP
    with zipfile.ZipFile(folder / "pytorch_model.bin", "w", zipfile.ZIP_STORED) as archive:
        archive.writestr("archive/data.pkl", payload)
        archive.writestr("archive/version", "3\n")
        archive.writestr("archive/byteorder", "little")
    message = _clean_refusal(lambda: ji.load(str(folder), progress=False), ji.CheckpointError)
    assert "owned" in message or "unreadable" in message or "refused" in message


def test_a_hostile_tokenizer_folder_is_escaped(checkpoint):
    (checkpoint / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": HOSTILE}))
    (checkpoint / "tokenizer.json").write_text(HOSTILE)
    _clean_refusal(lambda: ji.load(str(checkpoint), progress=False).tokenizer, ji.CheckpointError)


def test_a_hostile_converted_manifest_is_escaped(tmp_path, tiny_checkpoint):
    folder = tmp_path / "converted"
    ji.convert(tiny_checkpoint("smol")[0], str(folder), progress=False)
    manifest = json.loads((folder / "jaxinterp.json").read_text())
    (folder / "jaxinterp.json").write_text(json.dumps({**manifest, "family": HOSTILE}))
    _clean_refusal(lambda: ji.load(str(folder), progress=False))
    (folder / "jaxinterp.json").write_text(json.dumps({**manifest, "config": {**manifest["config"], "act": HOSTILE}}))
    _clean_refusal(lambda: ji.load(str(folder), progress=False))


def test_a_hostile_sae_folder_is_escaped(tmp_path):
    from jaxinterp import sae

    (tmp_path / "cfg.json").write_text(json.dumps({"d_in": 4, "d_sae": 8, "hook_name": "x",
                                                   "normalize_activations": HOSTILE}))
    (tmp_path / "sae_weights.safetensors").write_bytes(b"")
    _clean_refusal(lambda: sae.load_sae(str(tmp_path)), ji.CheckpointError)
    (tmp_path / "cfg.json").write_bytes(b"{" + HOSTILE.encode() + b"\xff")
    _clean_refusal(lambda: sae.load_sae(str(tmp_path)), ji.CheckpointError)
