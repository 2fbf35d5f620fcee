"""The one registry of model families, and the lookups every source goes through.

Families register once, in `models/__init__.py` (one line each); this module holds only the
mechanism, so a family that composes others (LLaVA: a vision tower and any text family)
looks them up here at run time without importing them, and nothing imports in a circle.
Configs are built from a Hugging Face config.json (`config_from_hf`) or rebuilt from a saved
dictionary (`config_from_dict`), checked by the one shared validation (`config_checks`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from jaxinterp.errors import ConfigError, shown
from jaxinterp.models.config_checks import check_config, check_hf
from jaxinterp.models.family import CheckpointNames, Family, FamilyConfig, GGUFNames

_FAMILIES: dict[str, Family] = {}
_HF_MODEL_TYPES: dict[str, Callable[..., Any]] = {}


def register(family: Family) -> Family:
    """Adds a family after checking that its record states the whole contract and that
    neither its name nor its Hugging Face model types are taken."""
    family.check()
    if family.name in _FAMILIES:
        raise ConfigError(f"family {family.name}: registered twice")
    taken = sorted(set(family.hf_configs) & set(_HF_MODEL_TYPES))
    if taken:
        raise ConfigError(f"family {family.name}: Hugging Face model types {taken} belong to another family")
    _FAMILIES[family.name] = family
    _HF_MODEL_TYPES.update(family.hf_configs)
    return family


def families() -> Mapping[str, Family]:
    """Every registered family by name."""
    return dict(_FAMILIES)


def family(name: Any, *, source: str = "config") -> Family:
    """The family registered as `name`; a ConfigError naming `source` otherwise."""
    if name not in _FAMILIES:
        raise ConfigError(f"{source}: family: expected one of {sorted(_FAMILIES)}, found {shown(repr(name))}")
    return _FAMILIES[name]


def hf_model_types() -> list[str]:
    return sorted(_HF_MODEL_TYPES)


def config_from_hf(hf: Mapping[str, Any], *, source: str = "config.json") -> FamilyConfig:
    """Our config for a Hugging Face config.json dictionary (any registered family)."""
    model_type = hf.get("model_type")
    if model_type not in _HF_MODEL_TYPES:
        architectures = hf.get("architectures")
        raise ConfigError(
            f"{source}: model_type: expected one of {hf_model_types()}, found {shown(repr(model_type))}"
            + (f" (architectures {shown(repr(architectures))})" if architectures else "")
        )
    check_hf(hf, source=source)
    config = _built(lambda: _HF_MODEL_TYPES[model_type](hf, source=source), source)
    check_config(config, source=source)
    return config


def config_from_dict(data: Mapping[str, Any], *, source: str = "config") -> FamilyConfig:
    """Rebuilds a config saved with `config_to_dict` (`source`: where it was read, for errors)."""
    config = _built(lambda: family(data.get("family"), source=source).config.from_dict(data["config"]), source)
    check_config(config, source=source)
    return config


def config_to_dict(config: FamilyConfig) -> dict[str, Any]:
    """A JSON-ready dictionary from which `config_from_dict` rebuilds `config`."""
    return {"family": config.family, "config": config.to_dict()}


def checkpoint_names(config: FamilyConfig, model_type: str | None = None) -> CheckpointNames:
    """The name map that reads a checkpoint of `model_type` into `config`'s parameters: the
    format's own where its tensor names differ from the family's (LLaDA), else the family's."""
    record = family(config.family)
    names = record.formats.get(model_type) or record.checkpoint
    if names is None:
        raise ConfigError(f"family {config.family}: has no checkpoint name map (no public checkpoints)")
    return names


def gguf_names() -> dict[str, GGUFNames]:
    """llama.cpp architecture -> its names, over every registered family."""
    return {arch: names for record in _FAMILIES.values() for arch, names in record.gguf.items()}


def _built(build: Callable[[], Any], source: str) -> Any:
    """`build()`, a family's config builder, with a missing or malformed key as a ConfigError naming it."""
    try:
        return build()
    except ConfigError as e:  # raised by a config class, which does not know the file
        raise e if str(e).startswith(source) else ConfigError(f"{source}: {e}") from None
    except KeyError as e:
        raise ConfigError(f"{source}: {shown(str(e.args[0]))}: missing (the family needs it)") from None
    except (TypeError, ValueError, ZeroDivisionError, AttributeError) as e:
        raise ConfigError(f"{source}: malformed ({type(e).__name__}: {shown(str(e), 300)})") from None
