"""The base path runs with torch absent, whatever the test machine has installed.

The child process marks torch as missing (`sys.modules["torch"] = None`: `import torch`
raises ModuleNotFoundError and `importlib.util.find_spec("torch")` answers None, exactly
as in a venv without it), starts from an empty cache, and runs the demo, which converts
SmolLM2 from its GGUF file, tokenizer included; then it loads a safetensors checkpoint
with a tokenizer and a converted directory, and asks for a `.bin` checkpoint, which must
say in one line how to install torch.
"""

from __future__ import annotations

import json
import pathlib

import pytest

import jaxinterp as ji
from tests.isolated import run_python


@pytest.fixture
def checkpoints(tmp_path, tiny_checkpoint, smollm2):
    """(safetensors folder with a tokenizer, converted folder, .bin folder), written with torch here."""
    import torch

    folder, model = tiny_checkpoint("smol")
    safetensors, converted, binary = tmp_path / "safetensors", tmp_path / "converted", tmp_path / "bin"
    for destination in (safetensors, binary):
        destination.mkdir()
        (destination / "config.json").write_bytes((pathlib.Path(folder) / "config.json").read_bytes())
    (safetensors / "model.safetensors").write_bytes((pathlib.Path(folder) / "model.safetensors").read_bytes())
    smollm2.tokenizer.save_pretrained(safetensors)
    torch.save(model.state_dict(), binary / "pytorch_model.bin")
    ji.convert(folder, str(converted), progress=False)
    return safetensors, converted, binary


def test_demo_and_loading_run_with_torch_absent(tmp_path, checkpoints):
    safetensors, converted, binary = checkpoints
    out = tmp_path / "demo"
    printed = run_python(f"""
        import sys
        sys.modules["torch"] = None
        import importlib.util, json
        import numpy as np
        import jaxinterp as ji
        from jaxinterp.cli import main

        assert importlib.util.find_spec("torch") is None
        assert main(["demo", "--max-new-tokens", "4", "--out", {str(out)!r}]) == 0
        tokens = {{}}
        for source in ({str(safetensors)!r}, {str(converted)!r}):
            model = ji.load(source, progress=False)
            logits = model(np.arange(8, dtype=np.int32)[None])
            assert np.isfinite(np.asarray(logits)).all()
        tokens["safetensors"] = ji.load({str(safetensors)!r}, progress=False).tokenizer("Hello, world")["input_ids"]
        try:
            ji.load({str(binary)!r}, progress=False)
        except ji.CheckpointError as e:
            tokens["bin_error"] = str(e)
        print(json.dumps(tokens))
    """, env={"XDG_CACHE_HOME": str(tmp_path / "empty-cache")}, timeout=600)
    result = json.loads(printed.strip().splitlines()[-1])
    demo = json.loads((out / "demo.json").read_text())
    assert demo["answer"].strip() and (out / "demo.png").stat().st_size > 10_000
    assert result["safetensors"] == ji.load("smollm2", progress=False).tokenizer("Hello, world")["input_ids"]
    assert "pip install 'jaxinterp[torch]'" in result["bin_error"] and "\n" not in result["bin_error"]
