"""SAELens-format SAEs: files written here load, encode and decode like a NumPy reference, splice as edits,
and bad files fail naming the file, the key, the expected and the found value."""

from __future__ import annotations

import json

import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import save_file

import jaxinterp as ji
from jaxinterp.sae import SpliceSAE, load_sae, save_sae
from tests.attention_fixtures import tiny_decoder

D_IN, D_SAE = 32, 64
TOKENS = np.array([[3, 9, 14, 21, 5, 11, 7]], np.int32)


def write(folder, architecture="standard", *, cfg=None, drop=None, reshape=None, seed=0):
    rng = np.random.default_rng(seed)
    tensors = {"W_enc": rng.normal(size=(D_IN, D_SAE)), "b_enc": rng.normal(size=D_SAE) * 0.1,
               "W_dec": rng.normal(size=(D_SAE, D_IN)) * 0.2, "b_dec": rng.normal(size=D_IN) * 0.1,
               "threshold": np.abs(rng.normal(size=D_SAE))}
    tensors = {k: v.astype(np.float32) for k, v in tensors.items() if k != drop}
    if reshape:
        tensors[reshape] = tensors[reshape][..., :-1]
    config = {"d_in": D_IN, "d_sae": D_SAE, "hook_name": "blocks.1.hook_resid_pre", "architecture": architecture,
              "apply_b_dec_to_input": True, "normalize_activations": "none", **({"k": 5} if architecture == "topk" else {}),
              **(cfg or {})}
    folder.mkdir(exist_ok=True)
    (folder / "cfg.json").write_text(json.dumps(config))
    save_file(tensors, str(folder / "sae_weights.safetensors"))
    return tensors


def reference(t, x, architecture):
    pre = (x - t["b_dec"]) @ t["W_enc"] + t["b_enc"]
    if architecture == "jumprelu":
        f = np.maximum(pre, 0) * (pre > t["threshold"])
    elif architecture == "topk":
        f = np.zeros_like(pre)
        top = np.argsort(-pre, axis=-1)[..., :5]
        np.put_along_axis(f, top, np.maximum(np.take_along_axis(pre, top, -1), 0), -1)
    else:
        f = np.maximum(pre, 0)
    return f, f @ t["W_dec"] + t["b_dec"]


@pytest.mark.parametrize("architecture", ["standard", "jumprelu", "topk"])
def test_load_encode_decode_match_the_reference(tmp_path, architecture):
    tensors = write(tmp_path, architecture)
    sae = load_sae(tmp_path)
    assert sae.site == "blocks.1.resid_pre" and sae.architecture == architecture
    x = np.random.default_rng(1).normal(size=(2, 7, D_IN)).astype(np.float32)
    features, recon = reference(tensors, x.astype(np.float64), architecture)
    got = np.asarray(sae.encode(x))
    np.testing.assert_allclose(got, features, atol=1e-5)
    np.testing.assert_allclose(np.asarray(sae.decode(got)), recon, atol=1e-5)
    if architecture == "topk":
        assert np.all((got > 0).sum(-1) <= 5)


def test_legacy_activation_fn_fields(tmp_path):
    write(tmp_path, cfg={"architecture": None, "activation_fn_str": "topk", "activation_fn_kwargs": {"k": 3}})
    sae = load_sae(tmp_path)
    assert (sae.architecture, sae.k) == ("topk", 3)


@pytest.mark.parametrize("architecture", ["standard", "jumprelu", "topk"])
def test_save_sae_writes_files_load_sae_reads_back(tmp_path, architecture):
    write(tmp_path / "original", architecture)
    sae = load_sae(tmp_path / "original")
    save_sae(sae, tmp_path / "copy", "blocks.1.hook_resid_pre")
    again = load_sae(tmp_path / "copy")
    assert (again.site, again.architecture, again.k) == (sae.site, sae.architecture, sae.k)
    x = np.random.default_rng(2).normal(size=(3, D_IN)).astype(np.float32)
    np.testing.assert_array_equal(np.asarray(again.encode(x)), np.asarray(sae.encode(x)))
    np.testing.assert_array_equal(np.asarray(again.decode(again.encode(x))), np.asarray(sae.decode(sae.encode(x))))


