"""Batch > 1 gives every row what the row gives alone (issue 17), for every method with per-row results.

Each test runs a batch of two rows of different lengths, so one row is padded (right-padded for
analysis, left-padded for generation and sampling, as the API does it), and compares each row's
result with the same call on that row alone (encoded by itself, without padding). Only real
tokens are compared (padding rows and columns hold no result).

Tolerance: float32 keeps about 7 significant digits, and a row computed inside a [2, T] program
and inside a [1, L] one is summed in a different order (other matmul blocking, other reduction
widths), so the two agree to a few ulps of the result's scale: `rtol=1e-5` with `atol` 1e-5 of
the largest magnitude (about 100 ulps of headroom); token choices must be equal.

Bugs this found and fixed:
- smooth LLaVA-CAM (`samples > 0`) drew its noise over the whole batch, so a row's noisy copies
  depended on the rows beside it (maps 0.16 and 0.52 apart on the two rows here): each copy's
  noise is now drawn once and added to every row (`attribution/gradcam.py`); a batch of one
  draws what it drew before.
- Diffusion-CAM's AKD tie-breaking noise took one key per (site, row, image), so a row's key
  depended on its index and the batch size (a noise of 1e-6 of the map's max: below this file's
  tolerance, but not the same map); one key per (site, image) now serves every row
  (`attribution/diffusion_cam/method.py`); a batch of one gets the keys it got before.
- truncation at K = 0 keeps a random R-subset of the image tokens, drawn over the batch's
  [B, T] shape, so a row's subset depended on its neighbours and on the padding width; one draw
  per span token in order now serves every row (`methods/truncation.py`).

Covered elsewhere (not repeated here):
- Step-Saliency: `test_step_saliency.py::test_a_rows_map_does_not_depend_on_the_rows_sharing_its_batch`.
- pooled features (the transferability estimators' inputs):
  `test_transferability.py::test_pooled_features_equal_a_direct_capture_whatever_the_batching`.
- SalaMAnder: every (problem, coalition) row is its own [1, T] forward inside one sweep;
  `test_salamander.py::test_masked_coalitions_equal_the_forward_of_the_deleted_text` (several games
  in one sweep give what each game gives alone) and
  `::test_text_deletion_equals_one_forward_per_retokenised_prompt`.
- fused vs materialised attention on padded rows (left and right):
  `test_attention_paths.py::test_fused_logits_equal_materialised`; `generate` on a left-padded
  batch of four prompts against transformers: `test_generate.py::test_padded_batch_greedy_equals_transformers`.

Aggregates over the rows by design, checked here as the mean of the rows alone: patching grids
(the metric is a mean over rows), `information_flow` (mass averaged over rows). `head_statistics`
pools the query rows of the whole batch into one entropy per head (not a mean of rows) and is
not checked; its per-row patterns are (`layer_patterns` under rollout and `sink_profile`).

Not batched by design: `feature_attribution` (one prompt), Diffusion-CAM's `step_batch` (one row
of a sample), `culturalframes` (annotation records, no model), SOM planning and the
transferability estimators (one score of a whole dataset), PBML's episode losses (episodes of
examples, whose encoder is `pbml.encode`, checked here), latent probes (vectors, no prompts).
Random draws of generation are per call, not per row, by design: `generate` with temperature > 0
and the diffusion sampler's Gumbel noise and `random` remasking draw one array for the batch
(rows holding the same prompt must get different samples), so only their deterministic modes
are checked here.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxinterp import lens, patching
from jaxinterp.attention.streaming import layer_patterns
from jaxinterp.attribution import METHODS, attribute, deletion_insertion
from jaxinterp.diffusion import sample
from jaxinterp.methods import latent, pbml, stepflow
from jaxinterp.methods import latent_interventions as li
from jaxinterp.methods.art import art
from jaxinterp.methods.evas import evas, sink_profile
from jaxinterp.methods.infoflow import information_flow
from jaxinterp.methods.positions import with_scheme
from jaxinterp.methods.recompute import greedy
from jaxinterp.methods.truncation import truncation_sweep
from jaxinterp.multimodal import encode
from jaxinterp.sae import SAE, SpliceSAE
from tests import attribution_tiny
from tests.attention_fixtures import images, tiny_decoder, tiny_vlm

QUESTIONS = ["is there a red square ?", "what colour is the circle or the square ?"]
ANSWERS = ["yes", "blue circle"]
# token rows for the text decoder (vocabulary 48): the second is 4 tokens shorter
TEXT = [[3, 9, 14, 21, 5, 11, 7, 30, 2, 17], [4, 8, 15, 16, 23, 42]]
CORRUPTED = [[3, 9, 40, 21, 5, 11, 7, 30, 2, 17], [4, 8, 33, 16, 23, 42]]


def close(batched, alone, **tolerance):
    """Float32 agreement of one row's result computed in a batch and alone (module docstring)."""
    batched, alone = np.asarray(batched, np.float64), np.asarray(alone, np.float64)
    assert batched.shape == alone.shape, (batched.shape, alone.shape)
    scale = float(np.abs(alone).max()) if alone.size else 0.0
    np.testing.assert_allclose(batched, alone, **{"rtol": 1e-5, "atol": 1e-5 * scale, **tolerance})


