"""Latent reasoning: the Coconut/CODI loop against an explicit re-embedding loop, interventions, probes."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxinterp as ji
from jaxinterp.methods import latent
from jaxinterp.methods import latent_interventions as li
from jaxinterp.methods import latent_probes as lp
from jaxinterp.models import init_params, make_batch
from jaxinterp.models.llama import LlamaConfig

BOT, LATENT, EOT, PAD = 20, 21, 22, 23


@pytest.fixture(scope="module")
def tiny():
    config = LlamaConfig(vocab_size=24, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4,
                         num_kv_heads=2, head_dim=8, tie_word_embeddings=True)
    return ji.Model(config, init_params(config, jax.random.key(2)))


@pytest.fixture(scope="module")
def prompt():
    return latent.latent_prompt([[1, 2, 3], [4, 5]], k=3, bot=BOT, latent=LATENT, eot=EOT, pad=PAD)


def _embeds(model, batch, thoughts, slots):
    """Input embeddings of `batch` with the thoughts placed at their slots (via Batch.embeds, not the edit)."""
    x = np.asarray(model.params["embed"])[np.asarray(batch.tokens)]
    positions = np.asarray(batch.positions)
    for b in range(x.shape[0]):
        for j, slot in enumerate(np.asarray(slots)[b]):
            x[b, np.flatnonzero(positions[b] == slot)[-1]] = thoughts[b, j]
    return x


def _reference_thoughts(model, batch, slots, projection=None):
    z = np.zeros((*slots.shape, model.config.hidden_size), np.float32)
    for j in range(slots.shape[1]):
        run = model.run(make_batch(batch.tokens, batch.mask, embeds=jnp.asarray(_embeds(model, batch, z, slots))),
                        capture=["final_norm"])
        for b in range(slots.shape[0]):
            column = np.flatnonzero(np.asarray(batch.positions[b]) == int(slots[b, j]))[-1]
            h = run["final_norm"][b, column - 1]
            z[b, j] = h if projection is None else projection(h)
    return z


def test_latent_prompt_layout(prompt):
    batch, slots = prompt
    assert batch.tokens.tolist() == [[1, 2, 3, BOT, LATENT, LATENT, LATENT, EOT], [PAD, 4, 5, BOT, LATENT, LATENT, LATENT, EOT]]
    assert slots.tolist() == [[4, 5, 6], [3, 4, 5]]


@pytest.mark.parametrize("codi", [False, True])
def test_thoughts_equal_an_explicit_feed_back_loop(tiny, prompt, codi):
    batch, slots = prompt
    projection = latent.CodiProjection.init(jax.random.key(5), 32, 16) if codi else None
    z = latent.continuous_thoughts(tiny, batch, slots, projection=projection)
    np.testing.assert_allclose(z, _reference_thoughts(tiny, batch, slots, projection), atol=1e-5)
    # and the decoding prompt sees the same embeddings either way
    logits = tiny(batch, edits=latent.write_thoughts(z, slots))
    direct = tiny(make_batch(batch.tokens, batch.mask, embeds=jnp.asarray(_embeds(tiny, batch, np.asarray(z), slots))))
    np.testing.assert_allclose(logits, direct, atol=1e-5)


def test_generation_with_thoughts_matches_recomputed_greedy(tiny, prompt):
    batch, slots = prompt
    z = latent.continuous_thoughts(tiny, batch, slots)
    out = tiny.generate(batch, 3, edits=latent.write_thoughts(z, slots), stop=[])
    first = np.argmax(np.asarray(tiny(batch, edits=latent.write_thoughts(z, slots)))[:, -1], axis=-1)
    assert [row[0] for row in out.tokens] == first.tolist()


def test_slerp():
    u, v = jnp.array([[1.0, 0.0]]), jnp.array([[0.0, 2.0]])
    np.testing.assert_allclose(li.slerp(u, v, 0.0), u, atol=1e-6)
    np.testing.assert_allclose(li.slerp(u, v, 1.0), [[0.0, 1.0]], atol=1e-6)
    np.testing.assert_allclose(li.slerp(u, v, 1 / 3), [[np.cos(np.pi / 6), np.sin(np.pi / 6)]], atol=1e-6)
    np.testing.assert_allclose(li.slerp(u, u * 3, 0.5), u, atol=1e-6)  # parallel: normalised lerp


def _apply(edit, z):
    """Run a SlotTransform's function on thoughts z [B, K, D] directly."""
    return edit.fn(jnp.asarray(z), edit.args)