def test_save_sae_refuses_another_sites_hook_name(tmp_path):
    write(tmp_path)
    with pytest.raises(ji.ArgumentError, match=r"hook_name: expected a name of the SAE's site 'blocks.1.resid_pre', "
                                               r"found 'blocks.0.hook_resid_pre'"):
        save_sae(load_sae(tmp_path), tmp_path / "copy", "blocks.0.hook_resid_pre")


def test_splice_with_error_term_is_the_identity_and_without_it_the_reconstruction(tmp_path):
    write(tmp_path)
    sae, model = load_sae(tmp_path), tiny_decoder(layers=2)
    run = model.run(TOKENS, capture=["blocks.1.resid_pre"])
    np.testing.assert_allclose(np.asarray(model(TOKENS, edits=SpliceSAE(sae))), np.asarray(run.logits), atol=1e-5)
    recon = sae.decode(sae.encode(run["blocks.1.resid_pre"]))
    expected = model(TOKENS, edits=ji.Patch("blocks.1.resid_pre", recon))
    np.testing.assert_allclose(np.asarray(model(TOKENS, edits=SpliceSAE(sae, keep_error=False))), np.asarray(expected),
                               atol=1e-5)


def test_ablate_and_steer_features(tmp_path):
    write(tmp_path)
    sae, model = load_sae(tmp_path), tiny_decoder(layers=2)
    x = model.run(TOKENS, capture=["blocks.1.resid_pre"])["blocks.1.resid_pre"]
    features = sae.encode(x)
    live = int(jnp.argmax(features[0, 3]))
    scale = jnp.ones(D_SAE).at[live].set(0.0)
    add = jnp.zeros(D_SAE).at[7].set(2.0)
    got = model.run(TOKENS, capture=["blocks.1.resid_pre"], edits=SpliceSAE(sae, scale=scale, add=add))["blocks.1.resid_pre"]
    # the change is the decoder rows: minus the ablated feature's, plus twice feature 7's
    expected = x - features[..., live:live + 1] * sae.W_dec[live] + 2.0 * sae.W_dec[7]
    np.testing.assert_allclose(np.asarray(got), np.asarray(expected), atol=1e-5)


@pytest.mark.parametrize("kwargs, message", [
    ({"drop": "b_dec"}, r"sae_weights.safetensors: b_dec: expected a tensor of shape \(32,\), found none"),
    ({"reshape": "W_enc"}, r"sae_weights.safetensors: W_enc: expected shape \(32, 64\).*found \(32, 63\)"),
    ({"architecture": "gated"}, r"cfg.json: architecture: expected one of .*found 'gated'"),
    ({"architecture": "jumprelu", "drop": "threshold"}, r"threshold: expected a tensor"),
    ({"architecture": "topk", "cfg": {"k": 0}}, r"cfg.json: k: expected a positive integer"),
    ({"cfg": {"normalize_activations": "expected_average_only_in"}}, r"normalize_activations: expected 'none'"),
])
def test_bad_files_name_file_key_expected_and_found(tmp_path, kwargs, message):
    write(tmp_path, **kwargs)
    with pytest.raises(ji.CheckpointError, match=message):
        load_sae(tmp_path)


def test_missing_and_broken_files(tmp_path):
    with pytest.raises(ji.CheckpointError, match="cfg.json: expected an SAELens file here"):
        load_sae(tmp_path)
    write(tmp_path)
    (tmp_path / "sae_weights.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ji.CheckpointError, match="sae_weights.safetensors: header length: .* does not fit a file of 22 bytes"):
        load_sae(tmp_path)
