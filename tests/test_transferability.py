"""Transferability estimators against numpy transcriptions of the published formulas, a planted
ranking, rank correlations against scipy, and pooled features against a direct capture."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg
import scipy.optimize
import scipy.special
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


def ref_principal(f, dims):
    """Centred projection on the top min(dims, N, D) principal axes (sklearn PCA's fit_transform)."""
    f = f - f.mean(0)
    _, _, vh = np.linalg.svd(f, full_matrices=False)
    return f @ vh[: min(dims, *f.shape)].T


def ref_gbc(f, y, dims=64, min_variance=1e-4):
    """stable_transfer gbc.py, diagonal Gaussians: -sum over ordered class pairs of exp(-D_B)."""
    z = ref_principal(f, dims)
    stats = [(z[y == c].mean(0), np.maximum(z[y == c].var(0), min_variance)) for c in np.unique(y)]
    total = 0.0
    for i, (m1, s1) in enumerate(stats):
        for j, (m2, s2) in enumerate(stats):
            if i != j:
                s = (s1 + s2) / 2
                distance = np.sum((m1 - m2) ** 2 / s) / 8 + 0.5 * (np.sum(np.log(s)) - 0.5 * np.sum(np.log(s1))
                                                                  - 0.5 * np.sum(np.log(s2)))
                total += np.exp(-distance)
    return -total


def ref_pactran_gaussian(f, y, curvature, dims=64, lam=1.0, s2_factor=10.0):
    """pactran_metrics calculate_pac_gauss on PCA features, minimised to convergence with scipy, with
    the trace of the Hessian taken by central differences of the analytic gradient (its cross-entropy
    part times N for curvature="summed", as the released code's elementwise second derivative sums)."""
    z = ref_principal(f, dims)
    n, d = z.shape
    c = y.max() + 1
    onehot = np.eye(c)[y]
    prior = lam * n

    def unpack(theta):
        return theta[: d * c].reshape(d, c), theta[d * c:]

    def loss(theta):
        w, b = unpack(theta)
        logits = z @ w + b
        return -np.sum(onehot * scipy.special.log_softmax(logits, 1)) / n + np.sum(w**2) / (2 * prior)

    def cross_entropy_grad(theta):
        w, b = unpack(theta)
        residual = (scipy.special.softmax(z @ w + b, 1) - onehot) / n
        return np.concatenate([(z.T @ residual).ravel(), residual.sum(0)])

    def grad(theta):
        w, _ = unpack(theta)
        return cross_entropy_grad(theta) + np.concatenate([w.ravel() / prior, np.zeros(c)])

    found = scipy.optimize.minimize(loss, np.zeros(d * c + c), jac=grad, method="L-BFGS-B",
                                    options=dict(maxiter=10_000, ftol=1e-15, gtol=1e-10))
    assert found.success, found.message
    theta, h = found.x, 1e-5
    cross_entropy_trace = sum((cross_entropy_grad(theta + h * e)[i] - cross_entropy_grad(theta - h * e)[i]) / (2 * h)
                              for i, e in enumerate(np.eye(theta.size)))
    trace = cross_entropy_trace * (n if curvature == "summed" else 1) + d * c / prior
    sigma2_inv = trace * prior / (d * c) + 1e-10
    return -(loss(theta) + 0.5 * d * c / prior * (s2_factor / d) * np.log(sigma2_inv))


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
    ("transrate", ref_transrate), ("sfda", ref_sfda), ("gbc", ref_gbc),
])
def test_feature_estimators_match_the_reference_formulas(name, reference, n, d):
    f, y = task(n, d)
    with jax.enable_x64(True):
        ours = tr.ESTIMATORS[name](jnp.asarray(f), jnp.asarray(y), num_classes=3)
    np.testing.assert_allclose(float(ours), reference(f, y), rtol=1e-7, atol=1e-9)


def test_gbc_matches_the_reference_formula_where_the_variance_floor_binds():
    """A floor above the smallest class variances changes the reference; ours must follow it."""
    f, y = task(60, 8)
    floor = float(np.median([ref_principal(f, 64)[y == c].var(0) for c in range(3)]))
    assert abs(ref_gbc(f, y, min_variance=floor) - ref_gbc(f, y)) > 1e-3  # the floor matters here
    with jax.enable_x64(True):
        ours = tr.gbc(jnp.asarray(f), jnp.asarray(y), num_classes=3, min_variance=floor)
        truncated = tr.gbc(jnp.asarray(f), jnp.asarray(y), num_classes=3, dims=3)
    np.testing.assert_allclose(float(ours), ref_gbc(f, y, min_variance=floor), rtol=1e-9)
    np.testing.assert_allclose(float(truncated), ref_gbc(f, y, dims=3), rtol=1e-9)


