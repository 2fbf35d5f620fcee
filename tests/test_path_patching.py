"""Path patching: grids against an explicit per-sender loop of `Patch` forwards, its identities
(one layer = activation patching, senders past the receivers = the target metric, noising) and errors."""

from __future__ import annotations

import jax
import numpy as np
import pytest

import jaxinterp as ji
from jaxinterp import models, patching
from jaxinterp.edits import Patch
from jaxinterp.models.gpt2 import GPT2Config
from tests.attention_fixtures import tiny_decoder

CLEAN = np.array([[3, 9, 14, 21, 5, 11, 7]], np.int32)
CORRUPTED = CLEAN.copy()
CORRUPTED[0, 2] = 40
METRIC = patching.logit_diff(5, 7)
GPT2 = GPT2Config(vocab_size=48, hidden_size=16, intermediate_size=32, num_layers=3, num_heads=2,
                  max_position_embeddings=8)


def tiny_gpt2() -> ji.Model:
    return ji.Model(GPT2, models.init_params(GPT2, jax.random.key(0)))


def sender_loop(model, receivers, *, source, target, freeze_mlps=False):
    """The grid by hand: per sender, one forward with a `Patch` per block freezing the non-receiver
    heads (the sender from `source`), then, with receivers, one forward writing their outputs."""
    layers = len(model.resolve_capture("blocks.*.attn.head_out"))
    names = [f"blocks.{layer}.attn.head_out" for layer in range(layers)]
    mlps = [f"blocks.{layer}.mlp.out" for layer in range(layers)]
    source_run, target_run = model.run(source, capture=names), model.run(target, capture=names + mlps)
    heads = source_run[names[0]].shape[2]
    free = {layer: sorted(h for l, h in receivers or () if l == layer) for layer in range(layers)}
    out = np.zeros((layers, heads), np.float32)
    for sender_layer, sender_head in np.ndindex(layers, heads):
        edits = []
        for layer, name in enumerate(names):
            value = np.asarray(target_run[name]).copy()
            if layer == sender_layer:
                value[:, :, sender_head] = np.asarray(source_run[name])[:, :, sender_head]
            kept = [h for h in range(heads) if h not in free[layer]]
            if kept:
                edits.append(Patch(name, value, heads=np.array(kept)))
        if freeze_mlps:
            edits.extend(Patch(name, target_run[name]) for name in mlps)
        if receivers is None:
            out[sender_layer, sender_head] = float(METRIC(model.run(target, edits=edits)))
            continue
        run = model.run(target, edits=edits, capture=names)
        written = [Patch(names[layer], run[names[layer]], heads=np.array(h)) for layer, h in free.items() if h]
        out[sender_layer, sender_head] = float(METRIC(model.run(target, edits=written)))
    return out


@pytest.mark.parametrize("family, receivers, freeze", [
    ("llama", None, ("attn.head_out",)),
    ("llama", [(1, 2), (2, 0), (2, 3)], ("attn.head_out",)),
    ("llama", [(2, 1)], ("attn.head_out", "mlp.out")),
    ("gpt2", None, ("attn.head_out",)),
    ("gpt2", [(1, 1), (2, 0)], ("attn.head_out",)),
])
def test_grid_equals_sender_loop(family, receivers, freeze):
    model = tiny_decoder(layers=3) if family == "llama" else tiny_gpt2()
    result = patching.path_patching(model, CLEAN, CORRUPTED, METRIC, receivers=receivers, freeze=freeze, chunk_size=5)
    expected = sender_loop(model, receivers, source=CLEAN, target=CORRUPTED, freeze_mlps="mlp.out" in freeze)
    assert result.axes == ("layer", "head") and result.values.shape == expected.shape
    np.testing.assert_allclose(result.values, expected, atol=1e-5)
    assert np.ptp(expected) > 1e-3  # the senders differ: a grid of target metrics would not pass
    assert result.clean == pytest.approx(float(METRIC(model.run(CLEAN))))
    assert result.corrupted == pytest.approx(float(METRIC(model.run(CORRUPTED))))
    ends = "logits" if receivers is None else "receivers " + ", ".join(f"{l}.{h}" for l, h in receivers)
    assert result.method == f"path patching (clean into corrupted) to {ends}"


def test_last_layer_to_logits_is_activation_patching():
    """A last-layer head reaches the logits only directly and through its block's MLP, both kept by path
    patching, and the frozen heads hold the values they would have anyway: the cells must agree."""
    one = tiny_decoder(layers=1)
    path = patching.path_patching(one, CLEAN, CORRUPTED, METRIC)
    activation = patching.activation_patching(one, CLEAN, CORRUPTED, METRIC, site="attn.head_out")
    np.testing.assert_allclose(path.values, activation.values, atol=1e-5)
    three = tiny_decoder(layers=3)
    path = patching.path_patching(three, CLEAN, CORRUPTED, METRIC)
    activation = patching.activation_patching(three, CLEAN, CORRUPTED, METRIC, site="attn.head_out")
    np.testing.assert_allclose(path.values[-1], activation.values[-1], atol=1e-5)
    # earlier heads also act through later heads, which path patching holds fixed
    assert np.abs(path.values[0] - activation.values[0]).max() > 1e-4


@pytest.mark.parametrize("noising", [False, True])
def test_senders_at_or_after_the_receivers_give_the_target_metric(noising):
    model = tiny_decoder(layers=3)
    result = patching.path_patching(model, CLEAN, CORRUPTED, METRIC, receivers=[(1, 2)], noising=noising)
    target = result.clean if noising else result.corrupted
    np.testing.assert_allclose(result.values[1:], target, atol=1e-5)
    assert np.abs(result.values[0] - target).max() > 1e-4


def test_noising_swaps_source_and_target():
    model = tiny_decoder(layers=3)
    result = patching.path_patching(model, CLEAN, CORRUPTED, METRIC, receivers=[(2, 1)], noising=True)
    np.testing.assert_allclose(result.values, sender_loop(model, [(2, 1)], source=CORRUPTED, target=CLEAN), atol=1e-5)
    assert result.clean == pytest.approx(float(METRIC(model.run(CLEAN))))
    assert result.corrupted == pytest.approx(float(METRIC(model.run(CORRUPTED))))
    assert result.method == "path patching (corrupted into clean) to receivers 2.1"


@pytest.mark.parametrize("arguments, message", [
    ({"receivers": [(3, 0)]}, r"receivers: expected layer in \[0, 3\) and head in \[0, 4\), found \(3, 0\)"),
    ({"receivers": [(0, -1)]}, r"receivers: expected layer in \[0, 3\) and head in \[0, 4\), found \(0, -1\)"),
    ({"receivers": []}, "receivers: expected None or a non-empty list of .* found an empty list"),
    ({"receivers": (1, 2)}, r"receivers: expected \(layer, head\) pairs of ints, found 1"),
    ({"receivers": [(1.0, 2)]}, r"receivers: expected \(layer, head\) pairs of ints, found \(1.0, 2\)"),
    ({"receivers": "1.2"}, "receivers: expected None or a list of .* found str"),
    ({"freeze": ("attn.out",)}, r"freeze: expected sites among \('attn.head_out', 'mlp.out'\), found 'attn.out'"),
    ({"freeze": "mlp.out"}, "freeze: expected a tuple of sites among .* found 'mlp.out'"),
])
def test_errors_name_the_argument(arguments, message):
    with pytest.raises(ji.ArgumentError, match=message):
        patching.path_patching(tiny_decoder(layers=3), CLEAN, CORRUPTED, METRIC, **arguments)
