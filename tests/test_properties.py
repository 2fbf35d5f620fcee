"""Property tests (hypothesis): edits, site patterns and conversion, on random inputs.

- Any valid composition of edits keeps every output shape and dtype (checked abstractly,
  with `jax.eval_shape`, so no example compiles), and a composition of identity edits
  changes nothing.
- Any site pattern either resolves to exactly the sites it matches, in forward order, or
  raises the documented `SiteError`.
- Random tiny configurations convert and match transformers.

Examples are derandomised and bounded; `JAXINTERP_SOAK=1` runs many more, freely.
"""

from __future__ import annotations

import fnmatch
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import jaxinterp as ji
from jaxinterp.models import make_batch

SOAK = bool(os.environ.get("JAXINTERP_SOAK"))


def bounded(examples: int) -> settings:
    return settings(max_examples=examples * 25 if SOAK else examples, derandomize=not SOAK, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


TOKENS = np.array([[3, 17, 42, 8, 91, 5], [7, 7, 60, 2, 0, 0]], np.int32)
MASK = np.array([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]], bool)
CAPTURE = ("blocks.*.attn.probs", "blocks.*.attn.head_out", "blocks.*.resid_post", "final_norm")
SITE_PATTERNS = ("blocks.*.attn.q", "blocks.1.attn.v", "blocks.*.attn.scores", "blocks.0.mlp.out", "embed",
                 "blocks.?.resid_mid", "final_norm", "blocks.*")


@pytest.fixture(scope="module")
def smol(tiny_checkpoint):
    folder, _ = tiny_checkpoint("smol")
    return ji.load(folder, progress=False)


def _scaled(x, ctx, factor):
    return x * jnp.asarray(factor, x.dtype)


def _identity(x, ctx, args):
    return x


def _tempered(scores, ctx):
    return jax.nn.softmax(scores / 2.0, axis=-1)


def _softmax(scores, ctx):
    return jax.nn.softmax(scores, axis=-1)


numbers = st.floats(-4, 4, allow_nan=False, width=32)
layers = st.integers(0, 1)
heads = st.one_of(st.integers(0, 3), hnp.arrays(np.int32, st.integers(1, 4), elements=st.integers(0, 3)))
positions = st.one_of(st.none(), hnp.arrays(np.int32, st.integers(1, 3), elements=st.integers(0, 7)))
residual_sites = st.sampled_from(["resid_pre", "resid_mid", "resid_post"])


def vectors(size: int):
    return hnp.arrays(np.float32, size, elements=numbers)


EDITS = st.one_of(
    st.builds(ji.ScaleHead, layer=layers, head=heads, scale=numbers),
    st.builds(ji.SetHead, layer=layers, head=heads, value=st.one_of(numbers, vectors(16))),
    st.builds(ji.AddToResidual, layer=layers, vector=vectors(64), positions=positions, site=residual_sites),
    st.builds(ji.PatternFromScores, layers=st.sets(layers, min_size=1).map(tuple), fn=st.just(_tempered)),
    st.builds(ji.FunctionEdit, patterns=st.sampled_from(SITE_PATTERNS).map(lambda p: (p,)), fn=st.just(_scaled),
              args=numbers),
)
IDENTITY_EDITS = st.one_of(
    st.builds(ji.ScaleHead, layer=layers, head=heads, scale=st.just(1.0)),
    st.builds(ji.AddToResidual, layer=layers, vector=st.just(np.zeros(64, np.float32)), positions=positions,
              site=residual_sites),
    st.builds(ji.PatternFromScores, layers=st.sets(layers, min_size=1).map(tuple), fn=st.just(_softmax)),
    st.builds(ji.FunctionEdit, patterns=st.sampled_from(SITE_PATTERNS).map(lambda p: (p,)), fn=st.just(_identity)),
)


def _abstract_run(model: ji.Model, edits) -> dict:
    run = jax.eval_shape(lambda: model.run(make_batch(TOKENS, MASK), edits=edits, capture=CAPTURE))
    return jax.tree.map(lambda x: (x.shape, x.dtype), {"logits": run.logits, "captured": run.captured})


@bounded(40)
@given(edits=st.lists(EDITS, max_size=6))
def test_edit_compositions_never_change_output_shapes(smol, edits):
    assert _abstract_run(smol, edits) == _abstract_run(smol, ())


@bounded(5)
@given(edits=st.lists(IDENTITY_EDITS, min_size=1, max_size=4))
def test_a_composition_of_identity_edits_changes_nothing(smol, edits):
    batch = make_batch(TOKENS, MASK)
    np.testing.assert_allclose(np.asarray(smol(batch, edits=edits))[MASK], np.asarray(smol(batch))[MASK],
                               rtol=0, atol=1e-5)