def test_gbc_is_higher_for_separated_classes_than_for_overlapping_ones():
    """Overlapping classes: every coefficient near 1, GBC near -C(C-1); separated: near 0."""
    rng = np.random.default_rng(4)
    y = np.arange(90) % 3
    noise = rng.normal(size=(90, 6))
    with jax.enable_x64(True):
        overlapping = float(tr.gbc(jnp.asarray(noise), jnp.asarray(y), num_classes=3))
        separated = float(tr.gbc(jnp.asarray(noise + 10.0 * np.eye(6)[y]), jnp.asarray(y), num_classes=3))
    assert -6 < overlapping < -4, overlapping
    assert -1e-3 < separated <= 0, separated


def pactran_task():
    """Imbalanced, overlapping classes (a bounded optimum the bias matters to)."""
    rng = np.random.default_rng(5)
    y = np.concatenate([np.zeros(40, int), np.ones(25, int), np.full(15, 2)])
    return rng.normal(size=(80, 6)) + 0.7 * rng.normal(size=(3, 6))[y], y


@pytest.mark.parametrize("curvature", ["summed", "mean"])
def test_pactran_gaussian_matches_a_scipy_minimisation_of_the_same_objective(curvature):
    f, y = pactran_task()
    with jax.enable_x64(True):
        ours = tr.pactran_gaussian(jnp.asarray(f), jnp.asarray(y), num_classes=3, curvature=curvature)
    np.testing.assert_allclose(float(ours), ref_pactran_gaussian(f, y, curvature), rtol=1e-6)


def test_pactran_gaussian_curvatures_differ_and_follow_dims_lam_and_s2():
    f, y = pactran_task()
    with jax.enable_x64(True):
        f, y = jnp.asarray(f), jnp.asarray(y)
        summed, mean = (float(tr.pactran_gaussian(f, y, num_classes=3, curvature=c)) for c in tr.CURVATURES)
        varied = float(tr.pactran_gaussian(f, y, num_classes=3, dims=4, lam=0.5, s2_factor=100.0))
    assert summed < mean - 0.1, (summed, mean)  # the summed curvature is N times larger: a larger penalty
    np.testing.assert_allclose(varied, ref_pactran_gaussian(np.asarray(f), np.asarray(y), "summed", dims=4, lam=0.5,
                                                            s2_factor=100.0), rtol=1e-6)


def test_gbc_and_pactran_are_registered_and_score_candidates_like_single_calls():
    f, y = task(60, 8)
    candidates = np.stack([f, f * np.linspace(0.5, 2.0, 8), f + np.random.default_rng(6).normal(size=f.shape)])
    for name, estimator in (("gbc", tr.gbc), ("pactran_gaussian", tr.pactran_gaussian)):
        assert tr.ESTIMATORS[name] is estimator
        batched = tr.score_candidates(estimator, candidates, y, num_classes=3)
        with jax.enable_x64(True):
            single = [float(estimator(jnp.asarray(c), jnp.asarray(y), num_classes=3)) for c in candidates]
        np.testing.assert_allclose(batched, single, rtol=1e-9)


@pytest.mark.parametrize("estimator, arguments, named", [
    (tr.gbc, {"dims": 0}, "dims"), (tr.gbc, {"dims": -3}, "dims"), (tr.gbc, {"dims": 2.5}, "dims"),
    (tr.gbc, {"min_variance": 0.0}, "min_variance"),
    (tr.pactran_gaussian, {"dims": 0}, "dims"), (tr.pactran_gaussian, {"curvature": "median"}, "curvature"),
    (tr.pactran_gaussian, {"lam": 0.0}, "lam"), (tr.pactran_gaussian, {"lam": -1.0}, "lam"),
    (tr.pactran_gaussian, {"steps": 0}, "steps"), (tr.pactran_gaussian, {"tol": -1.0}, "tol"),
])
def test_gbc_and_pactran_name_bad_arguments(estimator, arguments, named):
    f, y = task(30, 4)
    with pytest.raises(ArgumentError, match=f"^{named}:"):
        estimator(f, y, num_classes=3, **arguments)


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
