"""Inputs outside the model: tokens, lengths, generation arguments and edit numbers.

Every form of input (raw ids, a `Batch`) is checked for token range, and for families with
a learned position table for length; `generate` refuses an empty stop string, stop ids and
`top_k` outside the vocabulary; edits check their numbers when a model resolves them (a head
index past the head count, a NaN steering vector). Each refusal is a one-line
`ArgumentError`; a probe that runs past its bound fails.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxinterp as ji
from jaxinterp import models
from jaxinterp.models.gpt2 import GPT2Config
from jaxinterp.models.llama import LlamaConfig
from tests.hostile import one_clean_line, within

LLAMA = LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_layers=2, num_heads=2, num_kv_heads=1,
                    head_dim=8, max_position_embeddings=64)
GPT2 = GPT2Config(vocab_size=32, hidden_size=16, intermediate_size=32, num_layers=1, num_heads=2,
                  max_position_embeddings=8)


@pytest.fixture(scope="module")
def llama():
    return ji.Model(LLAMA, models.init_params(LLAMA, jax.random.key(0)))


@pytest.fixture(scope="module")
def gpt2():
    return ji.Model(GPT2, models.init_params(GPT2, jax.random.key(0)))


def _refused(call, *needles: str) -> None:
    with within(60), pytest.raises(ji.ArgumentError) as error:
        call()
    message = str(error.value)
    one_clean_line(message)
    for needle in needles:
        assert needle in message, message


@pytest.mark.parametrize("bad", [32, -1, 10**6])
def test_token_ids_out_of_range_inside_a_batch_are_refused(llama, bad):
    batch = ji.models.make_batch(jnp.array([[1, 2, bad]], jnp.int32))
    _refused(lambda: llama.run(batch), "token ids must lie in [0, 32)")
    _refused(lambda: llama.run(np.array([[1, bad]])), "token ids must lie in [0, 32)")


def test_pads_and_spliced_embeddings_may_hold_any_id(llama):
    batch = ji.models.make_batch(jnp.array([[99, 1, 2]], jnp.int32), jnp.array([[False, True, True]]))
    assert llama.run(batch).logits.shape == (1, 3, 32)
    spliced = ji.models.make_batch(jnp.array([[99, 1]], jnp.int32), embeds=jnp.zeros((1, 2, 16)),
                                   embeds_mask=jnp.array([[True, False]]))
    assert llama.run(spliced).logits.shape == (1, 2, 32)


def test_a_gpt2_prompt_longer_than_its_learned_positions_is_refused(gpt2):
    _refused(lambda: gpt2.run(np.arange(9)[None] % 32), "positions must lie in [0, 8)", "9 tokens")
    assert gpt2.run(np.arange(8)[None]).logits.shape == (1, 8, 32)


@pytest.mark.parametrize("kwargs, needles", [
    ({"stop": ""}, ("stop", "empty string")),
    ({"stop": ["ok", ""]}, ("stop", "empty string")),
    ({"stop": 32}, ("stop", "[0, 32)")),
    ({"top_k": 33}, ("top_k", "1..32")),
    ({"top_k": 0}, ("top_k", "1..32")),
])
def test_generation_arguments_outside_the_model_are_refused(llama, kwargs, needles):
    prompt = ji.models.make_batch(jnp.array([[1, 2, 3]], jnp.int32))
    _refused(lambda: llama.generate(prompt, 2, **kwargs), *needles)


@pytest.mark.parametrize("vector", [np.full(16, np.nan, np.float32), np.array([0.0] * 15 + [np.inf], np.float32)])
def test_a_non_finite_steering_vector_is_refused_before_generating(llama, vector):
    prompt = ji.models.make_batch(jnp.array([[1, 2, 3]], jnp.int32))
    steer = ji.AddToResidual(layer=0, vector=jnp.asarray(vector))
    _refused(lambda: llama.generate(prompt, 2, edits=steer), "AddToResidual", "expected finite numbers")
    _refused(lambda: llama.run(prompt, edits=steer), "AddToResidual", "expected finite numbers")


@pytest.mark.parametrize("edit", [ji.ScaleHead(layer=0, head=2, scale=0.0), ji.SetHead(layer=1, head=np.array([0, 5])),
                                  ji.ScaleHead(layer=0, head=-1), ji.SetHead(layer=0, head=0.5)])
def test_a_head_index_past_the_head_count_is_refused(llama, edit):
    _refused(lambda: llama.run(np.array([[1, 2]]), edits=edit), type(edit).__name__, "expected indices in [0, 2)")


def test_head_edits_inside_the_range_and_traced_still_work(llama):
    tokens = np.array([[1, 2, 3]])
    plain = llama.run(tokens).logits
    ablated = llama.run(tokens, edits=ji.ScaleHead(layer=0, head=1, scale=0.0)).logits
    assert not np.allclose(plain, ablated)

    @jax.jit
    def scaled(head):
        return llama.run(tokens, edits=ji.ScaleHead(layer=0, head=head, scale=0.0)).logits

    np.testing.assert_allclose(scaled(jnp.int32(1)), ablated, atol=1e-6)


def test_an_edit_value_of_the_wrong_width_is_a_site_error(llama):
    """Found by the soak: a steering vector one wider than the residual ended in a raw TypeError."""
    wide = ji.AddToResidual(layer=0, vector=jnp.ones(17))
    with within(60), pytest.raises(ji.SiteError, match=r"AddToResidual at site 'blocks.0.resid_post' does not fit"):
        llama.run(np.array([[1, 2]]), edits=wide)
    with within(60), pytest.raises(ji.SiteError, match="SetHead"):
        llama.run(np.array([[1, 2]]), edits=ji.SetHead(layer=0, head=0, value=jnp.ones(3)))


def test_generate_takes_token_ids_as_run_does(llama):
    """Found by the soak: token ids given to `generate` were taken for text."""
    ids = np.array([[1, 2, 3]])
    from_ids = llama.generate(ids, 3).tokens
    np.testing.assert_array_equal(from_ids, llama.generate(ji.models.make_batch(jnp.asarray(ids, jnp.int32)), 3).tokens)
    _refused(lambda: llama.generate(ids, 3, chat=True), "chat", "found token ids")