def test_interventions_follow_their_equations():
    rng = np.random.default_rng(0)
    z = jnp.asarray(rng.normal(size=(2, 6, 8)), jnp.float32)
    slots = jnp.zeros((2, 6), jnp.int32)
    identity = lambda params, x: x  # noqa: E731
    np.testing.assert_allclose(_apply(li.mapper_transport(slots, identity, None), z), z, atol=1e-5)
    anchor = jnp.asarray(rng.normal(size=(2, 8)), jnp.float32)
    moved = _apply(li.anchor_slerp(slots, anchor, alpha=0.1), z)
    np.testing.assert_allclose(jnp.linalg.norm(moved[:, 1], axis=-1), jnp.linalg.norm(z[:, 1], axis=-1), rtol=1e-5)
    assert float(jnp.min(lp.cosine(moved[:, 1], anchor) - lp.cosine(z[:, 1], anchor))) > 0
    np.testing.assert_allclose(np.delete(np.asarray(moved), 1, axis=1), np.delete(np.asarray(z), 1, axis=1))
    g = jnp.asarray(rng.normal(size=(2, 8)), jnp.float32)
    stepped = _apply(li.gradient_step(slots, g, eta=0.2), z)
    np.testing.assert_allclose(jnp.linalg.norm(stepped[:, 1] - z[:, 1], axis=-1), 0.2 * jnp.linalg.norm(z[:, 1], axis=-1), rtol=1e-4)
    expected = jnp.ones_like(z)
    np.testing.assert_allclose(_apply(li.tied_projection(slots, expected, alpha=0.2), z), 0.8 * z + 0.2, rtol=1e-6)
    steep = lambda params, h: 1e6 * jnp.sum(h, -1)  # noqa: E731  # a huge gradient: the step is clipped
    descended = _apply(li.energy_descent(slots, steep, None, rho=0.25), z)
    np.testing.assert_allclose(jnp.linalg.norm(descended - z, axis=-1), 0.25 * jnp.linalg.norm(z, axis=-1), rtol=1e-4)


def test_gradient_step_lowers_the_gold_answer_loss(tiny, prompt):
    batch, slots = prompt
    z = latent.continuous_thoughts(tiny, batch, slots)
    answers = jnp.array([[7, 8], [9, 10]])
    g = latent.answer_gradient(tiny, batch, slots, z, answers)
    assert g.shape == z.shape
    before = latent.answer_log_prob(tiny, batch, answers, edits=latent.write_thoughts(z, slots))
    edits = (latent.write_thoughts(z, slots), li.gradient_step(slots, g[:, 1], eta=0.05))
    after = latent.answer_log_prob(tiny, batch, answers, edits=edits)
    assert np.all(np.asarray(after) > np.asarray(before))


def test_cka_mapper_lens_energy_and_retrieval(tiny):
    rng = np.random.default_rng(1)
    z = rng.normal(size=(400, 16)).astype(np.float32)
    rotation = np.linalg.qr(rng.normal(size=(16, 16)))[0]
    assert float(lp.linear_cka(z, 3 * z @ rotation)) == pytest.approx(1.0, abs=1e-5)
    assert float(lp.linear_cka(z, rng.normal(size=(400, 16)))) < 0.2
    params, report = lp.train_mapper(z, z @ rotation, hidden=None, epochs=60, lr=1e-2)
    assert report["val_cosine"] > 0.95 > report["identity_cosine"] + 0.5
    tokens = np.array([[1, 2, 3, 4]], np.int32)
    run = tiny.run(tokens, capture=["final_norm", f"blocks.{tiny.config.num_layers - 1}.resid_post"])
    np.testing.assert_allclose(lp.logit_lens(tiny, run["final_norm"][0], renormalise=False), run.logits[0], atol=1e-4)
    np.testing.assert_allclose(lp.logit_lens(tiny, run["blocks.1.resid_post"][0]), run.logits[0], atol=1e-4)
    embedding = np.eye(4, 16)
    assert lp.nearest_token(embedding, np.eye(4, 16)[[2, 0]] * 5).tolist() == [2, 0]
    direction = rng.normal(size=16).astype(np.float32)
    chains = rng.normal(size=(128, 4, 16)).astype(np.float32) * 0.1 - np.arange(4)[None, :, None] * direction
    energy = lp.train_energy(chains, hidden=32, epochs=30)
    assert lp.monotone_fraction(energy, chains) > 0.9
    bank_keys, bank_values = np.eye(3, 16), np.arange(3 * 16).reshape(3, 16)
    np.testing.assert_array_equal(lp.retrieve_anchors(np.eye(3, 16)[[1]] + 0.1, bank_keys, bank_values), bank_values[[1]])
    assert lp.flip_rate([1, 2, 3, 4], [1, 2, 0, 4]) == 0.25