PATTERN_PIECES = ["blocks", ".", "0", "1", "2", "10", "*", "?", "[", "]", "!", "-", "attn", "mlp", "q", "k", "v",
                  "probs", "scores", "head_out", "resid_", "pre", "post", "logits", "embed", "final_norm", "\\", "^"]
PATTERNS = st.one_of(st.lists(st.sampled_from(PATTERN_PIECES), max_size=8).map("".join), st.text(max_size=12))


@bounded(200)
@given(pattern=PATTERNS)
def test_site_patterns_resolve_to_their_matches_or_raise_site_error(smol, pattern):
    matched = [name for name in smol.sites if fnmatch.fnmatchcase(name, pattern)]
    if matched:
        assert smol.resolve_capture(pattern) == tuple(matched)
        return
    with pytest.raises(ji.SiteError, match="matches no site"):
        smol.resolve_capture(pattern)
    with pytest.raises(ji.SiteError, match="matches no site"):
        smol.run(TOKENS, edits=ji.FunctionEdit((pattern,), _identity))
    with pytest.raises(ji.SiteError, match="matches no site"):
        smol.grad(lambda run: run.logits.sum(), TOKENS, wrt=[pattern])


@st.composite
def tiny_configs(draw):
    """A random tiny transformers config of a supported family."""
    import transformers

    family = draw(st.sampled_from(["llama", "qwen2", "mistral", "gpt2"]))
    heads = draw(st.sampled_from([1, 2, 4]))
    head_dim = draw(st.sampled_from([8, 16]))
    common = dict(vocab_size=draw(st.sampled_from([32, 96])), tie_word_embeddings=draw(st.booleans()))
    if family == "gpt2":
        return _gpt2(heads * head_dim, draw(st.integers(1, 2)), heads, common["vocab_size"],
                     tied=common["tie_word_embeddings"])
    kv_heads = draw(st.sampled_from([k for k in (1, 2, 4) if heads % k == 0]))
    shared = dict(hidden_size=draw(st.sampled_from([heads * head_dim, 32])), num_attention_heads=heads,
                  num_key_value_heads=kv_heads, head_dim=head_dim, intermediate_size=draw(st.sampled_from([16, 48])),
                  num_hidden_layers=draw(st.integers(1, 2)), max_position_embeddings=64,
                  rope_theta=draw(st.sampled_from([1e4, 1e6])), **common)
    if family == "llama":
        return transformers.LlamaConfig(**shared, attention_bias=draw(st.booleans()), mlp_bias=draw(st.booleans()))
    if family == "qwen2":
        return transformers.Qwen2Config(**shared)
    return transformers.MistralConfig(**shared, sliding_window=draw(st.sampled_from([None, 3])))


def _gpt2(width: int, layers: int, heads: int, vocab: int, *, tied: bool):
    import transformers

    return transformers.GPT2Config(n_embd=width, n_layer=layers, n_head=heads, n_positions=32, bos_token_id=0,
                                   eos_token_id=1, vocab_size=vocab, tie_word_embeddings=tied)


def _converted_matches_transformers(config, seed: int, folder) -> None:
    """Builds a random transformers model of `config`, loads its saved checkpoint, compares logits."""
    torch = pytest.importorskip("torch")
    import transformers

    from tests import hf_tiny

    torch.manual_seed(seed)
    config._attn_implementation = "eager"
    reference = hf_tiny.redraw(transformers.AutoModelForCausalLM.from_config(config, attn_implementation="eager").eval())
    reference.save_pretrained(folder)
    model = ji.load(str(folder), progress=False)
    tokens = TOKENS % config.vocab_size
    ours = np.asarray(model(make_batch(tokens, MASK)))
    np.testing.assert_allclose(ours[MASK], hf_tiny.reference_logits(reference, tokens, MASK)[MASK], atol=1e-4, rtol=0)


@settings(bounded(4), phases=[Phase.explicit, Phase.generate])  # no shrinking: each example converts a model
@given(config=tiny_configs(), seed=st.integers(0, 1000))
def test_random_tiny_configs_convert_and_match_transformers(config, seed, tmp_path_factory):
    _converted_matches_transformers(config, seed, tmp_path_factory.mktemp("config"))


def test_an_untied_gpt2_matches_transformers(tmp_path):
    _converted_matches_transformers(_gpt2(32, 1, 2, 32, tied=False), 0, tmp_path)
