"""Checkpoints as tensor sources: a config, tensors read one at a time, and a tokenizer.

`open_checkpoint` accepts a Hugging Face checkpoint directory (`config.json` with
`model.safetensors`, a sharded `model.safetensors.index.json`, or `pytorch_model.bin`), a
single `.safetensors` / `.bin` file next to its `config.json`, a `.gguf` file, or an
in-memory `transformers` PyTorch model. Every source exposes the same three methods:
`names`, `shape(name)` and `get(name)` (a numpy array), plus `where(name)`, the file that
holds a tensor, for error messages.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np

from jaxinterp.converters.files import INDEX_LIMIT, member, read_json, regular_file
from jaxinterp.converters.gguf_file import GGUFFile
from jaxinterp.converters.safetensors_file import SafetensorsFile
from jaxinterp.converters.tokenizers import load_tokenizer
from jaxinterp.converters.torch_records import check_records
from jaxinterp.errors import CheckpointError, shown


class TensorSource(Protocol):
    @property
    def names(self) -> list[str]: ...

    def shape(self, name: str) -> tuple[int, ...]: ...

    def get(self, name: str) -> np.ndarray: ...


# torch dtypes a checkpoint tensor may have (those numpy can hold; the safetensors set)
TORCH_DTYPES = ("float64", "float32", "float16", "bfloat16", "int64", "int32", "int16", "int8", "uint8", "bool")


def _torch_to_numpy(tensor) -> np.ndarray:
    """A CPU numpy copy of a torch tensor (bfloat16 through ml_dtypes, without rounding)."""
    import ml_dtypes
    import torch

    tensor = tensor.detach().cpu()
    if tensor.dtype == torch.bfloat16:
        return tensor.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return tensor.numpy()


class _TorchTensors:
    """Reading a dict of torch tensors (`self._tensors`) as a source."""

    @property
    def names(self) -> list[str]:
        return list(self._tensors)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._tensors[name].shape)

    def get(self, name: str) -> np.ndarray:
        return _torch_to_numpy(self._tensors[name])


class TorchBinFile(_TorchTensors):
    """A `pytorch_model.bin` (or `.pt`) read through torch's weights-only unpickler, which
    rebuilds tensors and plain containers and refuses any other object, so no code from the
    file runs. It must hold a flat dict of name -> dense tensor."""

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        try:
            import torch
        except ImportError:
            raise CheckpointError(
                f"{self.path}: reading .bin checkpoints needs torch; install it with "
                "`pip install 'jaxinterp[torch]'` or convert the file to safetensors"
            ) from None
        try:
            self._tensors = torch.load(self.path, map_location="cpu", weights_only=True, mmap=True)
        except Exception as e:
            raise CheckpointError(
                f"{self.path}: refused: torch's weights-only unpickler could not read it ({type(e).__name__}: {shown(str(e), 300)}). "
                "jaxinterp never runs code from a checkpoint. If you trust its author, convert it to safetensors "
                "once, inside a sandbox: `safetensors.torch.save_file(torch.load(path, weights_only=False), "
                "'model.safetensors')`, and load that file instead"
            ) from None
        if not isinstance(self._tensors, dict):
            raise CheckpointError(f"{self.path}: expected a dict of tensors, found {type(self._tensors).__name__}")
        for name, tensor in self._tensors.items():
            if not (isinstance(name, str) and isinstance(tensor, torch.Tensor) and tensor.layout == torch.strided
                    and str(tensor.dtype).removeprefix("torch.") in TORCH_DTYPES):
                found = f"{tensor.dtype} {tensor.layout}" if isinstance(tensor, torch.Tensor) else type(tensor).__name__
                raise CheckpointError(f"{self.path}: entry {shown(repr(name))}: expected a dense tensor of dtype "
                                      f"{sorted(TORCH_DTYPES)}, found {shown(found)}")
        check_records(self.path)


class ModuleTensors(_TorchTensors):
    """The state dict of an in-memory PyTorch model."""

    def __init__(self, module):
        self.path = f"<in-memory {type(module).__name__}>"
        self._tensors = module.state_dict()


class ShardedSource:
    """Several files read as one source; `where(name)` names the file that holds a tensor."""

    def __init__(self, files: list[TensorSource]):
        self.files = files
        self._owner = {}
        for file in files:
            for name in file.names:
                if name in self._owner:
                    raise CheckpointError(f"{file.path}: tensor {name}: also stored in {self._owner[name].path}")
                self._owner[name] = file

    @property
    def path(self) -> str:
        return self.files[0].path if len(self.files) == 1 else os.path.dirname(self.files[0].path)

    @property
    def names(self) -> list[str]:
        return list(self._owner)

    def where(self, name: str) -> str:
        return self._owner[name].path if name in self._owner else self.path

    def shape(self, name: str) -> tuple[int, ...]:
        return self._owner[name].shape(name)

    def get(self, name: str) -> np.ndarray:
        return self._owner[name].get(name)

    def lazy(self, name: str) -> np.ndarray | None:
        """A read-only view of the tensor in its file that reads only what is indexed (None when
        the file's format has none: its tensors are read whole by `get`)."""
        lazy = getattr(self._owner[name], "lazy", None)
        return lazy(name) if lazy is not None else None


class RenamedSource:
    """A source whose tensor names pass through `rename` (e.g. an older checkpoint layout)."""

    def __init__(self, source: ShardedSource, rename: Callable[[str], str]):
        self.source = source
        self.path = source.path
        self._original = {rename(name): name for name in source.names}

    @property
    def names(self) -> list[str]:
        return list(self._original)

    def where(self, name: str) -> str:
        return self.source.where(self._original.get(name, name))

    def shape(self, name: str) -> tuple[int, ...]:
        return self.source.shape(self._original[name])

    def get(self, name: str) -> np.ndarray:
        return self.source.get(self._original[name])

    def lazy(self, name: str) -> np.ndarray | None:
        return self.source.lazy(self._original[name])


@dataclasses.dataclass
class Checkpoint:
    """A checkpoint ready to convert: where it is, its HF config, tensors, and a tokenizer loader."""

    description: str
    hf_config: dict[str, Any]
    tensors: ShardedSource
    load_tokenizer: Callable[[], Any]
    files: tuple[str, ...] = ()
    config_source: str = ""  # where the config was read (a config.json, a GGUF file's metadata), for errors


def _open_file(path: str, folder: str | None) -> TensorSource:
    """The source of one weight file, checked to be a regular file (inside `folder` when it was named from one)."""
    regular_file(path, folder=folder)
    if path.endswith(".safetensors"):
        return SafetensorsFile(path)
    if path.endswith((".bin", ".pt", ".pth")):
        return TorchBinFile(path)
    raise CheckpointError(f"{path}: expected a .safetensors, .bin or .gguf file")


def _weight_files(folder: str) -> list[str]:
    """The weight files of a Hugging Face checkpoint directory, preferring safetensors."""
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        index_path = os.path.join(folder, index_name)
        if os.path.lexists(index_path):
            weight_map = read_json(index_path, folder=folder, limit=INDEX_LIMIT).get("weight_map")
            if not isinstance(weight_map, dict) or not weight_map:
                raise CheckpointError(f"{index_path}: weight_map: expected a non-empty object, "
                                      f"found {shown(repr(weight_map))}")
            files = [member(folder, name, listed_in=index_path) for name in dict.fromkeys(weight_map.values())]
            for file in files:
                if not os.path.lexists(file):
                    raise CheckpointError(f"{file}: listed in {index_name} but missing")
            return files
    for name in ("model.safetensors", "pytorch_model.bin"):
        if os.path.lexists(os.path.join(folder, name)):
            return [os.path.join(folder, name)]
    raise CheckpointError(
        f"{folder}: no weights found (expected model.safetensors, model.safetensors.index.json or pytorch_model.bin)"
    )


def _directory_tokenizer(folder: str) -> Callable[[], Any]:
    def load():
        if not any(os.path.lexists(os.path.join(folder, f)) for f in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")):
            return None
        return load_tokenizer(folder)

    return load


def open_checkpoint(source: Any) -> Checkpoint:
    """Opens a checkpoint (see the module docstring) without reading any tensor data."""
    if not isinstance(source, (str, os.PathLike)):
        if hasattr(source, "state_dict") and hasattr(source, "config"):
            tensors = ShardedSource([ModuleTensors(source)])
            return Checkpoint(tensors.path, source.config.to_dict(), tensors, lambda: None)
        raise CheckpointError(
            f"source: expected a path or a transformers PyTorch model, found {type(source).__name__}"
        )
    path = os.fspath(source)
    if not os.path.exists(path):
        raise CheckpointError(f"{path}: no such file or directory")
    if path.endswith(".gguf"):
        gguf = GGUFFile(regular_file(path))
        return Checkpoint(path, gguf.hf_config(), ShardedSource([gguf]), gguf.tokenizer, (path,), f"{path} (metadata)")
    if os.path.isdir(path):
        folder, files, named = path, _weight_files(path), path
    else:
        folder, files, named = os.path.dirname(os.path.abspath(path)), [path], None
    config_path = os.path.join(folder, "config.json")
    config = read_json(config_path, folder=folder, what="a Hugging Face checkpoint needs its config.json")
    tensors = ShardedSource([_open_file(f, named) for f in files])
    return Checkpoint(path, config, tensors, _directory_tokenizer(folder), tuple(files), config_path)
