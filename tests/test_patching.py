"""Activation-writing edits and patching: grids against explicit per-cell loops, attribution against the
hand-derived first-order term, AtP*'s QK fix against the pattern recomputed by hand, figures and errors."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxinterp as ji
from jaxinterp import patching
from jaxinterp.edits import Patch, PatchLayer
from jaxinterp.models import make_batch
from jaxinterp.models.masks import MASKED
from tests.attention_fixtures import tiny_decoder

CLEAN = np.array([[3, 9, 14, 21, 5, 11, 7]], np.int32)
CORRUPTED = CLEAN.copy()
CORRUPTED[0, 2] = 40
METRIC = patching.logit_diff(5, 7)


@pytest.fixture(scope="module")
def model():
    return tiny_decoder(layers=2)


@pytest.fixture(scope="module")
def saturated(model):
    """The tiny decoder with its queries 16 times larger: most attention rows put almost all mass on one key."""
    params = {name: {**block, "q_proj": {"kernel": 16.0 * block["q_proj"]["kernel"]}} if name.startswith("blocks")
              else block for name, block in model.params.items()}
    return ji.Model(model.config, params)


def cell_loop(model, site, grid, *, source, target):
    """The grid by hand: one forward per cell with a `Patch` at that cell's site."""
    captured = model.run(source, capture=[f"blocks.*.{site}"])
    out = np.zeros(grid.shape, np.float32)
    for index in np.ndindex(*grid.shape):
        cell = dict(zip(grid.axes, index))
        name = f"blocks.{cell['layer']}.{site}"
        edit = Patch(name, captured[name], positions=cell.get("position"), heads=cell.get("head"))
        out[index] = float(METRIC(model.run(target, edits=edit)))
    return out


def test_patch_writes_the_selection_only(model):
    clean = model.run(CLEAN, capture=["blocks.1.attn.head_out", "blocks.0.resid_pre"])
    value = clean["blocks.1.attn.head_out"]
    got = model.run(CORRUPTED, capture=["blocks.1.attn.head_out"],
                    edits=Patch("blocks.1.attn.head_out", value, positions=jnp.array([2, 4]), heads=1))
    before = model.run(CORRUPTED, capture=["blocks.1.attn.head_out"])["blocks.1.attn.head_out"]
    expected = np.asarray(before).copy()
    expected[:, [2, 4], 1] = np.asarray(value)[:, [2, 4], 1]
    np.testing.assert_array_equal(np.asarray(got["blocks.1.attn.head_out"]), expected)
    # everything written at the first site: the corrupted run becomes the clean one
    whole = model(CORRUPTED, edits=Patch("blocks.0.resid_pre", clean["blocks.0.resid_pre"]))
    np.testing.assert_allclose(np.asarray(whole), np.asarray(clean.logits), atol=1e-6)


def test_patch_interpolates_with_alpha(model):
    clean = model.run(CLEAN, capture=["blocks.1.resid_mid"])["blocks.1.resid_mid"]
    corrupted = model.run(CORRUPTED, capture=["blocks.1.resid_mid"])["blocks.1.resid_mid"]
    for alpha in (0.0, 0.25, 1.0):
        got = model.run(CORRUPTED, capture=["blocks.1.resid_mid"],
                        edits=Patch("blocks.1.resid_mid", clean, alpha=jnp.float32(alpha)))["blocks.1.resid_mid"]
        np.testing.assert_allclose(np.asarray(got), np.asarray(corrupted + alpha * (clean - corrupted)), atol=1e-6)


def test_patch_in_grad_and_sweep(model):
    clean = model.run(CLEAN, capture=["blocks.1.resid_pre"])["blocks.1.resid_pre"]
    edit = Patch("blocks.1.resid_pre", clean, positions=3)
    _, grads = model.grad(METRIC, CORRUPTED, wrt=["blocks.0.resid_post"], edits=edit)
    # block 0's output at token 3 flows only into the written token of block 1's input
    assert not np.any(np.asarray(grads["blocks.0.resid_post"])[:, 3])
    assert np.any(np.asarray(grads["blocks.0.resid_post"])[:, 2])
    swept = ji.sweep(lambda batch, p: METRIC(model.run(batch, edits=Patch("blocks.1.resid_pre", clean, positions=p))),
                     model.batch(CORRUPTED), jnp.arange(7), progress=False)
    looped = [float(METRIC(model.run(CORRUPTED, edits=Patch("blocks.1.resid_pre", clean, positions=p)))) for p in range(7)]
    np.testing.assert_allclose(np.asarray(swept), looped, atol=1e-5)


