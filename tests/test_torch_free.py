"""The base path runs with torch absent, whatever the test machine has installed.

The child process marks torch as missing (`sys.modules["torch"] = None`: `import torch`
raises ModuleNotFoundError and `importlib.util.find_spec("torch")` answers None, exactly
as in a venv without it), starts from an empty cache, and runs the demo, which converts
SmolLM2 from its GGUF file, tokenizer included; then it loads a safetensors checkpoint
with a tokenizer and a converted directory, and asks for a `.bin` checkpoint, which must
say in one line how to install torch. The other commands of the CLI (generate, capture,
attention, attribute) run the same way in the slow set.
"""

from __future__ import annotations

import json
import pathlib
import textwrap

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


def run_without_torch(script: str, cache: pathlib.Path) -> str:
    """Runs `script` in a child whose `import torch` fails, with the conversion cache at `cache`."""
    blocker = """
        import sys
        sys.modules["torch"] = None
        import importlib.util
        assert importlib.util.find_spec("torch") is None
        from jaxinterp.cli import main
    """
    return run_python(textwrap.dedent(blocker) + textwrap.dedent(script), env={"XDG_CACHE_HOME": str(cache)},
                      timeout=600)


@pytest.mark.slow  # about 110 s; CI's first command runs the demo without torch and checks its outputs
def test_demo_and_loading_run_with_torch_absent(tmp_path, checkpoints):
    safetensors, converted, binary = checkpoints
    out = tmp_path / "demo"
    printed = run_without_torch(f"""
        import json
        import numpy as np
        import jaxinterp as ji

        assert main(["demo", "--max-new-tokens", "4", "--out", {str(out)!r}]) == 0
        for source in ({str(safetensors)!r}, {str(converted)!r}):
            logits = ji.load(source, progress=False)(np.arange(8, dtype=np.int32)[None])
            assert np.isfinite(np.asarray(logits)).all()
        result = {{"tokens": ji.load({str(safetensors)!r}, progress=False).tokenizer("Hello, world")["input_ids"]}}
        try:
            ji.load({str(binary)!r}, progress=False)
        except ji.CheckpointError as e:
            result["bin_error"] = str(e)
        print(json.dumps(result))
    """, tmp_path / "empty-cache")
    result = json.loads(printed.strip().splitlines()[-1])
    demo = json.loads((out / "demo.json").read_text())
    assert demo["answer"].strip() and (out / "demo.png").stat().st_size > 10_000
    assert result["tokens"] == ji.load("smollm2", progress=False).tokenizer("Hello, world")["input_ids"]
    assert "pip install 'jaxinterp[torch]'" in result["bin_error"] and "\n" not in result["bin_error"]


@pytest.mark.slow
def test_every_command_runs_with_torch_absent(tmp_path):
    out = tmp_path / "out"
    run_without_torch(f"""
        for command in (["generate", "Hi", "--chat", "--max-new-tokens", "2"],
                        ["capture", "Hi there", "--sites", "blocks.0.attn.probs", "--out", {str(out / "acts.npz")!r}],
                        ["attention", "Hi there", "--out", {str(out / "attention")!r}],
                        ["attribute", "--prompt", "Hi", "--max-new-tokens", "1", "--method", "grad_x_input",
                         "--out", {str(out / "maps.npz")!r}]):
            assert main(command) == 0, command
    """, tmp_path / "empty-cache")
    for written in ("acts.npz", "attention/attention.json", "maps.npz"):
        assert (out / written).stat().st_size > 0, written
