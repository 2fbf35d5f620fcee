"""Hostile and careless numbers in configs: one validation for every source (`models/config_checks.py`).

A config.json, a converted directory's manifest and (through `GGUFFile.hf_config`) GGUF
metadata pass the same checks: wrong types, values out of range and broken relations are a
one-line `ConfigError` naming the file and the key, before any shape is built; configs
that name the same sizes in another spelling (`64.0`, `null` for a default) still load.
"""

from __future__ import annotations

import json
import math

import pytest

import jaxinterp as ji
from jaxinterp import models
from tests.hostile import one_clean_line, within

LLAMA = {"model_type": "llama", "vocab_size": 32, "hidden_size": 16, "intermediate_size": 32,
         "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1}
GPT2 = {"model_type": "gpt2", "vocab_size": 32, "n_embd": 16, "n_layer": 1, "n_head": 2, "n_positions": 16}


def _refused(folder, config: dict, *needles: str) -> None:
    """Writes `config` as config.json (beside an empty safetensors file) and asserts a named ConfigError."""
    folder.mkdir(exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "model.safetensors").write_bytes(b"\x02\x00\x00\x00\x00\x00\x00\x00{}")
    with within(20), pytest.raises(ji.ConfigError) as error:
        ji.load(str(folder), progress=False)
    message = str(error.value)
    one_clean_line(message)
    for needle in (str(folder / "config.json"), *needles):
        assert needle in message, message


@pytest.mark.parametrize("key, value, expected", [
    ("rms_norm_eps", 0.0, "a finite number > 0"),
    ("rms_norm_eps", -1e-6, "a finite number > 0"),
    ("rms_norm_eps", math.nan, "a finite number > 0"),
    ("rms_norm_eps", "1e-6", "a finite number > 0"),
    ("rope_theta", 0, "a finite number > 0"),
    ("rope_theta", math.inf, "a finite number > 0"),
    ("num_attention_heads", 0, "an integer >= 1"),
    ("num_attention_heads", "2", "an integer >= 1"),
    ("num_attention_heads", 2.5, "an integer >= 1"),
    ("num_attention_heads", True, "an integer >= 1"),
    ("hidden_size", -16, "an integer >= 1"),
    ("max_position_embeddings", 0, "an integer >= 1"),
])
def test_wrong_numbers_in_an_hf_config_are_named(tmp_path, key, value, expected):
    _refused(tmp_path / "ckpt", {**LLAMA, key: value}, key, expected)


@pytest.mark.parametrize("change, needles", [
    ({"model_type": "mistral", "sliding_window": 0}, ("sliding_window", "an integer >= 1")),
    ({"rope_scaling": {"rope_type": "linear", "factor": -2.0}}, ("rope_scaling: factor", "a finite number > 0")),
    ({"rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 4.0, "high_freq_factor": 4.0,
                       "original_max_position_embeddings": 16}}, ("high_freq_factor", "more than low_freq_factor")),
    ({"rope_scaling": "linear"}, ("rope_scaling", "an object")),
    ({"num_key_value_heads": 3, "num_attention_heads": 4}, ("num_kv_heads", "a divisor of num_heads=4")),
    ({"head_dim": 7}, ("head_dim", "an even width")),
    ({"model_type": "qwen2", "use_sliding_window": True, "sliding_window": 4, "max_window_layers": -1},
     ("max_window_layers", "an integer >= 0")),
])
def test_broken_relations_and_nested_values_are_named(tmp_path, change, needles):
    _refused(tmp_path / "ckpt", {**LLAMA, **change}, *needles)


@pytest.mark.parametrize("family, missing", [("llama", "hidden_size"), ("llama", "num_attention_heads"),
                                             ("llama", "vocab_size")])
def test_missing_keys_are_named(tmp_path, family, missing):
    config = {k: v for k, v in LLAMA.items() if k != missing}
    _refused(tmp_path / "ckpt", config, missing, "missing")


def test_gpt2_configs_pass_the_same_checks(tmp_path):
    _refused(tmp_path / "a", {**GPT2, "layer_norm_epsilon": 0}, "layer_norm_epsilon")
    _refused(tmp_path / "b", {**GPT2, "n_head": 0}, "n_head")
    _refused(tmp_path / "c", {**GPT2, "n_positions": "16"}, "n_positions")


def test_integral_floats_and_nulls_name_the_same_config():
    spelled = {**LLAMA, "hidden_size": 16.0, "num_attention_heads": 2.0, "head_dim": None, "sliding_window": None}
    assert models.config_from_hf(spelled) == models.config_from_hf(LLAMA)


def test_a_converted_manifest_passes_the_same_checks(tmp_path):
    config = models.config_to_dict(models.config_from_hf(LLAMA))
    config["config"]["rms_norm_eps"] = -1.0
    (tmp_path / "jaxinterp.json").write_text(json.dumps({"format": 1, "dtype": "float32", **config}))
    with within(20), pytest.raises(ji.ConfigError, match="rms_norm_eps: expected a finite number > 0") as error:
        ji.load(str(tmp_path), progress=False)
    assert str(tmp_path / "jaxinterp.json") in str(error.value)
    config["config"]["rms_norm_eps"], config["config"]["unknown_field"] = 1e-6, 1
    (tmp_path / "jaxinterp.json").write_text(json.dumps({"format": 1, "dtype": "float32", **config}))
    with within(20), pytest.raises(ji.ConfigError, match="malformed .*unknown_field"):
        ji.load(str(tmp_path), progress=False)


def test_gguf_metadata_reaches_the_same_checks():
    from_gguf = {**LLAMA, "model_type": "qwen2", "rms_norm_eps": 1e-6, "rope_theta": 1e4, "head_dim": 8,
                 "max_position_embeddings": 64, "tie_word_embeddings": True}
    models.config_from_hf(from_gguf, source="model.gguf")
    with pytest.raises(ji.ConfigError, match="model.gguf: head_dim: expected an even width"):
        models.config_from_hf({**from_gguf, "head_dim": 9}, source="model.gguf")


def test_a_config_holding_both_rope_spellings_means_what_transformers_means():
    """Found by the soak: a file with `rope_parameters` and `rope_scaling` built another rotary than
    transformers' (which lets `rope_scaling` win)."""
    transformers = pytest.importorskip("transformers")
    both = {**LLAMA, "rope_parameters": {"rope_type": "default", "rope_theta": 1e4},
            "rope_scaling": {"rope_type": "linear", "factor": 4.0}}
    ours = models.config_from_hf(both).rope
    theirs = transformers.LlamaConfig(**{k: v for k, v in both.items() if k != "model_type"}).rope_parameters
    assert (ours.kind, ours.factor, ours.theta) == (theirs["rope_type"], theirs["factor"], theirs["rope_theta"])
    assert (ours.kind, ours.factor) == ("linear", 4.0)