def test_patch_in_generate_writes_the_prompt(model):
    clean = model.run(CLEAN, capture=["blocks.0.resid_pre"])["blocks.0.resid_pre"]
    patched = model.generate(ji.make_batch(CORRUPTED), 5, edits=Patch("blocks.0.resid_pre", clean))
    np.testing.assert_array_equal(patched.tokens, model.generate(ji.make_batch(CLEAN), 5).tokens)


def test_patch_layer_equals_patch(model):
    captured = model.run(CLEAN, capture=["blocks.*.mlp.out"])
    stack = jnp.stack([captured[f"blocks.{i}.mlp.out"] for i in range(2)])
    for layer in range(2):
        one = model(CORRUPTED, edits=Patch(f"blocks.{layer}.mlp.out", captured[f"blocks.{layer}.mlp.out"], positions=2))
        np.testing.assert_array_equal(np.asarray(model(CORRUPTED, edits=PatchLayer("mlp.out", stack, layer, positions=2))),
                                      np.asarray(one))


@pytest.mark.parametrize("site, per_position", [(s, None) for s in patching.SITES] + [("attn.head_out", True),
                                                                                      ("attn.k", True)])
def test_grid_equals_cell_loop(model, site, per_position):
    result = patching.activation_patching(model, CLEAN, CORRUPTED, METRIC, site=site, per_position=per_position,
                                          chunk_size=5)
    grid = patching.grid.grid_for(model, model.batch(CORRUPTED), site, per_position)
    assert result.axes == grid.axes and result.values.shape == grid.shape
    np.testing.assert_allclose(result.values, cell_loop(model, site, grid, source=CLEAN, target=CORRUPTED), atol=1e-5)
    assert result.clean == pytest.approx(float(METRIC(model.run(CLEAN))))
    assert result.corrupted == pytest.approx(float(METRIC(model.run(CORRUPTED))))


def padded_pair(side: str):
    """Two rows of different lengths, padded on `side`; the pair differs late in the long row only, after the
    short row's last real token when right-padded (its metric is then read from the shared prefix)."""
    tokens = np.array([[3, 9, 14, 21, 5, 11, 7, 2, 8], [6, 12, 4, 30, 17, 1, 0, 0, 0]], np.int32)
    mask = np.ones(tokens.shape, bool)
    mask[1, 6:] = False
    if side == "left":
        tokens[1], mask[1] = np.roll(tokens[1], 3), np.roll(mask[1], 3)
    corrupted = tokens.copy()
    corrupted[0, 7] = 40
    return make_batch(tokens, mask), make_batch(corrupted, mask)


def test_first_changed_slots_known_answer():
    clean, corrupted = padded_pair("left")  # row 1 holds positions 0..5 at slots 3..8; the rows differ at slot 7
    cells = {"layer": np.zeros(9, np.int32), "position": np.arange(9, dtype=np.int32)}
    # position p lives at slot p in row 0 and slot p + 3 in row 1: the first slot reaching p is p (p <= 8)
    np.testing.assert_array_equal(patching.grid.first_changed_slots(clean, corrupted, cells), [7, 7, 7, 7, 7, 7, 7, 7, 8])
    np.testing.assert_array_equal(patching.grid.first_changed_slots(clean, corrupted, {"layer": np.zeros(3, np.int32)}),
                                  [7, 7, 7])
    same = patching.grid.first_changed_slots(clean, clean, cells)
    np.testing.assert_array_equal(same, np.full(9, 8))  # nothing differs: only the last slot runs


@pytest.mark.parametrize("site, noising", [("resid_pre", False), ("attn.head_out", False), ("mlp.out", True)])
def test_shared_prefix_equals_full_recompute(model, site, noising, monkeypatch):
    clean, corrupted = padded_pair("right")
    full = patching.activation_patching(model, clean, corrupted, METRIC, site=site, noising=noising, share_prefix=False)
    resume, starts = patching.activation.prefix.resume, set()
    monkeypatch.setattr(patching.activation.prefix, "resume",
                        lambda *args, **kwargs: starts.add(args[3]) or resume(*args, **kwargs))
    for buckets in (1, 2, 8):
        shared = patching.activation_patching(model, clean, corrupted, METRIC, site=site, noising=noising,
                                              prefix_buckets=buckets)
        np.testing.assert_allclose(shared.values, full.values, atol=1e-5)
        assert (shared.clean, shared.corrupted) == pytest.approx((full.clean, full.corrupted), abs=1e-6)
    assert np.ptp(full.values) > 1e-3  # the grid is not flat: a wrong continuation would show
    assert min(starts) == 7  # the cells did continue the cached run, from the first changed slot on
    assert len(starts) > 1 or site == "attn.head_out"  # a per-position site starts each cell at its own position


