"""MoA family: eqs. 2-4 against a per-token reference, auxiliary losses with known values, sites,
edits, gradients, cached generation and training."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxinterp as ji
from jaxinterp import models
from jaxinterp.models import registry
from jaxinterp.errors import ConfigError
from jaxinterp.model import Model
from jaxinterp.models import make_batch
from jaxinterp.models.moa import MoAConfig, aux_losses, moa_loss, route
from jaxinterp.models.rope import apply_rotary, inverse_frequencies, rotary_tables

CONFIG = MoAConfig(vocab_size=40, hidden_size=16, intermediate_size=32, num_layers=2, num_experts=4, top_k=2,
                   head_dim=8, eos_token_ids=(1,))
TOKENS = np.array([[5, 9, 2, 7, 3, 11, 4]])


@pytest.fixture(scope="module")
def model():
    params = models.init_params(CONFIG, jax.random.key(0))
    # perturb every weight (the router starts at zero) so that routing differs per token
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(1), len(leaves))
    params = jax.tree.unflatten(tree, [x + 0.5 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)])
    return Model(CONFIG, params)


def test_config_rejects_k_larger_than_the_expert_count_and_registers():
    with pytest.raises(ConfigError, match="top_k: expected 1 <= top_k <= num_experts=4, found 5"):
        MoAConfig(vocab_size=8, hidden_size=8, intermediate_size=8, num_layers=1, num_experts=4, top_k=5, head_dim=4)
    assert registry.family("moa").config is MoAConfig
    assert models.config_from_dict(models.config_to_dict(CONFIG)) == CONFIG


def test_route_keeps_full_softmax_gates_of_the_top_k():
    gates, experts = route(jnp.array([0.0, 1.0, 3.0, 2.0]), 2)
    probs = np.exp([0.0, 1.0, 3.0, 2.0]) / np.exp([0.0, 1.0, 3.0, 2.0]).sum()
    np.testing.assert_array_equal(experts, [2, 3])
    np.testing.assert_allclose(gates, [0.0, 0.0, probs[2], probs[3]], rtol=1e-6)
    all_gates, _ = route(jnp.array([[0.3, -1.0, 2.0]]), 3)
    np.testing.assert_allclose(all_gates.sum(-1), 1.0, rtol=1e-6)


def test_attention_output_is_the_gated_sum_of_selected_experts(model):
    """y_t = sum_{i in top-k} p_{t,i} softmax(q_t W_q^i K^T / sqrt(Dh)) V W_o^i, token by token."""
    run = model.run(TOKENS, capture=["blocks.0.*"])
    p = jax.tree.map(np.asarray, model.params["blocks_0"])
    x = np.asarray(run["blocks.0.resid_pre"][0], np.float64)
    h = x / np.sqrt(np.mean(x**2, -1, keepdims=True) + CONFIG.rms_norm_eps) * p["attn_norm"]["scale"]
    cos, sin = rotary_tables(jnp.arange(TOKENS.shape[1])[None], inverse_frequencies(CONFIG.rope, CONFIG.head_dim))
    rotate = lambda a: np.asarray(apply_rotary(jnp.asarray(a, jnp.float32)[None, :, None], cos, sin))[0, :, 0]  # noqa: E731
    keys = rotate(h @ p["k_proj"]["kernel"][:, 0])
    values = h @ p["v_proj"]["kernel"][:, 0]
    logits = h @ p["router"]
    probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    expected = np.zeros_like(x)
    for t in range(TOKENS.shape[1]):
        for i in np.argsort(-probs[t])[:CONFIG.top_k]:
            q = rotate(h @ p["q_experts"][i])[t]
            scores = keys[: t + 1] @ q / np.sqrt(CONFIG.head_dim)
            attention = np.exp(scores - scores.max()) / np.exp(scores - scores.max()).sum()
            expected[t] += probs[t, i] * (attention @ values[: t + 1]) @ p["o_experts"][i]
    np.testing.assert_allclose(run["blocks.0.attn.out"][0], expected, atol=2e-4, rtol=1e-4)
    assert run["blocks.0.attn.probs"].shape == (1, CONFIG.top_k, 7, 7)


def test_aux_losses_known_values_and_padding():
    # zero router: uniform p = 1/4, ties routed to experts 0 and 1
    logits = jnp.zeros((1, 3, 4))
    gates, _ = route(logits, 2)
    losses = aux_losses(logits, gates, jnp.ones((1, 3), bool))
    assert float(losses["switch"]) == pytest.approx(4 * (0.25 * 0.5 + 0.25 * 0.5))
    assert float(losses["z"]) == pytest.approx(np.log(4) ** 2)
    load = np.array([0.5, 0.5, 0.0, 0.0])
    assert float(losses["cv"]) == pytest.approx(load.var(ddof=1) / load.mean() ** 2, rel=1e-6)
    # a padding token routed elsewhere changes nothing but the z-loss (which the code takes over all tokens)
    logits = jnp.concatenate([jnp.zeros((1, 3, 4)), jnp.array([[[0.0, 0.0, 9.0, 9.0]]])], 1)
    gates, _ = route(logits, 2)
    padded = aux_losses(logits, gates, jnp.array([[True, True, True, False]]))
    assert float(padded["switch"]) == pytest.approx(float(losses["switch"]))
    assert float(padded["cv"]) == pytest.approx(float(losses["cv"]))


def test_loss_scalings_and_training_with_optax(model):
    batch = make_batch(np.tile(np.arange(2, 18), (2, 1)))
    targets = jnp.roll(batch.tokens, -1, axis=1)
    sites = ("blocks.*.attn.router_logits", "blocks.*.attn.gates")

    config = dataclasses.replace(CONFIG, num_layers=1)

    def loss(params, scaling="per_token_mean"):
        output, captured = models.forward(config, params, batch, capture=sites)
        return moa_loss(output.logits, targets, batch.mask, captured, num_layers=1, aux_loss_scaling=scaling)

    params = models.init_params(config, jax.random.key(2))
    total, parts = loss(params)
    aux = 0.01 * parts["switch"] + 0.001 * parts["z"]
    assert float(total) == pytest.approx(float(parts["ce"] + aux), rel=1e-6)
    fairseq, _ = loss(params, "fairseq_sum")
    assert float(fairseq) == pytest.approx(float(parts["ce"] + aux / 32), rel=1e-6)
    optimizer = optax.adam(1e-2)
    state = optimizer.init(params)
    step = jax.jit(lambda p, s: (lambda l, g: (*optimizer.update(g, s, p), l))(*jax.value_and_grad(lambda q: loss(q)[0])(p)))
    for _ in range(40):
        updates, state, _ = step(params, state)
        params = optax.apply_updates(params, updates)
    assert float(loss(params)[1]["ce"]) < 0.3 * float(parts["ce"])
    assert float(jnp.abs(params["blocks_0"]["router"]).max()) > 0  # the router learns from zero


def test_sites_edits_and_gradients_work_as_on_any_family(model):
    plain = model.run(TOKENS)
    identity = ji.FunctionEdit(patterns=("blocks.*",), fn=lambda x, ctx, args: x)
    np.testing.assert_allclose(model(TOKENS, edits=identity), plain.logits, atol=1e-6)
    shapes = model.site_shapes(TOKENS)
    zero = {"blocks.1.attn.gates": jnp.zeros(shapes["blocks.1.attn.gates"].shape)}
    np.testing.assert_allclose(model.run(TOKENS, deltas=zero).logits, plain.logits, atol=1e-6)
    no_gates = ji.FunctionEdit(patterns=("blocks.0.attn.gates",), fn=lambda x, ctx, args: jnp.zeros_like(x))
    assert float(jnp.abs(model.run(TOKENS, edits=no_gates, capture=["blocks.0.attn.out"])["blocks.0.attn.out"]).max()) == 0.0
    ablated = model(TOKENS, edits=ji.ScaleHead(layer=1, head=0, scale=0.0))
    assert float(jnp.abs(ablated - plain.logits).max()) > 1e-3

    def objective(run):
        return jax.nn.log_softmax(run.logits[0, -1])[3]

    site = "blocks.1.attn.gates"
    _, grads = model.grad(objective, TOKENS, wrt=[site])
    direction = jax.random.normal(jax.random.key(3), grads[site].shape)
    at = lambda s: float(objective(model.run(TOKENS, deltas={site: s * direction})))  # noqa: E731
    finite = (at(1e-2) - at(-1e-2)) / 2e-2
    assert finite == pytest.approx(float(jnp.vdot(grads[site], direction)), rel=2e-2, abs=1e-4)


def test_cached_generation_matches_full_forward_decoding(model):
    generated = list(model.generate(make_batch(TOKENS), max_new_tokens=5).tokens[0])
    sequence = np.array([list(TOKENS[0]) + generated])
    greedy = np.argmax(model(sequence[:, :-1])[0], -1)  # causal: position t predicts token t + 1
    assert len(generated) > 1 and list(greedy[TOKENS.shape[1] - 1:]) == generated