def real(batch, i):
    """Bool mask of row i's real tokens."""
    return np.asarray(batch.mask[i])


@pytest.fixture(scope="module")
def vlm():
    return tiny_vlm()


@pytest.fixture(scope="module")
def answered(vlm):
    """(right-padded batch of both questions with their answers, each row encoded alone)."""
    pictures = images(2)
    batch = encode(vlm, QUESTIONS, pictures, answers=ANSWERS)
    alone = [encode(vlm, q, p, answers=a) for q, p, a in zip(QUESTIONS, pictures, ANSWERS)]
    assert real(batch, 0).sum() < real(batch, 1).sum()  # row 0 is padded
    return batch, alone


@pytest.fixture(scope="module")
def decoder():
    return tiny_decoder(layers=2)


def text_rows(model, rows, padding):
    return model.pack(rows, padding=padding), [model.pack([row]) for row in rows]


# --- the model's program and the attention edits ---------------------------------------------------


def _site_rows(x, batch, i):
    """Row i of a captured site over its real tokens (queries and keys of attention patterns); a
    site without a token axis (the vision tower, the projector: one image per row) whole."""
    x, mask, shape = np.asarray(x), real(batch, i), batch.tokens.shape
    if x.ndim == 4 and x.shape[0] == shape[0] and x.shape[-2:] == (shape[1], shape[1]):  # [B, H, T, S]
        return x[i][:, mask][:, :, mask]
    return x[i][mask] if x.shape[:2] == shape else x[i]


def test_run_with_art_and_evas_captures_every_site_per_row(vlm, answered):
    """`run` capturing every site of the LLaVA (vision tower, projector, decoder), with ART on
    layer 0 and EVAS on layer 1 active: each row's activations are its own."""
    batch, alone = answered
    edits = (art(vlm, layers=(0,), top_k_ratio=0.5), evas(vlm, layers=(1,), beta=0.05))
    run = vlm.run(batch, capture=vlm.sites, edits=edits)
    assert not np.allclose(run.logits, vlm(batch))  # the edits act
    for i, row in enumerate(alone):
        single = vlm.run(row, capture=vlm.sites, edits=edits)
        for site in vlm.sites:
            close(_site_rows(run[site], batch, i), _site_rows(single[site], row, 0), err_msg=site)


def test_positional_scheme_per_row(vlm, answered):
    """A model under a positional scheme (CCA: its position ids and its mask) keeps rows apart."""
    batch, alone = answered
    cca = with_scheme(vlm, "cca")
    logits = cca(batch)
    for i, row in enumerate(alone):
        close(np.asarray(logits[i])[real(batch, i)], cca(row)[0])