def test_bidirectional_model_shares_no_prefix():
    from jaxinterp.models import init_params
    from jaxinterp.models.llama import LlamaConfig

    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4,
                         num_kv_heads=2, head_dim=8, causal=False)
    bidirectional = ji.Model(config, init_params(config, jax.random.key(3)))
    result = patching.activation_patching(bidirectional, CLEAN, CORRUPTED, METRIC)
    grid = patching.grid.grid_for(bidirectional, bidirectional.batch(CORRUPTED), "resid_pre", None)
    # position 0 precedes the corrupted token, yet patching it changes the metric: later tokens are seen
    expected = cell_loop(bidirectional, "resid_pre", grid, source=CLEAN, target=CORRUPTED)
    np.testing.assert_allclose(result.values, expected, atol=1e-5)
    assert abs(expected[1, 0] - result.corrupted) > 1e-4


def test_left_padded_pair_is_refused(model):
    # the clean activation of position p is read at slot p: a left-padded row would be patched from the wrong token
    clean, corrupted = padded_pair("left")
    with pytest.raises(ji.ArgumentError, match="clean: patching needs every real token at the slot of its position.*"
                                               "row 1 holds position 0 at slot 3"):
        patching.activation_patching(model, clean, corrupted, METRIC)


def test_prefix_buckets_must_be_a_positive_integer(model):
    with pytest.raises(ji.ArgumentError, match="prefix_buckets: expected an integer >= 1, found 0"):
        patching.activation_patching(model, CLEAN, CORRUPTED, METRIC, prefix_buckets=0)


def test_noising_grid_equals_cell_loop(model):
    result = patching.activation_patching(model, CLEAN, CORRUPTED, METRIC, site="resid_mid", noising=True)
    grid = patching.grid.grid_for(model, model.batch(CLEAN), "resid_mid", None)
    np.testing.assert_allclose(result.values, cell_loop(model, "resid_mid", grid, source=CORRUPTED, target=CLEAN), atol=1e-5)
    np.testing.assert_allclose(result.values[:, 0], result.clean, atol=1e-6)  # position 0 is the same in both runs


@pytest.mark.parametrize("site, per_position, cells", [
    ("resid_pre", None, [(0, 2), (1, 3), (1, 1)]), ("attn.head_out", None, [(0, 2), (1, 3), (1, 1)]),
    ("attn.q", True, [(0, 2, 3), (1, 4, 1)]), ("attn.k", None, [(0, 1), (1, 0)]), ("attn.k", True, [(0, 2, 1), (1, 5, 0)])])
def test_attribution_is_the_first_order_term(model, site, per_position, cells):
    """d/dalpha metric(x + alpha (clean - x) at the cell) at alpha = 0, through the interpolating edit."""
    result = patching.attribution_patching(model, CLEAN, CORRUPTED, METRIC, site=site, per_position=per_position)
    captured = model.run(CLEAN, capture=[f"blocks.*.{site}"])
    for index in cells:
        cell = dict(zip(result.axes, index))
        name = f"blocks.{cell['layer']}.{site}"

        def patched(alpha):
            edit = Patch(name, captured[name], positions=cell.get("position"), heads=cell.get("head"), alpha=alpha)
            return METRIC(model.run(CORRUPTED, edits=edit))

        first_order = float(jax.grad(patched)(jnp.float32(0.0)))
        assert result.values[index] - result.corrupted == pytest.approx(first_order, abs=1e-5)


