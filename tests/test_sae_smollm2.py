"""The SAE experiment's pieces: activations of a tiny model drop the first position (slow: it compiles
the model), training on seeded sparse data lowers the loss, and folding the activation scale into the
weights changes nothing but the units."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from experiments import sae_smollm2 as experiment
from jaxinterp.sae import SAE
from tests.attention_fixtures import VOCAB, tiny_decoder

SETTINGS = experiment.Settings(layer=1, expansion=2, l1=0.5, context=12, steps=150, batch_size=32,
                               learning_rate=3e-3)


@pytest.fixture(scope="module")
def x():
    """88 activations of width 32, each a sparse sum of 3 of 16 fixed directions (shifted off the origin)."""
    keys = jax.random.split(jax.random.key(0), 3)
    directions = jax.random.normal(keys[0], (16, 32))
    codes = jax.random.uniform(keys[1], (88, 16)) * (jax.random.uniform(keys[2], (88, 16)) < 3 / 16)
    return np.asarray(codes @ directions + 1.0, np.float32)


@pytest.mark.slow
def test_activations_drop_the_first_position():
    rows = np.asarray(jax.random.randint(jax.random.key(0), (8, SETTINGS.context), 0, VOCAB), np.int32)
    found = experiment.activations(tiny_decoder(layers=2), rows, SETTINGS.site, batch=4)
    assert found.shape == (8 * (SETTINGS.context - 1), 32) and found.dtype == np.float32


def test_training_lowers_the_loss_and_keeps_features_sparse(x):
    sae, curves = experiment.train_sae(x, SETTINGS, progress=False)
    assert sae.site == "blocks.1.resid_pre" and sae.W_enc.shape == (32, 64)
    assert np.mean(curves["loss"][-10:]) < 0.5 * curves["loss"][0]
    assert np.mean(curves["mse"][-10:]) < 0.5 * curves["mse"][0]
    relative = np.mean(np.sum((np.asarray(sae.decode(sae.encode(x))) - x) ** 2, 1)) / np.mean(np.sum(x ** 2, 1))
    assert relative < 0.5  # the returned SAE reads raw activations (the scale is folded in)
    assert 0 < np.mean(np.sum(np.asarray(sae.encode(x)) > 0, axis=1)) < 64


def test_unscaled_reads_raw_activations_as_the_scaled_sae_reads_scaled_ones():
    keys = jax.random.split(jax.random.key(1), 5)
    sae = SAE(W_enc=jax.random.normal(keys[0], (6, 10)), b_enc=0.1 * jax.random.normal(keys[1], (10,)),
              W_dec=jax.random.normal(keys[2], (10, 6)), b_dec=jax.random.normal(keys[3], (6,)))
    x, scale = np.asarray(jax.random.normal(keys[4], (5, 6))), 3.0
    folded = experiment.unscaled(sae, scale)
    np.testing.assert_allclose(folded.encode(x), sae.encode(scale * x), atol=1e-5)
    np.testing.assert_allclose(folded.decode(folded.encode(x)), sae.decode(sae.encode(scale * x)) / scale, atol=1e-5)


def test_too_few_activations_name_the_argument(x):
    with pytest.raises(ValueError, match=r"x: expected at least batch_size=32 activations, found 10"):
        experiment.train_sae(x[:10], SETTINGS, progress=False)