def test_generate_with_art_evas_and_stepflow_per_row(decoder):
    """Cached greedy generation of a left-padded batch under ART and EVAS (every step) and StepFlow
    (labelled steps, decode steps): each row's tokens and logits, prefill and decode, are its own;
    the recomputing reference loop likewise."""
    prompt, alone = text_rows(decoder, TEXT, "left")
    labeler = stepflow.TraceLabeler(boundary=jnp.arange(48) % 3 == 0, summary_marker=jnp.full((2,), -1),
                                    thinking_marker=jnp.full((2,), -1), min_step_tokens=2)
    edits = (art(decoder, layers=(0,), top_k_ratio=0.5, apply_at="every_step"),
             evas(decoder, layers=(1,), beta=0.05, span="prompt", apply_at="every_step"),
             *stepflow.stepflow(2, tau_max=0.9, alpha=5.0))
    out = decoder.generate(prompt, 6, edits=edits, labeler=labeler, stop=[], capture=["logits"])
    tokens, logits = greedy(decoder, prompt, 3, edits=edits[:2])
    assert not np.array_equal(out.tokens, decoder.generate(prompt, 6, stop=[]).tokens)  # the edits act
    for i, row in enumerate(alone):
        single = decoder.generate(row, 6, edits=edits, labeler=labeler, stop=[], capture=["logits"])
        assert out.tokens[i] == single.tokens[0]
        close(np.asarray(out.captured_prefill["logits"][i])[real(out.prompt, i)],
              np.asarray(single.captured_prefill["logits"][0])[real(single.prompt, 0)])
        close(out.captured_steps["logits"][:, i], single.captured_steps["logits"][:, 0])
        row_tokens, row_logits = greedy(decoder, row, 3, edits=edits[:2])
        np.testing.assert_array_equal(tokens[i], row_tokens[0])
        close(logits[i], row_logits[0])


# --- attribution -------------------------------------------------------------------------------------

# one site glob per family of methods, so the methods of a family share one compiled pass
SITES = {"grad_cam": "blocks.*.mlp.in", "grad_cam_pp": "blocks.*.mlp.in", "llava_cam": "blocks.*.mlp.in",
         "llava_cam_intensity": "blocks.*.mlp.in", "score_cam": None, "tam": None, "rollout": None,
         "grad_x_input": None, "integrated_gradients": None}
OPTIONS = {"integrated_gradients": {"steps": 4}, "score_cam": {"channels": 8}}
CASES = [(m, OPTIONS.get(m, {})) for m in SITES] + [("llava_cam", {"samples": 3})]
assert set(SITES) == set(METHODS) - {"diffusion_cam"}  # every method is here (Diffusion-CAM below)


def _same_maps(out, single, batch, row, i):
    close(out.values[i], single.values[0])
    if out.image is not None:
        close(out.image[:, i], single.image[:, 0])
    if out.tokens is not None:
        close(np.asarray(out.tokens[:, i])[:, real(batch, i)], single.tokens[:, 0])


@pytest.mark.parametrize("method, options", CASES, ids=[m + "_smooth" * ("samples" in o) for m, o in CASES])
def test_attribution_per_row(vlm, answered, method, options):
    """Every `attribute` method on the LLaVA, over image patches and (where it maps them) tokens."""
    batch, alone = answered
    site = {} if SITES[method] is None else {"site": SITES[method]}
    regions = ("image",) if method == "score_cam" or "samples" in options else ("image", "tokens")
    for region in regions:
        out = attribute(vlm, batch, method=method, region=region, **site, **options)
        for i, row in enumerate(alone):
            _same_maps(out, attribute(vlm, row, method=method, region=region, **site, **options), batch, row, i)


def test_deletion_insertion_per_row(vlm, answered):
    batch, alone = answered
    maps = np.random.default_rng(0).random((2, 1, 4, 4)).astype(np.float32)
    out = deletion_insertion(vlm, batch, maps, steps=4)
    for i, row in enumerate(alone):
        single = deletion_insertion(vlm, row, maps[i:i + 1], steps=4)
        for key in ("deletion", "insertion", "deletion_auc", "insertion_auc"):
            close(np.asarray(out[key])[..., i], np.asarray(single[key])[..., 0], err_msg=key)


@pytest.fixture(scope="module")
def diffusion_vlm():
    return attribution_tiny.vlm(causal=False)


