"""Parity of the decoder families (Llama, Mistral, Qwen2, GPT-2) against transformers' PyTorch models, through the user's loading path."""

from __future__ import annotations

import numpy as np
import pytest

import jaxinterp
from jaxinterp.models import make_batch
from tests import hf_tiny


@pytest.mark.parametrize("kind", sorted(hf_tiny.CONFIGS))
def test_logits_match_transformers(kind, tiny_checkpoint, padded_batch):
    folder, reference = tiny_checkpoint(kind)
    model = jaxinterp.load(folder, progress=False)
    tokens, mask = padded_batch
    ours = np.asarray(model(make_batch(tokens, mask)))
    theirs = hf_tiny.reference_logits(reference, tokens, mask)
    assert np.abs(theirs[mask]).max() > 1.0  # the test model is not near-degenerate
    np.testing.assert_allclose(ours[mask], theirs[mask], atol=1e-4, rtol=0)


def test_sliding_window_matters(tiny_checkpoint, padded_batch):
    """The Mistral window really masks: widening it changes the logits beyond the window."""
    import dataclasses

    folder, _ = tiny_checkpoint("mistral_window")
    model = jaxinterp.load(folder, progress=False)
    wide = jaxinterp.Model(dataclasses.replace(model.config, sliding_window=None), model.params)
    tokens, mask = padded_batch
    batch = make_batch(tokens, mask)
    narrow_logits, wide_logits = np.asarray(model(batch)), np.asarray(wide(batch))
    np.testing.assert_allclose(narrow_logits[:, :4], wide_logits[:, :4], atol=1e-5)
    assert np.abs(narrow_logits[0, 8:] - wide_logits[0, 8:]).max() > 1e-2
