"""Transferability estimators against numpy transcriptions of the published formulas, a planted
ranking, rank correlations against scipy, and pooled features against a direct capture."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg
import scipy.stats

from jaxinterp.errors import ArgumentError
from jaxinterp.methods import transferability as tr
from jaxinterp.methods.features import pool, pooled_features

# ---------------------------------------------------------------------------------------
# numpy references (transcribed from the reference code named in each estimator's docstring)


def ref_h_score(f, y):
    g = np.zeros_like(f)
    for c in np.unique(y):
        g[y == c] = f[y == c].mean(0)
    return np.trace(np.linalg.pinv(np.cov(f, rowvar=False), rcond=1e-15) @ np.cov(g, rowvar=False))


def ref_shrinkage_h_score(f, y):
    f = f - f.mean(0)
    n, d = f.shape
    cov = f.T @ f / n
    var = (f**2).sum(0) / n
    mu = var.sum() / d
    beta = ((f**2).T @ (f**2)).sum() / n - (cov**2).sum()
    beta /= d * n
    delta = ((cov**2).sum() - 2 * mu * var.sum() + d * mu**2) / d
    alpha = np.clip(beta / delta, 0, 1)
    cov_alpha = (1 - alpha) * cov + alpha * mu * np.eye(d)
    means = np.stack([f[y == c].mean(0) * np.sqrt((y == c).sum()) for c in np.unique(y)])
    return np.trace(np.linalg.pinv(cov_alpha, rcond=1e-15) @ ((1 - alpha) * means.T @ means / (n - 1)))


def ref_logme(f, y):
    n, d = f.shape
    if n > d:  # LogME.py's truncated SVD through f^T f
        _, s, vh = np.linalg.svd(f.T @ f)
        s = np.sqrt(s)
        k = int((s > 1e-10).sum())
        s, u = s[:k], (f @ vh.T)[:, :k] / s[:k]
    else:
        u, s, _ = np.linalg.svd(f, full_matrices=False)
    sigma = s**2
    evidences = []
    for c in range(y.max() + 1):
        yc = (y == c).astype(float)
        x2 = (u.T @ yc) ** 2
        res_x2 = (yc**2).sum() - x2.sum()
        alpha = beta = 1.0
        for _ in range(11):
            t = alpha / beta
            gamma = (sigma / (sigma + t)).sum()
            m2 = (sigma * x2 / (t + sigma) ** 2).sum()
            res2 = (x2 / (1 + sigma / t) ** 2).sum() + res_x2
            alpha, beta = gamma / (m2 + 1e-5), (n - gamma) / (res2 + 1e-5)
            if abs(alpha / beta - t) / t <= 1e-3:
                break
        evidences.append((d / 2 * np.log(alpha) + n / 2 * np.log(beta) - 0.5 * np.sum(np.log(alpha + beta * sigma))
                          - beta / 2 * res2 - alpha / 2 * m2 - n / 2 * np.log(2 * np.pi)) / n)
    return np.mean(evidences)


def ref_transrate(f, y, eps=1e-4):
    f = f - f.mean(0)
    rate = lambda z: 0.5 * np.linalg.slogdet(np.eye(z.shape[1]) + z.T @ z / (z.shape[0] * eps))[1]  # noqa: E731
    return rate(f) - np.mean([rate(f[y == c]) for c in np.unique(y)])


def ref_sfda(x, y):
    """SFDA metrics.py, including its generalised eigendecomposition."""

    def fda(x, s):
        classes = np.unique(y)
        priors = np.bincount(y) / len(y)
        means = np.stack([x[y == c].mean(0) for c in classes])
        sw = sum(priors[c] * np.cov(x[y == c].T, bias=1) for c in classes)
        if s is None:
            v = sw.sum(1)
            for _ in range(3):
                w = sw @ v / np.linalg.norm(sw @ v)
                v = sw @ w / np.linalg.norm(sw @ w)
            s = max(np.exp(-5 * v @ sw @ w), 1e-10)
        shrunk = lambda c: (1 - s) * c + s * np.trace(c) / c.shape[0] * np.eye(c.shape[0])  # noqa: E731
        _, vecs = scipy.linalg.eigh(shrunk(np.cov(x.T, bias=1)) - shrunk(sw), shrunk(sw))
        coef = means @ vecs @ vecs.T
        scores = x @ coef.T - 0.5 * np.diag(means @ coef.T) + np.log(priors)
        return scipy.special.softmax(scores, 1), s, means

    probs, s, means = fda(x, None)
    probs = scipy.special.softmax(probs, 1)
    x = x.copy()
    for c in np.unique(y):
        p = probs[y == c, c][:, None]
        x[y == c] = p * x[y == c] + (1 - p) * (means.sum(0) - means[c]) / (len(means) - 1)
    return fda(x, s)[0][np.arange(len(y)), y].mean()


def ref_leep(theta, y):
    joint = np.stack([theta[y == c].sum(0) / len(y) for c in np.unique(y)])
    predicted = theta @ (joint / joint.sum(0, keepdims=True)).T
    return np.mean(np.log(predicted[np.arange(len(y)), y]))


def ref_nce(z, y):
    joint = np.zeros((y.max() + 1, z.max() + 1))
    for s, t in zip(z, y):
        joint[t, s] += 1 / len(y)
    pz = joint.sum(0)
    cond = joint[:, pz > 0] / pz[pz > 0] + 1e-20
    return -np.sum(np.sum(-cond * np.log(cond), 0) * pz[pz > 0])


# ---------------------------------------------------------------------------------------


def task(n, d, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % classes
    return rng.normal(size=(n, d)) + y[:, None] * rng.normal(size=d), y


@pytest.mark.parametrize("n, d", [(60, 8), (20, 30)])
@pytest.mark.parametrize("name, reference", [
    ("h_score", ref_h_score), ("shrinkage_h_score", ref_shrinkage_h_score), ("logme", ref_logme),
    ("transrate", ref_transrate), ("sfda", ref_sfda),
])
def test_feature_estimators_match_the_reference_formulas(name, reference, n, d):
    f, y = task(n, d)
    with jax.enable_x64(True):
        ours = tr.ESTIMATORS[name](jnp.asarray(f), jnp.asarray(y), num_classes=3)
    np.testing.assert_allclose(float(ours), reference(f, y), rtol=1e-7, atol=1e-9)


def test_source_head_estimators_match_the_reference_formulas():
    rng = np.random.default_rng(1)
    y = np.arange(50) % 3
    theta = rng.dirichlet(np.ones(6), size=50) + 0.5 * np.eye(6)[y]
    theta /= theta.sum(1, keepdims=True)
    with jax.enable_x64(True):
        np.testing.assert_allclose(float(tr.leep(jnp.asarray(theta), jnp.asarray(y), num_classes=3)), ref_leep(theta, y), rtol=1e-10)
        np.testing.assert_allclose(float(tr.nce(jnp.asarray(theta), jnp.asarray(y), num_classes=3)), ref_nce(theta.argmax(1), y), rtol=1e-10)


def test_the_best_separating_feature_set_ranks_first():
    """Five candidates whose class signal grows; every estimator must put the strongest first."""
    rng = np.random.default_rng(0)
    n, d, classes = 120, 12, 3
    y = np.arange(n) % classes
    directions = rng.normal(size=(classes, d))
    noise = rng.normal(size=(5, n, d))
    separations = np.array([0.0, 0.3, 0.6, 1.0, 2.0])
    candidates = noise + separations[:, None, None] * directions[y][None]
    key = jax.random.key(0)
    extra = {"nleep": {"key": key}, "linear_probe": {"key": key}, "parc": {}}
    for name, estimator in tr.ESTIMATORS.items():
        if name in ("leep", "nce"):
            continue
        scores = tr.score_candidates(estimator, candidates, y, num_classes=classes, **extra.get(name, {}))
        assert np.argmax(scores) == 4, f"{name} ranked {np.argsort(-scores)}: {scores}"
        assert tr.spearman(scores, separations) > 0.7, f"{name}: {scores}"
    logits = separations[:, None, None] * np.eye(classes)[y][None] * 3 + rng.normal(size=(5, n, classes))
    probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    for name in ("leep", "nce"):
        scores = tr.score_candidates(tr.ESTIMATORS[name], probs, y, num_classes=classes)
        assert np.argmax(scores) == 4, f"{name}: {scores}"


def test_rank_correlations_match_scipy_with_and_without_ties():
    rng = np.random.default_rng(3)
    for trial in range(4):
        x = rng.normal(size=11)
        y = x + rng.normal(size=11)
        if trial % 2:
            x, y = np.round(2 * x) / 2, np.round(y)
        np.testing.assert_allclose(tr.weighted_tau(x, y), scipy.stats.weightedtau(x, y).statistic, rtol=1e-5)
        np.testing.assert_allclose(tr.kendall_tau(x, y), scipy.stats.kendalltau(x, y).statistic, rtol=1e-5)
        np.testing.assert_allclose(tr.spearman(x, y), scipy.stats.spearmanr(x, y).statistic, rtol=1e-5)
        np.testing.assert_allclose(tr.pearson(x, y), scipy.stats.pearsonr(x, y).statistic, rtol=1e-5)


def test_bad_inputs_are_named():
    f, y = task(30, 4)
    with pytest.raises(ArgumentError, match="non-empty"):
        tr.logme(np.zeros((0, 4)), np.zeros(0, np.int32), num_classes=2)
    with pytest.raises(ArgumentError, match="label count of 1"):
        tr.h_score(f, np.zeros(30, np.int32), num_classes=1)
    with pytest.raises(ArgumentError, match=r"none for \[3\]"):
        tr.sfda(f, y, num_classes=4)
    with pytest.raises(ArgumentError, match="labels: expected shape"):
        tr.transrate(f, y[:10], num_classes=3)
    with pytest.raises(ArgumentError, match="at least one candidate"):
        tr.score_candidates(tr.logme, [], y, num_classes=3)
    with pytest.raises(ArgumentError, match="equal length"):
        tr.kendall_tau(np.arange(3.0), np.arange(4.0))


# ---------------------------------------------------------------------------------------
# Features


def test_pooling_picks_the_right_tokens():
    x = jnp.arange(2 * 4 * 1, dtype=jnp.float32).reshape(2, 4, 1)
    mask = jnp.array([[True, True, True, False], [True, True, False, False]])
    np.testing.assert_array_equal(pool(x, mask, "first")[:, 0], [0, 4])
    np.testing.assert_array_equal(pool(x, mask, "last")[:, 0], [2, 5])
    np.testing.assert_allclose(pool(x, mask, "mean")[:, 0], [1.0, 4.5])
    with pytest.raises(ArgumentError, match="pooling"):
        pool(x, mask, "max")


class CharTokenizer:
    """Characters as token ids (enough to drive `pooled_features` without a real tokenizer)."""

    pad_token_id = 0

    def __call__(self, text, add_special_tokens=True):
        return {"input_ids": [1 + ord(c) % 60 for c in text]}


def test_pooled_features_equal_a_direct_capture_whatever_the_batching():
    from jaxinterp.model import Model
    from jaxinterp.models import init_params
    from jaxinterp.models.llama import LlamaConfig

    config = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_layers=2, num_heads=2,
                         num_kv_heads=1, head_dim=8)
    model = Model(config, init_params(config, jax.random.key(0)), CharTokenizer())
    texts = ["a short one", "x", "a somewhat longer text than the others", "mid length"]
    features = pooled_features(model, texts, sites=["blocks.1.resid_post"], poolings=("mean", "last"), batch_size=3,
                               bucket=4, progress=False)
    for i, text in enumerate(texts):
        direct = model.run(np.array([CharTokenizer()(text)["input_ids"]]), capture=["blocks.1.resid_post"])
        hidden = np.asarray(direct["blocks.1.resid_post"][0])
        np.testing.assert_allclose(features[("blocks.1.resid_post", "mean")][i], hidden.mean(0), atol=1e-5)
        np.testing.assert_allclose(features[("blocks.1.resid_post", "last")][i], hidden[-1], atol=1e-5)