def test_diffusion_cam_per_row(diffusion_vlm):
    """Diffusion-CAM with every refinement module (its contrast target, AKD's noise, SICD's ratio
    are per row)."""
    pictures = images(2)
    batch = encode(diffusion_vlm, QUESTIONS, pictures, answers=ANSWERS)
    out = attribute(diffusion_vlm, batch, method="diffusion_cam")
    for i, (q, p, a) in enumerate(zip(QUESTIONS, pictures, ANSWERS)):
        row = encode(diffusion_vlm, q, p, answers=a)
        _same_maps(out, attribute(diffusion_vlm, row, method="diffusion_cam"), batch, row, i)


def test_diffusion_sampler_per_row(diffusion_vlm):
    """The masked-diffusion sampler on left-padded prompts with images, with and without guidance
    (whose unconditional copy masks the prompt): each row's history is its own."""
    pictures = images(2)
    prompt = encode(diffusion_vlm, QUESTIONS, pictures, padding="left")
    for cfg_scale in (0.0, 1.0):
        out = sample(diffusion_vlm, prompt, gen_length=4, steps=4, block_length=2, cfg_scale=cfg_scale)
        for i, (q, p) in enumerate(zip(QUESTIONS, pictures)):
            single = sample(diffusion_vlm, encode(diffusion_vlm, q, p, padding="left"), gen_length=4, steps=4,
                            block_length=2, cfg_scale=cfg_scale)
            np.testing.assert_array_equal(out.history[:, i], single.history[:, 0])


# --- attention-flow methods ---------------------------------------------------------------------------


def test_truncation_sinks_and_information_flow_per_row(vlm, answered):
    """Truncation sweep (K = 0 keeps a random R-subset, K = 1 the top R), EVAS's sink profile and the
    information flow (a mean over rows: the mean of the rows' flows alone)."""
    batch, alone = answered
    swept = truncation_sweep(vlm, batch, [0, 1], count=3)
    sinks = sink_profile(vlm, batch)
    sources = ("image", "question")  # no system text in these prompts
    flow = information_flow(vlm, batch, sources=sources)
    flows = []
    for i, row in enumerate(alone):
        single = truncation_sweep(vlm, row, [0, 1], count=3)
        close(swept["log_prob"][:, i], single["log_prob"][:, 0])
        np.testing.assert_array_equal(swept["correct"][:, i], single["correct"][:, 0])
        close(sinks[:, i], sink_profile(vlm, row)[:, 0])
        flows.append(information_flow(vlm, row, sources=sources).mass)
    close(flow.mass, np.mean(flows, axis=0))


# --- lenses, SAEs, patching ---------------------------------------------------------------------------


def test_logit_lens_and_direct_logit_attribution_per_row(decoder):
    batch, alone = text_rows(decoder, TEXT, "right")
    lenses = lens.logit_lens(decoder, batch)
    dla = lens.direct_logit_attribution(decoder, batch, answer=np.array([5, 6]), wrong=7)
    for i, row in enumerate(alone):
        close(np.asarray(lenses[:, i])[:, real(batch, i)], lens.logit_lens(decoder, row)[:, 0])
        single = lens.direct_logit_attribution(decoder, row, answer=[5, 6][i], wrong=7)
        fields = ("embed", "heads", "attn_bias", "mlps", "constant", "logit_diff")
        # the terms sum to the logit difference, so each is compared at that sum's scale (a bias-free
        # model's attn_bias term is rounding noise around 0)
        scale = max(float(np.abs(np.asarray(getattr(single, f))).max()) for f in fields)
        for field in fields:
            close(getattr(dla, field)[i], getattr(single, field)[0], atol=1e-5 * scale, err_msg=field)


def test_sae_splice_per_row(decoder):
    """A top-k SAE spliced in without its error term (its features ablated in part)."""
    rng = np.random.default_rng(0)
    draw = lambda *shape: jnp.asarray(rng.normal(size=shape) * 0.3, jnp.float32)  # noqa: E731
    sae = SAE(W_enc=draw(32, 64), b_enc=draw(64), W_dec=draw(64, 32), b_dec=draw(32), architecture="topk", k=5,
              site="blocks.0.resid_post")
    edit = SpliceSAE(sae, keep_error=False, scale=jnp.asarray(np.arange(64) % 4 != 0, jnp.float32))
    batch, alone = text_rows(decoder, TEXT, "right")
    logits = decoder(batch, edits=edit)
    assert not np.allclose(logits, decoder(batch))
    for i, row in enumerate(alone):
        close(np.asarray(logits[i])[real(batch, i)], decoder(row, edits=edit)[0])


