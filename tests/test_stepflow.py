"""StepFlow: exact OEB projection, the in-loop label tracker, SMI's injected mean, strength 0 = plain."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxinterp as ji
from jaxinterp.methods import stepflow as sf
from jaxinterp.models import init_params, make_batch, segment_id
from jaxinterp.models.llama import LlamaConfig
from jaxinterp.models.masks import MASKED

VOCAB = 40


@pytest.fixture(scope="module")
def tiny():
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_layers=4, num_heads=4,
                         num_kv_heads=2, head_dim=8, eos_token_ids=(39,))
    return ji.Model(config, init_params(config, jax.random.key(1)))


def _masses(z, groups):
    p = jax.nn.softmax(z)
    return [float(p[g].sum()) for g in groups]


def test_bridge_projection_hits_the_target_masses_and_leaves_o_untouched():
    z = jnp.array([-1.0, 1.0, 0.5, 3.0, 2.0, MASKED])
    bridge = jnp.array([1, 0, 0, 0, 0, 0], bool)
    current = jnp.array([0, 0, 0, 1, 1, 0], bool)
    visible = jnp.array([1, 1, 1, 1, 1, 0], bool)
    others = np.array([1, 2])
    shift = sf.bridge_projection(z, current, bridge, visible, tau_max=0.15)
    p_b, p_s, p_o = _masses(z, [bridge, current, others])
    assert p_b < 0.15  # so the rule triggers
    tau_b = min(np.sqrt(1 / 3), 0.15)
    q_b, q_s, q_o = _masses(z + shift, [bridge, current, others])
    assert q_b == pytest.approx(tau_b, abs=1e-6)
    assert q_s == pytest.approx(1 - p_o - tau_b, abs=1e-6)
    assert q_o == pytest.approx(p_o, abs=1e-6)
    assert np.all(np.asarray(shift)[others] == 0.0) and float(shift[5]) == 0.0
    # within a group the ratios are kept: one constant shift per group (Eq. 7)
    assert float(shift[3]) == pytest.approx(float(shift[4]))
    # the closed form is the KL projection: no other q with the same group masses is closer
    q = jax.nn.softmax(z + shift)[:5]
    p = jax.nn.softmax(z)[:5]
    kl = lambda a: float(jnp.sum(a * jnp.log(a / p)))  # noqa: E731
    tilted = q.at[3].add(0.01).at[4].add(-0.01)
    assert kl(q) < kl(tilted)


def test_bridge_projection_is_a_no_op_when_the_bridge_already_has_its_mass():
    z = jnp.array([3.0, 1.0, 0.0, 0.0])
    shift = sf.bridge_projection(z, jnp.array([0, 0, 1, 1], bool), jnp.array([1, 0, 0, 0], bool), jnp.ones(4, bool))
    assert np.all(np.asarray(shift) == 0.0)
    empty = sf.bridge_projection(z, jnp.array([0, 0, 1, 1], bool), jnp.zeros(4, bool), jnp.ones(4, bool))
    assert np.all(np.asarray(empty) == 0.0)


def _labeler(**kw):
    boundary = jnp.zeros(VOCAB, bool).at[7].set(True)  # token 7 ends a sentence
    return sf.TraceLabeler(boundary=boundary, summary_marker=jnp.array([-1, 20, 21]),
                           thinking_marker=jnp.array([-1, -1, -1]), **kw)


def test_trace_labeler_tracks_segments_and_steps():
    labeler = _labeler(min_step_tokens=2)
    state = labeler.init(make_batch(np.zeros((1, 3), np.int32)))
    stream = [5, 7, 7, 5, 5, 7, 20, 21, 9, 9]
    segments, steps = [], []
    for token in stream:
        state, seg, step = labeler.label(state, jnp.array([token]))
        segments.append(int(seg[0]))
        steps.append(int(step[0]))
    t, s = segment_id("thinking"), segment_id("summary")
    assert segments == [t] * 8 + [s, s]
    # the second 7 closes nothing (step too short); the marker 20 21 opens a summary step
    assert steps == [1, 1, 2, 2, 2, 2, 3, 3, 4, 4]


def test_step_momentum_adds_alpha_times_the_previous_step_mean(tiny):
    tokens = np.arange(1, 11, dtype=np.int32)[None]
    steps = np.array([[0, 0, 1, 1, 1, 2, 2, 2, 2, 3]])
    segments = np.where(steps > 0, segment_id("thinking"), segment_id("prompt"))
    batch = make_batch(tokens, segments=segments, steps=steps)
    sites = ["blocks.2.attn.head_out", "blocks.2.attn.v"]
    plain = tiny.run(batch, capture=sites)
    for window, expected_keys in ((None, {5: [2, 3, 4], 9: [5, 6, 7, 8]}), (2, {5: [3, 4], 9: [7, 8]})):
        edit = sf.StepMomentum(layers=(2,), alpha=0.5, window=window, decode_only=False)
        edited = tiny.run(batch, capture=sites, edits=edit)
        diff = np.asarray(edited["blocks.2.attn.head_out"] - plain["blocks.2.attn.head_out"])[0]
        values = np.repeat(np.asarray(plain["blocks.2.attn.v"])[0], 2, axis=1)  # [T, H, Dh]
        for t in range(10):
            # step 1 starts at t=2 but its previous step is the prompt, outside the thinking phase
            want = 0.5 * values[expected_keys[t]].mean(0) if t in expected_keys else 0.0
            np.testing.assert_allclose(diff[t], want, atol=1e-6)


def _prompt():
    return make_batch(np.array([[3, 4, 5, 6, 8, 9, 10, 11]], np.int32))


def test_stepflow_at_strength_zero_is_plain_generation(tiny):
    plain = tiny.generate(_prompt(), 24, labeler=_labeler())
    off = tiny.generate(_prompt(), 24, labeler=_labeler(), edits=sf.stepflow(4, strength=0.0))
    on = tiny.generate(_prompt(), 24, labeler=_labeler(), edits=sf.stepflow(4, tau_max=0.9, alpha=20.0))
    assert off.tokens == plain.tokens
    assert on.tokens != plain.tokens  # the same edits at full strength do act


def test_stepflow_defaults_to_the_released_configuration_and_names_the_variant():
    oeb, smi = sf.stepflow(8)
    assert (oeb.layers, smi.layers, smi.window) == ((0, 1), (6,), 4)
    _, variant = sf.stepflow(8, variant="all_deep_whole_step")
    assert (variant.layers, variant.window) == ((6, 7), None)
    with pytest.raises(ji.ArgumentError, match="variant"):
        sf.stepflow(8, variant="paper")


def _labels(labeler, prompt, tokens):
    """The (segments, steps) the labeler gives the generated tokens, replayed outside the loop."""
    state, segments, steps = labeler.init(prompt), [], []
    for token in tokens:
        state, segment, step = labeler.label(state, jnp.array([token]))
        segments.append(int(segment[0]))
        steps.append(int(step[0]))
    return segments, steps


@pytest.mark.parametrize("variant", sf.SMI_VARIANTS)
def test_cached_decoding_equals_recomputing_the_whole_sequence(tiny, variant):
    """Each decode step's logits (edits on its one new row, over the cached keys) equal the
    logits of one full forward over prompt + generated tokens with the edits on every row."""
    labeler = _labeler(min_step_tokens=2).replace(boundary=jnp.arange(VOCAB) % 2 == 0)  # even tokens end steps
    edits = sf.stepflow(4, tau_max=0.9, alpha=5.0, variant=variant)
    run = tiny.generate(_prompt(), 16, labeler=labeler, edits=edits, capture=["logits"])
    generated = run.tokens[0]
    segments, steps = _labels(labeler, _prompt(), generated)
    assert len(set(steps)) > 2  # several step boundaries, so SMI fires
    tokens = np.concatenate([np.asarray(_prompt().tokens[0]), generated])[None]
    batch = make_batch(tokens.astype(np.int32), segments=np.array([[segment_id("prompt")] * 8 + segments]),
                       steps=np.array([[0] * 8 + steps]))
    everywhere = tuple(edit.replace(decode_only=False) for edit in edits)
    full = np.asarray(tiny(batch, edits=everywhere))[0]
    cached = np.asarray(run.captured_steps["logits"])[: len(generated) - 1, 0, 0]
    np.testing.assert_allclose(cached, full[8:-1], atol=2e-5)
    np.testing.assert_allclose(np.asarray(run.captured_prefill["logits"])[0, -1], full[7], atol=2e-5)
    assert not np.allclose(full, np.asarray(tiny(batch)))  # the edits act


def test_bridge_groups_thinking_to_prompt_and_summary_to_thinking(tiny):
    """Known groups: a thinking query's bridge is the prompt, its current group thinking; a summary
    query's bridge is thinking, its current group summary, the prompt untouched; prompt queries unedited."""
    p, t, s = segment_id("prompt"), segment_id("thinking"), segment_id("summary")
    segments = np.array([[p, p, p, t, t, t, t, s, s, s]])
    batch = make_batch(np.arange(1, 11, dtype=np.int32)[None], segments=segments)
    site = "blocks.0.attn.scores"
    plain = np.asarray(tiny.run(batch, capture=[site])[site])[0]
    edit = sf.OddsEqualBridge(layers=(0,), tau_max=0.9, decode_only=False)
    shift = np.asarray(tiny.run(batch, capture=[site], edits=edit)[site])[0] - plain  # [H, T, S]
    np.testing.assert_array_equal(shift[:, :3], 0.0)
    groups = {t: ([0, 1, 2], [3, 4, 5, 6]), s: ([3, 4, 5, 6], [7, 8, 9])}  # (bridge, current) keys
    for query in range(3, 10):
        bridge, current = (np.array([k for k in g if k <= query]) for g in groups[segments[0, query]])
        for head in range(4):
            z = plain[head, query, : query + 1]
            prob = np.exp(z - z.max()) / np.exp(z - z.max()).sum()
            p_b, p_s = prob[bridge].sum(), prob[current].sum()
            tau_b = min(np.sqrt(len(bridge) / (len(bridge) + len(current))), 0.9)
            tau_b = np.clip(tau_b, 1e-6, p_b + p_s - 1e-6)
            fires = p_b < tau_b
            want = np.zeros(query + 1)
            want[bridge] = np.log(tau_b / p_b) if fires else 0.0
            want[current] = np.log((p_b + p_s - tau_b) / p_s) if fires else 0.0
            np.testing.assert_allclose(shift[head, query, : query + 1], want, atol=2e-5)
    assert np.abs(shift[:, 3:]).max() > 0.1  # the bridge does fire