def softmax(x):
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def qk_fixed_by_hand(model, site, layer, position, head, *, source, target):
    """AtP*'s estimate of one cell: the target's layer-`layer` scores with the cell's row (query) or column
    (key, for every head of that kv head) recomputed from the source's q or k, softmax, contracted with
    d metric / d attn.probs; summed over the real tokens at `position` in every row."""
    prefix = f"blocks.{layer}.attn"
    names = [f"{prefix}.q", f"{prefix}.k", f"{prefix}.scores"]
    src, tgt = model.run(source, capture=names), model.run(target, capture=names)
    _, grads = model.grad(METRIC, target, wrt=[f"{prefix}.probs"])
    grad = np.asarray(grads[f"{prefix}.probs"], np.float64)
    q_target, k_target, q_source, k_source = (np.asarray(run[f"{prefix}.{n}"], np.float64)
                                              for run in (tgt, src) for n in "qk")
    scores = np.asarray(tgt[f"{prefix}.scores"], np.float64)  # [B, H, T, S]
    masked = scores == MASKED
    scale, group = 8 ** -0.5, q_target.shape[2] // k_target.shape[2]  # head_dim 8; 4 heads over 2 kv heads
    batch = model.batch(target)
    total = 0.0
    for row, slot in zip(*np.nonzero((np.asarray(batch.positions) == position) & np.asarray(batch.mask))):
        patched = scores[row].copy()
        if site == "attn.k":
            heads = list(range(head * group, (head + 1) * group))
            for h in heads:
                patched[h, :, slot] = q_target[row, :, h] @ k_source[row, slot, head] * scale
        else:
            heads = [head]
            patched[head, slot, :] = k_target[row, :, head // group] @ q_source[row, slot, head] * scale
        patched = np.where(masked[row], MASKED, patched)
        total += np.sum((softmax(patched) - softmax(scores[row]))[heads] * grad[row, heads])
    return total


# two rows, the second right-padded by two tokens; both corrupted at position 2
PADDED_CLEAN = make_batch(np.array([[3, 9, 14, 21, 5, 11, 7], [4, 8, 15, 16, 23, 0, 0]], np.int32),
                          np.array([[1] * 7, [1] * 5 + [0] * 2], bool))
PADDED_CORRUPTED = make_batch(np.array([[3, 9, 40, 21, 5, 11, 7], [4, 8, 33, 16, 23, 0, 0]], np.int32),
                              PADDED_CLEAN.mask)


@pytest.mark.parametrize("site, cells", [("attn.q", [(0, 2, 1), (1, 4, 3), (1, 6, 0), (1, 3, 2)]),
                                         ("attn.k", [(0, 2, 1), (1, 2, 0), (1, 4, 1), (0, 6, 0)])])
def test_qk_fix_equals_the_pattern_recomputed_by_hand(saturated, site, cells):
    result = patching.attribution_patching(saturated, PADDED_CLEAN, PADDED_CORRUPTED, METRIC, site=site,
                                           per_position=True, qk_fix=True)
    assert result.axes == ("layer", "position", "head") and result.values.shape[2] == {"attn.q": 4, "attn.k": 2}[site]
    assert "QK fix" in result.method
    for layer, position, head in cells:
        expected = qk_fixed_by_hand(saturated, site, layer, position, head, source=PADDED_CLEAN, target=PADDED_CORRUPTED)
        assert result.values[layer, position, head] - result.corrupted == pytest.approx(expected, abs=1e-5)


@pytest.mark.parametrize("site", ["attn.q", "attn.k"])
def test_qk_fix_is_zero_where_the_patch_changes_nothing(saturated, site):
    """Positions 0 and 1 hold the same tokens in both runs (causal: the same q and k there)."""
    result = patching.attribution_patching(saturated, CLEAN, CORRUPTED, METRIC, site=site, per_position=True, qk_fix=True)
    np.testing.assert_allclose(result.values[:, :2] - result.corrupted, 0.0, atol=1e-6)
    assert np.abs(result.values[:, 2:] - result.corrupted).max() > 1e-3


@pytest.mark.parametrize("site", ["attn.q", "attn.k"])
def test_qk_fix_is_closer_to_the_exact_grid_when_attention_saturates(saturated, site):
    """Last layer (what follows the pattern is nearly linear there): the QK fix tracks the exact grid where the
    gradient through the saturated softmax does not; a layer x head cell patches every position at once."""
    for per_position in (True, None):
        exact = patching.activation_patching(saturated, CLEAN, CORRUPTED, METRIC, site=site, per_position=per_position)
        plain, fixed = (patching.attribution_patching(saturated, CLEAN, CORRUPTED, METRIC, site=site,
                                                      per_position=per_position, qk_fix=fix).values for fix in (False, True))
        plain_error, fixed_error = (np.abs(estimate[1] - exact.values[1]).max() for estimate in (plain, fixed))
        assert fixed_error < plain_error / 2
        if per_position:
            assert np.corrcoef(fixed[1].ravel(), exact.values[1].ravel())[0, 1] > 0.95


def test_result_json_and_figures(model, tmp_path):
    positions = patching.activation_patching(model, CLEAN, CORRUPTED, patching.target_probability(5))
    heads = patching.attribution_patching(model, CLEAN, CORRUPTED, METRIC, site="attn.head_out")
    data = json.loads(json.dumps(positions.to_json()))
    assert data["axes"] == ["layer", "position"] and len(data["labels"]["position"]) == 7
    np.testing.assert_allclose(np.asarray(data["normalised"]),
                               (positions.values - positions.corrupted) / (positions.clean - positions.corrupted), rtol=1e-5)
    assert positions.metric == "target probability" and 0 < positions.clean < 1
    for result, name in ((positions, "positions.png"), (heads, "heads.png")):
        result.figure(tmp_path / name)
        assert (tmp_path / name).stat().st_size > 1000


def test_errors_name_the_argument(model):
    with pytest.raises(ji.ArgumentError, match="clean, corrupted: expected inputs of one shape"):
        patching.activation_patching(model, CLEAN, CORRUPTED[:, :5], METRIC)
    with pytest.raises(ji.ArgumentError, match="site: expected one of"):
        patching.activation_patching(model, CLEAN, CORRUPTED, METRIC, site="attn.probs")
    with pytest.raises(ji.ArgumentError, match=r"value at site 'blocks.0.resid_pre'.*found \(3,\)"):
        model(CORRUPTED, edits=Patch("blocks.0.resid_pre", jnp.zeros(3)))
    with pytest.raises(ji.ArgumentError, match=r"qk_fix, site: qk_fix=True expects site one of \('attn.q', 'attn.k'\), "
                                               r"found site='attn.head_out'"):
        patching.attribution_patching(model, CLEAN, CORRUPTED, METRIC, site="attn.head_out", qk_fix=True)
    with pytest.raises(ji.ArgumentError, match="answer: expected a token id"):
        patching.logit_diff(1.5, 2)


@pytest.mark.slow
def test_smollm2_grid_cells_equal_cell_loop(smollm2):
    clean = "When Mary and John went to the store, John gave a drink to"
    corrupted = "When Mary and John went to the store, Mary gave a drink to"
    mary, john = (smollm2.tokenizer(" " + name)["input_ids"][0] for name in ("Mary", "John"))
    metric = patching.logit_diff(mary, john)
    result = patching.activation_patching(smollm2, clean, corrupted, metric, site="resid_pre")
    captured = smollm2.run(clean, capture=["blocks.*.resid_pre"])
    assert result.values.shape == (30, len(smollm2.encode(clean).tokens[0]))
    for layer, position in [(0, 9), (12, 9), (29, 13), (5, 3)]:
        name = f"blocks.{layer}.resid_pre"
        expected = float(metric(smollm2.run(corrupted, edits=Patch(name, captured[name], positions=position))))
        assert result.values[layer, position] == pytest.approx(expected, rel=1e-5, abs=1e-5)  # f32, batched vs single
    assert result.clean > result.corrupted


def test_cli_patch_writes_json_and_heatmap(tmp_path, capsys):
    from jaxinterp.cli import main
    from jaxinterp.data.vocab import word_tokenizer
    from jaxinterp.models import init_params
    from jaxinterp.models.llama import LlamaConfig

    tokenizer = word_tokenizer("the cat sat on a mat and dog ran far".split())
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4,
                         num_kv_heads=2, head_dim=8)
    folder = ji.save(ji.Model(config, init_params(config, jax.random.key(0)), tokenizer), tmp_path / "tiny")
    args = ["patch", "--model", str(folder), "--clean", "the cat sat on the", "--corrupted", "the dog sat on the",
            "--answer", "mat", "--wrong", "dog", "--out", str(tmp_path / "out")]
    assert main(args) == 0
    assert "wrote" in capsys.readouterr().out
    data = json.loads((tmp_path / "out" / "patch.json").read_text())
    assert data["axes"] == ["layer", "position"] and np.array(data["values"]).shape == (2, 5)
    assert (tmp_path / "out" / "patch.png").stat().st_size > 1000
    assert main([*args, "--corrupted", "the dog sat"]) == 2
    assert "expected inputs of one shape" in capsys.readouterr().err
    assert main([*args, "--site", "attn.k", "--attribution", "--qk-fix"]) == 0
    assert "QK fix" in capsys.readouterr().out
    data = json.loads((tmp_path / "out" / "patch.json").read_text())
    assert data["axes"] == ["layer", "head"] and np.array(data["values"]).shape == (2, 2)  # kv heads
    assert main([*args, "--site", "attn.k", "--qk-fix"]) == 2
    assert "--qk-fix: needs --attribution" in capsys.readouterr().err


def test_cli_patch_sites_are_the_grid_sites():
    from jaxinterp.cli import PATCH_SITES
    from jaxinterp.patching.grid import SITES

    assert PATCH_SITES == SITES