@pytest.mark.parametrize("estimate", [patching.activation_patching, patching.attribution_patching])
def test_patching_grid_is_the_mean_of_the_rows_grids(decoder, estimate):
    """The metric averages over rows, so a batch's grid is the mean of its rows' grids; a row
    shorter than the grid has nothing at the positions past its end, where it keeps its
    corrupted value."""
    clean, clean_alone = text_rows(decoder, TEXT, "right")
    corrupted, corrupted_alone = text_rows(decoder, CORRUPTED, "right")
    answer, wrong = np.array([5, 6]), np.array([7, 9])
    grid = estimate(decoder, clean, corrupted, patching.logit_diff(answer, wrong), site="resid_pre").values
    rows = []
    for i in range(2):
        single = estimate(decoder, clean_alone[i], corrupted_alone[i], patching.logit_diff(answer[i], wrong[i]),
                          site="resid_pre")
        rows.append(np.pad(single.values, ((0, 0), (0, grid.shape[1] - single.values.shape[1])),
                           constant_values=single.corrupted))
    close(grid, np.mean(rows, axis=0))


# --- latent reasoning and PBML ------------------------------------------------------------------------

BOT, LATENT, EOT, PAD = 40, 41, 42, 43


def test_latent_thoughts_answers_and_gradients_per_row(decoder):
    """Coconut thoughts of left-padded latent prompts, the answer's log-probability with them written,
    its gradient at the thoughts and the expected embeddings."""
    questions = [[1, 2, 3, 4], [5, 6]]
    answers = jnp.array([[7, 8], [9, 10]])
    kw = dict(k=3, bot=BOT, latent=LATENT, eot=EOT, pad=PAD)
    prompt, slots = latent.latent_prompt(questions, **kw)

    def results(prompt, slots, answers):
        z = latent.continuous_thoughts(decoder, prompt, slots)
        write = latent.write_thoughts(z, slots)
        return [z, latent.answer_log_prob(decoder, prompt, answers, edits=write),
                latent.answer_gradient(decoder, prompt, slots, z, answers),
                li.expected_embeddings(decoder, prompt, slots, z)]

    batched = results(prompt, slots, answers)
    for i, question in enumerate(questions):
        single = results(*latent.latent_prompt([question], **kw), answers[i:i + 1])
        for name, b, s in zip(("thoughts", "log p", "gradient", "expected"), batched, single):
            close(b[i], s[0], err_msg=name)


def test_pbml_encoder_per_row(decoder):
    """PBML's soft-template encoder on left-padded texts: each text's state is its own."""
    params = {k: v for k, v in decoder.params.items() if k != "embed"}
    embedding = decoder.params["embed"]
    template = jax.random.normal(jax.random.key(0), (2, 32)) * 0.1
    tokens, alone = text_rows(decoder, TEXT, "left")
    h = pbml.encode(decoder.config, params, embedding, template, tokens.tokens, tokens.mask)
    for i, row in enumerate(alone):
        close(h[i], pbml.encode(decoder.config, params, embedding, template, row.tokens, row.mask)[0])


def test_streamed_patterns_per_row(decoder):
    """The streamed per-layer patterns every attention statistic reads (left padding)."""
    batch, alone = text_rows(decoder, TEXT, "left")
    for pattern, *singles in zip(layer_patterns(decoder, batch), *(layer_patterns(decoder, r) for r in alone)):
        for i, single in enumerate(singles):
            mask = real(batch, i)
            close(np.asarray(pattern.probs[i])[:, mask][:, :, mask], single.probs[0])
            np.testing.assert_array_equal(np.asarray(pattern.visible[i])[:, mask][:, :, mask], single.visible[0])
