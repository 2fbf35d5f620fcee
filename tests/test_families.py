"""The family contract: one package and one registry line per family, records checked when
they register, the registry (not a list anywhere else) driving configs, checkpoints and
manifests, and no import cycle among the core, the families and the checkpoint readers."""

from __future__ import annotations

import ast
import dataclasses
import json
import pathlib
import shutil
from typing import ClassVar

import numpy as np
import pytest

import jaxinterp as ji
from jaxinterp.errors import ArgumentError, ConfigError
from jaxinterp.models import gpt2, registry
from jaxinterp.models.family import Family, FamilyConfig
from jaxinterp.models.gpt2.model import GPT2Config
from tests.attention_fixtures import tiny_vlm

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGES = {"models": "jaxinterp.models", "converters": "jaxinterp.converters"}


@pytest.fixture
def scratch_registry(monkeypatch):
    """The registry as it is, restored after the test (registration mutates it)."""
    monkeypatch.setattr(registry, "_FAMILIES", dict(registry._FAMILIES))
    monkeypatch.setattr(registry, "_HF_MODEL_TYPES", dict(registry._HF_MODEL_TYPES))


def test_every_family_package_is_registered_in_one_place():
    packages = sorted(p.parent.name for p in (ROOT / "models").glob("*/__init__.py"))
    assert sorted(registry.families()) == packages
    registering = [p for p in ROOT.rglob("*.py") if ".venv" not in p.parts and "build" not in p.parts
                   and "registry.register(" in p.read_text() and p.parent.name != "tests"]
    assert registering == [ROOT / "models" / "__init__.py"]
    for name, record in registry.families().items():
        record.check()
        assert isinstance(record.config, type) and issubclass(record.config, FamilyConfig) and record.name == name


@dataclasses.dataclass(frozen=True, kw_only=True)
class GPT2Variant(GPT2Config):
    """A new family for the test: GPT-2's model and tensor names under another name."""

    family: ClassVar[str] = "gpt2_variant"


def _variant_builder(hf, *, source):
    return GPT2Variant(**dataclasses.asdict(gpt2.from_hf_config({**hf, "model_type": "gpt2"}, source=source)))


def test_a_new_family_is_one_record_and_one_registration(scratch_registry, tiny_checkpoint, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    registry.register(Family(config=GPT2Variant, hf_configs={"gpt2_variant": _variant_builder},
                             checkpoint=gpt2.checkpoint))
    folder, _ = tiny_checkpoint("gpt2")
    variant = tmp_path / "variant"
    shutil.copytree(folder, variant)
    config = json.loads((variant / "config.json").read_text())
    (variant / "config.json").write_text(json.dumps({**config, "model_type": "gpt2_variant"}))
    tokens = np.arange(10, dtype=np.int32)[None] % 96
    plain = ji.load(folder, progress=False, dtype="float32")
    model = ji.load(str(variant), progress=False, dtype="float32")
    assert model.config.family == "gpt2_variant"
    np.testing.assert_array_equal(np.asarray(model(tokens)), np.asarray(plain(tokens)))
    ji.save(model, tmp_path / "converted")  # the manifest names the family; loading asks the registry
    np.testing.assert_array_equal(np.asarray(ji.load(str(tmp_path / "converted"), progress=False)(tokens)),
                                  np.asarray(plain(tokens)))


@dataclasses.dataclass(kw_only=True)
class Unfrozen(FamilyConfig):
    family: ClassVar[str] = "unfrozen"
    num_layers: int = 1
    num_heads: int = 1
    hidden_size: int = 1
    vocab_size: int = 1
    causal: bool = True

    def module(self):
        raise NotImplementedError


@dataclasses.dataclass(frozen=True, kw_only=True)
class Headless(FamilyConfig):
    family: ClassVar[str] = "headless"
    num_layers: int = 1


@pytest.mark.parametrize(("record", "message"), [
    (Family(config=dict), "expected a dataclass subclassing FamilyConfig"),
    (Family(config=Unfrozen), "must be a frozen dataclass"),
    (Family(config=Headless), r"lacks \['num_heads', 'hidden_size', 'vocab_size', 'causal', 'module'\]"),
    (Family(config=GPT2Variant, hf_configs={"x": _variant_builder}), "reads Hugging Face configs but has no name map"),
    (Family(config=GPT2Variant, checkpoint=object()), "needs name_map"),
    (Family(config=GPT2Config), "family gpt2: registered twice"),
    (Family(config=GPT2Variant, hf_configs={"llama": _variant_builder}, checkpoint=gpt2.checkpoint),
     r"model types \['llama'\] belong to another family"),
])
def test_a_record_that_breaks_the_contract_is_refused_by_name(scratch_registry, record, message):
    before = dict(registry.families())
    with pytest.raises(ConfigError, match=message):
        registry.register(record)
    assert registry.families() == before


def test_a_positional_scheme_turns_off_the_decoders_causal_switch_only():
    vlm = tiny_vlm().config
    loose = vlm.bidirectional()
    assert vlm.text.causal and not loose.text.causal and not loose.causal and loose.vision == vlm.vision
    assert loose.objective == vlm.objective == "next_token"  # the mask changes, the target row does not
    with pytest.raises(ArgumentError, match="gpt2: positional schemes need a causal decoder with a causal switch"):
        GPT2Config(vocab_size=8, hidden_size=8, intermediate_size=8, num_layers=1, num_heads=2).bidirectional()
    with pytest.raises(ArgumentError, match="causal switch"):
        loose.bidirectional()  # already bidirectional


def _module_name(path: pathlib.Path) -> str:
    relative = path.relative_to(ROOT).with_suffix("")
    parts = [PACKAGES[relative.parts[0]], *relative.parts[1:]]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: pathlib.Path) -> tuple[set[str], list[int]]:
    """Modules `path` imports at module level (`from a import b` counts a.b where that is a
    module), and the lines of any import of jaxinterp inside a function or class (lazy imports
    of optional or slow third-party packages, torch or orbax, are fine; of our own modules they
    hide a cycle)."""
    tree = ast.parse(path.read_text())
    top: set[str] = set()
    nested: list[int] = []
    for node in tree.body:
        if isinstance(node, ast.Import):
            top.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            top.update({node.module, *(f"{node.module}.{alias.name}" for alias in node.names)})
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            nested += [n.lineno for n in ast.walk(node) if isinstance(n, ast.ImportFrom)
                       and (n.module or "").startswith("jaxinterp")
                       or isinstance(n, ast.Import) and any(a.name.startswith("jaxinterp") for a in n.names)]
    return top, nested


def test_no_import_cycle_among_core_families_and_readers():
    """Edges are module-level imports between modules of `models/` and `converters/` (a
    package's import of its own children is how it is assembled, not a cycle); none may form
    a cycle, and none of these modules imports one of ours inside a function."""
    files = sorted(p for folder in PACKAGES for p in (ROOT / folder).rglob("*.py"))
    modules = {_module_name(p): p for p in files}
    graph = {}
    for name, path in modules.items():
        top, nested = _imports(path)
        assert not nested, f"{path.relative_to(ROOT)}: imports inside a function at lines {nested}"
        graph[name] = {m for m in top if m in modules and m != name and not m.startswith(f"{name}.")}
    state: dict[str, str] = {}

    def visit(name: str, trail: list[str]) -> None:
        state[name] = "open"
        for target in sorted(graph[name]):
            if state.get(target) == "open":
                cycle = trail[trail.index(target):] + [target] if target in trail else [name, target]
                raise AssertionError(f"import cycle: {' -> '.join(cycle)}")
            if target not in state:
                visit(target, [*trail, target])
        state[name] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
