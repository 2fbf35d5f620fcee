"""Transferability estimation: rank frozen feature sets for a target task without fine-tuning.

The estimators compared by Bai et al., "How to Determine the Most Powerful Pre-trained
Language Model without Brute Force Fine-tuning? An Empirical Survey" (Findings of EMNLP
2023). The survey's own code is not public; each formula follows the reference code named
in its docstring (`thuml/LogME`, `tllib/ranking`, `TencentARC/SFDA`, `transformer-ranker`,
google-research `pactran_metrics` and `stable_transfer`).

Every estimator is a pure JAX function of `features` [N, D] (LEEP and NCE take source-head
probabilities [N, Cs] instead) and integer `labels` [N] in [0, num_classes); higher scores
predict better transfer. They are safe under `jit` and `vmap`: `score_candidates` scores a
stack of candidate feature sets (layers, poolings, models of equal width) in one vmapped
call, in float64 as the reference code does. A single call computes in the dtype it is
given (call it inside `jax.enable_x64(True)` with float64 arrays to match the references).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxinterp.errors import ArgumentError

Array = jax.Array


# ---------------------------------------------------------------------------------------
# Input checks and shared statistics


def _check(values: Array, labels: Array, num_classes: int, argument: str) -> None:
    """Raises ArgumentError for inputs no estimator can score (checks values when concrete)."""
    if np.ndim(values) != 2 or 0 in np.shape(values):
        raise ArgumentError(f"{argument}: expected a non-empty [N, D] array, found shape {np.shape(values)}")
    if np.ndim(labels) != 1 or np.shape(labels)[0] != np.shape(values)[0]:
        raise ArgumentError(f"labels: expected shape [{np.shape(values)[0]}] to match {argument}, found {np.shape(labels)}")
    if not jnp.issubdtype(jnp.asarray(labels).dtype, jnp.integer):
        raise ArgumentError(f"labels: expected integer class ids, found dtype {jnp.asarray(labels).dtype}")
    if not isinstance(num_classes, (int, np.integer)) or num_classes < 2:
        raise ArgumentError(f"num_classes: expected an int >= 2 (a label count of 1 has nothing to separate), found {num_classes!r}")
    if not isinstance(labels, jax.core.Tracer):
        found = np.asarray(labels)
        if found.min() < 0 or found.max() >= num_classes:
            raise ArgumentError(f"labels: expected ids in [0, {num_classes}), found {found.min()}..{found.max()}")
        missing = np.flatnonzero(np.bincount(found, minlength=num_classes) == 0)
        if missing.size:
            raise ArgumentError(f"labels: every class in [0, {num_classes}) needs an example; none for {missing.tolist()}")


def _estimator(argument: str = "features"):
    """Decorator: validates (values, labels, num_classes) and casts values to a float dtype."""

    def wrap(fn):
        @functools.wraps(fn)
        def checked(values, labels, *, num_classes: int, **kwargs):
            _check(values, labels, num_classes, argument)
            values = jnp.asarray(values)
            values = values.astype(jnp.promote_types(values.dtype, jnp.float32))
            return fn(values, jnp.asarray(labels), num_classes=num_classes, **kwargs)

        return checked

    return wrap


def _class_means(f: Array, labels: Array, num_classes: int) -> tuple[Array, Array]:
    """Class means [C, D] and class counts [C]."""
    onehot = jax.nn.one_hot(labels, num_classes, dtype=f.dtype)
    counts = onehot.sum(0)
    return onehot.T @ f / counts[:, None], counts


def _cov(f: Array, *, bias: bool) -> Array:
    """Covariance of the columns of f (np.cov(f, rowvar=False, bias=bias))."""
    centred = f - f.mean(0)
    return centred.T @ centred / (f.shape[0] - (0 if bias else 1))


def _shrunk(cov: Array, shrinkage: Array) -> Array:
    """(1 - s) cov + s mu I with mu = tr(cov) / D (Ledoit-Wolf target)."""
    mu = jnp.trace(cov) / cov.shape[0]
    return (1 - shrinkage) * cov + shrinkage * mu * jnp.eye(cov.shape[0], dtype=cov.dtype)


def _spectrum(f: Array) -> tuple[Array, Array, Array]:
    """Eigen-decomposition of f^T f [D, D] through the smaller Gram matrix: (lam [k], U [N, k],
    V [D, k]) with f = U diag(sqrt(lam)) V^T, k = min(N, D), lam descending, lam >= 0.

    Equivalent to a thin SVD (lam = singular values squared) at the cost of an eigh of
    min(N, D) squared; directions with lam = 0 get zero vectors on the side that is derived.
    """
    n, d = f.shape
    lam, vectors = jnp.linalg.eigh(f @ f.T if n < d else f.T @ f)
    lam, vectors = jnp.maximum(lam[::-1], 0.0), vectors[:, ::-1]
    root = jnp.sqrt(lam)
    inverse = jnp.where(root > 0, 1.0 / jnp.where(root > 0, root, 1.0), 0.0)
    derived = (f.T @ vectors if n < d else f @ vectors) * inverse
    return (lam, vectors, derived) if n < d else (lam, derived, vectors)


def _pca(f: Array, dims: int) -> tuple[Array, Array]:
    """Centred projection on the top `dims` principal axes [N, dims] and every axis's variance ratio."""
    lam, u, _ = _spectrum(f - f.mean(0))
    return u[:, :dims] * jnp.sqrt(lam[:dims]), lam / jnp.sum(lam)


def _principal(f: Array, dims: int) -> Array:
    """Centred projection on the top min(dims, N, D) principal axes, for estimators with a `dims` argument."""
    if not isinstance(dims, (int, np.integer)) or dims < 1:
        raise ArgumentError(f"dims: expected a positive int (principal components kept), found {dims!r}")
    return _pca(f, min(dims, *f.shape))[0]


# ---------------------------------------------------------------------------------------
# Estimators on features


@_estimator()
def h_score(features: Array, labels: Array, *, num_classes: int, rcond: float = 1e-15) -> Array:
    """H-Score (Bao et al. 2019): tr(cov(f)^+ cov(g)), g_i the mean feature of sample i's class.

    Covariances are unbiased (np.cov); `rcond` is the relative pinv cut-off (1e-15 as in
    tllib `hscore.py`; the original author code used 1e-10). Computed on the eigenvectors V
    of the centred f (cov(g) lies in their span): H = sum_k ||G V_k||^2 / lam_k over
    lam_k > rcond lam_max, G the centred class-mean rows.
    """
    f = features - features.mean(0)
    means, _ = _class_means(f, labels, num_classes)
    lam, _, v = _spectrum(f)
    kept = lam > rcond * lam[0]
    projected = jnp.sum((means[labels] @ v) ** 2, 0)
    return jnp.sum(jnp.where(kept, projected / jnp.where(kept, lam, 1.0), 0.0))


@_estimator()
def shrinkage_h_score(features: Array, labels: Array, *, num_classes: int, rcond: float = 1e-15) -> Array:
    """Regularised H-Score (Ibrahim et al. 2022): H with a Ledoit-Wolf shrunk feature covariance.

    Sigma_a = (1 - a) Sigma + a mu I, a = clip(beta / delta, 0, 1) in closed form;
    H_a = tr(Sigma_a^+ (1 - a) cov_g), cov_g = sum_c n_c m_c m_c^T / (N - 1) on centred
    features (transformer-ranker `hscore.py`). Evaluated on the eigenvectors of Sigma, which
    span cov_g, with the same relative pinv cut-off.
    """
    n, d = features.shape
    f = features - features.mean(0)
    lam, _, v = _spectrum(f)
    variances = jnp.sum(f**2, 0) / n
    mu = variances.sum() / d
    frobenius = jnp.sum(lam**2) / n**2  # ||Sigma||_F^2
    beta = (jnp.sum(jnp.sum(f**2, 1) ** 2) / n - frobenius) / (d * n)  # sum((f^2)^T (f^2)) = sum_i ||f_i||^4
    delta = (frobenius - 2.0 * mu * variances.sum() + d * mu**2) / d
    alpha = jnp.clip(beta / delta, 0.0, 1.0)
    shrunk = (1 - alpha) * lam / n + alpha * mu  # eigenvalues of Sigma_a on those eigenvectors
    kept = shrunk > rcond * jnp.maximum(shrunk[0], alpha * mu)
    means, counts = _class_means(f, labels, num_classes)
    projected = jnp.sum((means * jnp.sqrt(counts)[:, None] @ v) ** 2, 0) / (n - 1)
    return (1 - alpha) * jnp.sum(jnp.where(kept, projected / jnp.where(kept, shrunk, 1.0), 0.0))


def _logme_evidence(u: Array, sigma: Array, valid: Array, y: Array, d: int, max_iterations: int, tol: float) -> Array:
    """Maximum log evidence / N of one target column (fixed-point LogME, You et al. 2022, Alg. 2)."""
    n = y.shape[0]
    x2 = jnp.where(valid, (u.T @ y) ** 2, 0.0)
    res_x2 = jnp.sum(y**2) - x2.sum()

    def update(state):
        alpha, beta, _, _, _, step = state
        t = alpha / beta
        gamma = jnp.sum(jnp.where(valid, sigma / (sigma + t), 0.0))
        m2 = jnp.sum(sigma * x2 / (t + sigma) ** 2)
        res2 = jnp.sum(x2 / (1 + sigma / t) ** 2) + res_x2
        alpha, beta = gamma / (m2 + 1e-5), (n - gamma) / (res2 + 1e-5)
        converged = jnp.abs(alpha / beta - t) / t <= tol
        return alpha, beta, m2, res2, converged, step + 1

    one, zero = jnp.ones((), y.dtype), jnp.zeros((), y.dtype)
    alpha, beta, m2, res2, _, _ = jax.lax.while_loop(
        lambda s: (~s[4]) & (s[5] < max_iterations), update, (one, one, zero, zero, jnp.array(False), 0)
    )
    evidence = (
        d / 2.0 * jnp.log(alpha) + n / 2.0 * jnp.log(beta)
        - 0.5 * jnp.sum(jnp.where(valid, jnp.log(alpha + beta * sigma), 0.0))
        - beta / 2.0 * res2 - alpha / 2.0 * m2 - n / 2.0 * jnp.log(2 * jnp.pi)
    )
    return evidence / n


@_estimator()
def logme(features: Array, labels: Array, *, num_classes: int, max_iterations: int = 11, tol: float = 1e-3) -> Array:
    """LogME (You et al., ICML 2021; fixed-point form of arXiv 2110.10545): mean over classes of
    the maximum marginal log-likelihood / N of a Bayesian linear model from features to the
    one-hot label column.

    With f = U S V^T and sigma = S^2, iterates t = alpha/beta, gamma = sum sigma/(sigma+t),
    m2 = sum sigma x^2/(t+sigma)^2, res2 = sum x^2/(1+sigma/t)^2 + res0, alpha = gamma/(m2+1e-5),
    beta = (N-gamma)/(res2+1e-5) until |alpha/beta - t|/t <= tol (at most `max_iterations`),
    then evidence = D/2 log alpha + N/2 log beta - 1/2 sum log(alpha + beta sigma)
    - beta/2 res2 - alpha/2 m2 - N/2 log 2pi (thuml/LogME `LogME.py`). When N > D, singular
    values <= 1e-10 are dropped, as the reference's truncated SVD does; when N <= D all N are
    kept, zeros included, as its full SVD does.
    """
    n, d = features.shape
    sigma, u, _ = _spectrum(features)
    valid = (jnp.sqrt(sigma) > 1e-10) if n > d else jnp.ones_like(sigma, bool)
    u = u * valid
    targets = jax.nn.one_hot(labels, num_classes, dtype=features.dtype).T
    evidences = jax.vmap(lambda y: _logme_evidence(u, sigma, valid, y, d, max_iterations, tol))(targets)
    return evidences.mean()


@_estimator()
def transrate(features: Array, labels: Array, *, num_classes: int, eps: float = 1e-4) -> Array:
    """TransRate (Huang et al., ICML 2022): R(f) - (1/C) sum_c R(f_c) on centred features,
    with the coding rate R(z) = 1/2 logdet(I + z^T z / (n eps)) (tllib `transrate.py`).

    Evaluated as 1/2 logdet(I + z z^T / (n eps)) (Sylvester) when N < D, with class subsets as
    masked rows, which add identity rows and leave the determinant unchanged.
    """
    f = features - features.mean(0)
    n, d = f.shape
    gram = f @ f.T if n < d else None

    def rate(m: Array) -> Array:
        if gram is None:
            z = f * m[:, None]
            inner = z.T @ z
        else:
            inner = gram * m[:, None] * m[None, :]
        chol = jnp.linalg.cholesky(jnp.eye(inner.shape[0], dtype=f.dtype) + inner / (m.sum() * eps))
        return jnp.sum(jnp.log(jnp.diagonal(chol)))

    # One batched Cholesky for the whole set and every class: two independent batched LAPACK
    # calls in one program can deadlock XLA's CPU thread pool on two cores (both workers wait
    # inside jax's ParallelBatchMap for tasks queued behind each other).
    masks = jnp.concatenate([jnp.ones((1, n), f.dtype), jax.nn.one_hot(labels, num_classes, dtype=f.dtype).T])
    rates = jax.vmap(rate)(masks)
    return rates[0] - rates[1:].mean()


def _largest_eigenvalue(a: Array, iterations: int) -> Array:
    """Power-iteration estimate of the largest eigenvalue (SFDA `utils.iterative_A`)."""

    def step(_, xy):
        x, _ = xy
        y = a @ x / jnp.linalg.norm(a @ x)
        return a @ y / jnp.linalg.norm(a @ y), y

    x, y = jax.lax.fori_loop(0, iterations, step, (a.sum(1), a.sum(1)))
    return x @ a @ y


def _fda_probabilities(f: Array, labels: Array, num_classes: int, shrinkage: Array) -> Array:
    """p(y|x) of regularised FDA with a shrunk within-class scatter.

    The reference (SFDA `metrics.py`) projects on every generalised eigenvector V of
    (S_b, S_w,lambda) and uses coef = M V V^T; since V^T S_w,lambda V = I, V V^T equals
    S_w,lambda^-1, which is what is computed here.
    """
    means, counts = _class_means(f, labels, num_classes)
    residual = f - means[labels]
    within = _shrunk(residual.T @ residual / f.shape[0], shrinkage)  # sum_c p_c cov_c, biased
    coef = jnp.linalg.solve(within, means.T).T
    intercept = -0.5 * jnp.sum(means * coef, 1) + jnp.log(counts / f.shape[0])
    return jax.nn.softmax(f @ coef.T + intercept, axis=-1)


@_estimator()
def sfda(features: Array, labels: Array, *, num_classes: int, power_iterations: int = 3) -> Array:
    """SFDA (Shao et al., ECCV 2022): mean p(y_i | x_i) of regularised FDA after ConfMix.

    lambda = max(exp(-5 lambda_max(S_w)), 1e-10); first FDA probabilities are softened by a
    second softmax; ConfMix moves each x towards the mean of the other class means by
    1 - p(y_true | x); a second FDA with the same lambda gives the score (SFDA `metrics.py`).
    """
    means, _ = _class_means(features, labels, num_classes)
    residual = features - means[labels]
    within = residual.T @ residual / features.shape[0]
    shrinkage = jnp.maximum(jnp.exp(-5 * _largest_eigenvalue(within, power_iterations)), 1e-10)
    probs = jax.nn.softmax(_fda_probabilities(features, labels, num_classes, shrinkage), axis=-1)
    confidence = jnp.take_along_axis(probs, labels[:, None], 1)
    other_means = (means.sum(0) - means) / (num_classes - 1)
    mixed = confidence * features + (1 - confidence) * other_means[labels]
    second = _fda_probabilities(mixed, labels, num_classes, shrinkage)
    return jnp.take_along_axis(second, labels[:, None], 1).mean()


def _average_ranks(x: Array) -> Array:
    """1-based ranks with ties given their average rank (scipy.stats.rankdata 'average')."""
    ordered = jnp.sort(x)
    return (jnp.searchsorted(ordered, x, side="left") + jnp.searchsorted(ordered, x, side="right") + 1) / 2.0


@_estimator()
def parc(features: Array, labels: Array, *, num_classes: int, dims: int = 32, max_samples: int = 15000,
         key: Array | None = None) -> Array:
    """PARC (Bolya et al., NeurIPS 2021): 100 x Spearman between the upper triangles of the
    sample dissimilarity matrices 1 - corr(f) and 1 - corr(onehot(y)).

    Features are reduced to `dims` principal components (exact PCA; SFDA uses randomised
    PCA) and standardised. More than `max_samples` samples are subsampled with `key`
    (the SFDA wrapper intends this but scores the full set).
    """
    if features.shape[0] > max_samples:
        if key is None:
            raise ArgumentError(f"key: needed to subsample {features.shape[0]} samples to max_samples={max_samples}")
        keep = jax.random.choice(key, features.shape[0], (max_samples,), replace=False)
        features, labels = features[keep], labels[keep]
    z = _principal(features, dims)
    z = (z - z.mean(0)) / jnp.where(z.std(0) > 0, z.std(0), 1.0)
    rows = jnp.triu_indices(z.shape[0], 1)
    feature_rdm = (1 - jnp.corrcoef(z))[rows]
    label_rdm = (1 - jnp.corrcoef(jax.nn.one_hot(labels, num_classes, dtype=z.dtype)))[rows]
    return 100.0 * pearson(_average_ranks(feature_rdm), _average_ranks(label_rdm))


@_estimator()
def knn_accuracy(features: Array, labels: Array, *, num_classes: int, k: int = 3) -> Array:
    """Leave-one-out k-nearest-neighbour accuracy (Euclidean, majority vote, ties to the
    lowest class id as torch.mode; transformer-ranker `knn.py` uses k = 3).
    """
    squared = jnp.sum(features**2, 1)
    distances = squared[:, None] + squared[None, :] - 2 * features @ features.T
    distances = jnp.where(jnp.eye(features.shape[0], dtype=bool), jnp.inf, distances)
    _, neighbours = jax.lax.top_k(-distances, k)
    votes = jax.nn.one_hot(labels[neighbours], num_classes).sum(1)
    return jnp.mean(jnp.argmax(votes, 1) == labels, dtype=features.dtype)


@_estimator()
def gbc(features: Array, labels: Array, *, num_classes: int, dims: int = 64, min_variance: float = 1e-4) -> Array:
    """Gaussian Bhattacharyya Coefficient (Pandy et al., CVPR 2022): -sum_{i != j} exp(-D_B(c_i, c_j)).

    Each class of the `dims` principal components is a diagonal Gaussian (class mean, biased
    per-dimension variance floored at `min_variance`); with s = (s_i + s_j) / 2,
    D_B = 1/8 sum (m_i - m_j)^2 / s + 1/2 sum log(s / sqrt(s_i s_j))
    (google-research `stable_transfer/transferability/gbc.py`, its "diagonal" type as the spec
    names; its configs default to "spherical" and reduce to PCA 64). Overlapping classes have a
    coefficient near 1 and well-separated ones near 0, so higher = better.
    """
    if not min_variance > 0:
        raise ArgumentError(f"min_variance: expected a positive variance floor, found {min_variance!r}")
    z = _principal(features, dims)
    means, counts = _class_means(z, labels, num_classes)
    onehot = jax.nn.one_hot(labels, num_classes, dtype=z.dtype)
    variances = jnp.maximum(onehot.T @ (z - means[labels]) ** 2 / counts[:, None], min_variance)  # [C, D]
    average = (variances[:, None] + variances[None]) / 2  # [C, C, D]
    log_det = jnp.sum(jnp.log(variances), 1)
    distance = (jnp.sum((means[:, None] - means[None]) ** 2 / average, -1) / 8
                + 0.5 * (jnp.sum(jnp.log(average), -1) - 0.5 * (log_det[:, None] + log_det[None])))
    return -jnp.sum(jnp.where(jnp.eye(num_classes, dtype=bool), 0.0, jnp.exp(-distance)))


def _softmax_head(z: Array, onehot: Array, prior: float, steps: int, tol: float) -> tuple[tuple[Array, Array], Array]:
    """The linear softmax head (w [D, C], b [C]) minimising mean CE + ||w||^2 / (2 prior), and that minimum.

    Full-batch L-BFGS (`optax.lbfgs`, zoom line search) from zero until every gradient entry is at
    most `tol` in magnitude, or after `steps` iterations (the PACTran reference runs scipy's
    L-BFGS-B with maxiter=100, tol=1e-6 from a small random start; scipy also stops when the
    relative decrease of the objective falls below tol, which this loop does not, so it may go on
    to a lower minimum). The objective is convex, and strictly convex in w, so its minimum does not
    depend on the start; zero makes it deterministic.
    """

    def objective(theta):
        w, b = theta
        return optax.softmax_cross_entropy(z @ w + b, onehot).mean() + jnp.sum(w**2) / (2 * prior)

    optimizer = optax.lbfgs()
    value_and_grad = optax.value_and_grad_from_state(objective)

    def step(carry):
        theta, state = carry
        value, grad = value_and_grad(theta, state=state)
        updates, state = optimizer.update(grad, state, theta, value=value, grad=grad, value_fn=objective)
        return optax.apply_updates(theta, updates), state

    def running(carry):
        _, state = carry
        count = optax.tree_utils.tree_get(state, "count")
        largest = optax.tree_utils.tree_max(jax.tree.map(jnp.abs, optax.tree_utils.tree_get(state, "grad")))
        return (count == 0) | ((count < steps) & (largest > tol))

    theta = (jnp.zeros((z.shape[1], onehot.shape[1]), z.dtype), jnp.zeros((onehot.shape[1],), z.dtype))
    theta, _ = jax.lax.while_loop(running, step, (theta, optimizer.init(theta)))
    return theta, objective(theta)


CURVATURES = ("summed", "mean")


@_estimator()
def pactran_gaussian(features: Array, labels: Array, *, num_classes: int, dims: int = 64, lam: float = 1.0,
                     s2_factor: float = 10.0, curvature: str = "summed", steps: int = 100, tol: float = 1e-6) -> Array:
    """PACTran-Gaussian (Ding et al., ECCV 2022), NEGATED so that higher = better like every
    estimator here (the paper's metric is a cost, lower = better).

    On the `dims` principal components z (centred; D = their count), with N samples, C classes
    and the prior scale lam N, a linear softmax head (w, b) minimises
    L = mean CE + ||w||^2 / (2 lam N) (`_softmax_head`); then
      cost = L* + 1/2 (D C / (lam N)) s2 log(sigma2_inv),  s2 = s2_factor / D,
      sigma2_inv = tr(H) lam N / (D C) + 1e-10,
    tr(H) the sum of the diagonal second derivatives at the optimum (google-research
    `pactran_metrics/compute_metrics.py`, `calculate_pac_gauss`; PCA 64 as the port the spec
    names). Readings where the spec is silent, all as that released code does: the head has an
    unpenalised bias b, whose curvature entries count in tr(H); tr(H) is that of the whole
    objective, i.e. it includes the prior's 1 / (lam N) per weight, so sigma2_inv >= 1;
    `curvature="summed"` takes the cross-entropy part summed over samples,
    sum_n (||z_n||^2 + 1) sum_c p_nc (1 - p_nc), as that code does although L averages them;
    `curvature="mean"` divides it by N (the Hessian of L itself). `s2_factor` is the 10 of
    s2 = 10 / D that the spec takes with lam = 1 (for lam = 1 the released code reports both
    s2_factor 100 and 10; for lam = 10 and 0.1 it scales both by lam).
    """
    if curvature not in CURVATURES:
        raise ArgumentError(f"curvature: expected one of {CURVATURES}, found {curvature!r}")
    if not lam > 0:
        raise ArgumentError(f"lam: expected a positive prior factor, found {lam!r}")
    if not isinstance(steps, (int, np.integer)) or steps < 1:
        raise ArgumentError(f"steps: expected a positive int (L-BFGS iterations), found {steps!r}")
    if not tol >= 0:
        raise ArgumentError(f"tol: expected a gradient tolerance >= 0, found {tol!r}")
    z = _principal(features, dims)
    n, d = z.shape
    prior, params = lam * n, d * num_classes
    (w, b), objective = _softmax_head(z, jax.nn.one_hot(labels, num_classes, dtype=z.dtype), prior, steps, tol)
    p = jax.nn.softmax(z @ w + b, axis=-1)
    cross_entropy = jnp.sum((jnp.sum(z**2, 1) + 1) * jnp.sum(p * (1 - p), 1)) / (n if curvature == "mean" else 1)
    sigma2_inv = (cross_entropy + params / prior) * prior / params + 1e-10
    return -(objective + 0.5 * params / prior * (s2_factor / d) * jnp.log(sigma2_inv))


# ---------------------------------------------------------------------------------------
# Linear probe (a baseline estimator, and the ground truth of the experiment)


def train_linear_probe(features: Array, labels: Array, *, num_classes: int, steps: int = 300,
                       learning_rate: float = 0.05, weight_decay: float = 1e-3) -> dict[str, Array]:
    """A multinomial logistic-regression probe trained full-batch with optax AdamW.

    Features are standardised with the training statistics (stored in the probe).
    `steps`, `learning_rate` and `weight_decay` are our choices: the survey does not give
    its "Logistic" settings.
    """
    _check(features, labels, num_classes, "features")
    mean, std = features.mean(0), features.std(0) + 1e-6
    x = (features - mean) / std
    params = {"w": jnp.zeros((x.shape[1], num_classes), x.dtype), "b": jnp.zeros((num_classes,), x.dtype)}
    optimizer = optax.adamw(learning_rate, weight_decay=weight_decay)

    def loss(p):
        return optax.softmax_cross_entropy_with_integer_labels(x @ p["w"] + p["b"], labels).mean()

    def step(carry, _):
        p, state = carry
        updates, state = optimizer.update(jax.grad(loss)(p), state, p)
        return (optax.apply_updates(p, updates), state), None

    (params, _), _ = jax.lax.scan(step, (params, optimizer.init(params)), None, length=steps)
    return {**params, "mean": mean, "std": std}


def probe_accuracy(probe: dict[str, Array], features: Array, labels: Array) -> Array:
    """Accuracy of a trained probe on (features, labels)."""
    logits = (features - probe["mean"]) / probe["std"] @ probe["w"] + probe["b"]
    return jnp.mean(jnp.argmax(logits, -1) == labels, dtype=logits.dtype)


@_estimator()
def linear_probe(features: Array, labels: Array, *, num_classes: int, key: Array, holdout: float = 0.3,
                 steps: int = 300) -> Array:
    """Held-out accuracy of a logistic-regression probe ("Logistic" in the survey).

    A random `holdout` fraction of the samples (chosen with `key`) is kept for scoring.
    """
    order = jax.random.permutation(key, features.shape[0])
    cut = features.shape[0] - max(1, int(round(holdout * features.shape[0])))
    train, test = order[:cut], order[cut:]
    probe = train_linear_probe(features[train], labels[train], num_classes=num_classes, steps=steps)
    return probe_accuracy(probe, features[test], labels[test])


# ---------------------------------------------------------------------------------------
# Estimators on a source head: LEEP, NCE, and NLEEP (LEEP on a Gaussian mixture)


@_estimator("source_probs")
def leep(source_probs: Array, labels: Array, *, num_classes: int) -> Array:
    """LEEP (Nguyen et al., ICML 2020): (1/N) sum_i log sum_z P(y_i | z) theta(x_i)_z with the
    empirical joint P(y, z) = (1/N) sum_{i: y_i = y} theta(x_i)_z (thuml/LogME `LEEP.py`).

    Source classes with no probability mass get P(y | z) = 0 (their theta is 0 everywhere).
    """
    joint = jax.nn.one_hot(labels, num_classes, dtype=source_probs.dtype).T @ source_probs / labels.shape[0]
    marginal = joint.sum(0)
    conditional = jnp.where(marginal > 0, joint / jnp.where(marginal > 0, marginal, 1.0), 0.0)  # P(y|z) [C, Cs]
    predicted = source_probs @ conditional.T
    return jnp.mean(jnp.log(jnp.take_along_axis(predicted, labels[:, None], 1)))


@_estimator("source_probs")
def nce(source_probs: Array, labels: Array, *, num_classes: int) -> Array:
    """NCE (Tran et al., ICCV 2019): -H(Y | Z) of the empirical joint of target labels and the
    source head's argmax labels z, with 1e-20 smoothing (thuml/LogME `NCE.py`).
    """
    source = jax.nn.one_hot(jnp.argmax(source_probs, 1), source_probs.shape[1], dtype=source_probs.dtype)
    joint = jax.nn.one_hot(labels, num_classes, dtype=source.dtype).T @ source / labels.shape[0]  # [C, Cs]
    marginal = joint.sum(0)
    conditional = joint / jnp.where(marginal > 0, marginal, 1.0) + 1e-20
    entropy = jnp.sum(-conditional * jnp.log(conditional), 0)
    return -jnp.sum(jnp.where(marginal > 0, entropy * marginal, 0.0))


def gmm_posteriors(z: Array, components: int, key: Array, *, kmeans_steps: int = 10, em_steps: int = 100,
                   tol: float = 1e-3, reg_covar: float = 1e-6) -> Array:
    """Posteriors [N, K] of a full-covariance Gaussian mixture fitted by EM.

    As sklearn's GaussianMixture defaults: initial responsibilities from k-means labels (here
    `kmeans_steps` Lloyd steps from `components` random samples), `reg_covar` added to each
    covariance diagonal, EM until the mean log-likelihood gains less than `tol` or after
    `em_steps` steps.
    """
    n, d = z.shape
    eye = jnp.eye(d, dtype=z.dtype)

    def nearest(centres):
        return jax.nn.one_hot(jnp.argmin(jnp.sum((z[:, None] - centres[None]) ** 2, -1), 1), components, dtype=z.dtype)

    def kmeans(_, centres):
        assign = nearest(centres)
        counts = assign.sum(0)
        return jnp.where(counts[:, None] > 0, assign.T @ z / jnp.maximum(counts, 1)[:, None], centres)

    centres = jax.lax.fori_loop(0, kmeans_steps, kmeans, z[jax.random.choice(key, n, (components,), replace=False)])

    def em_step(resp):
        """M-step from responsibilities, then E-step: (new log-responsibilities, mean log-likelihood)."""
        counts = resp.sum(0) + 10 * jnp.finfo(z.dtype).eps
        means = resp.T @ z / counts[:, None]
        centred = z[None] - means[:, None]  # [K, N, d]
        covs = jnp.einsum("kn,kni,knj->kij", resp.T, centred, centred) / counts[:, None, None] + reg_covar * eye
        chol = jnp.linalg.cholesky(covs)
        solved = jax.scipy.linalg.solve_triangular(chol, jnp.swapaxes(centred, 1, 2), lower=True)  # [K, d, N]
        log_det = 2 * jnp.sum(jnp.log(jnp.diagonal(chol, axis1=1, axis2=2)), 1)
        joint = -0.5 * (jnp.sum(solved**2, 1) + log_det[:, None] + d * jnp.log(2 * jnp.pi)).T + jnp.log(counts / n)
        norm = jax.nn.logsumexp(joint, axis=1, keepdims=True)
        return joint - norm, norm.mean()

    def running(state):
        _, likelihood, previous, step = state
        return (step < em_steps) & (jnp.abs(likelihood - previous) >= tol)

    def iterate(state):
        log_resp, likelihood, _, step = state
        return (*em_step(jnp.exp(log_resp)), likelihood, step + 1)

    log_resp, likelihood = em_step(nearest(centres))
    log_resp, *_ = jax.lax.while_loop(running, iterate, (log_resp, likelihood, likelihood - 2 * tol - 1.0, 1))
    return jnp.exp(log_resp)


@_estimator()
def nleep(features: Array, labels: Array, *, num_classes: int, key: Array, variance_kept: float = 0.8,
          components_per_class: int = 5, max_dims: int = 64, em_steps: int = 100) -> Array:
    """NLEEP (Li et al., CVPR 2021): LEEP with theta = posteriors of a Gaussian mixture of
    `components_per_class` x C components on PCA features keeping `variance_kept` of the
    variance (SFDA `metrics.py`).

    The kept dimension count depends on the data, so it is applied as a mask on at most
    `max_dims` principal components (a masked axis is the same constant for every component,
    so it leaves the posteriors unchanged); `max_dims` bounds the cost under vmap.
    """
    z, ratio = _pca(features, min(max_dims, *features.shape))
    kept = jnp.searchsorted(jnp.cumsum(ratio), variance_kept, side="right") + 1
    z = jnp.where(jnp.arange(z.shape[1]) < kept, z, 0.0)
    posteriors = gmm_posteriors(z, components_per_class * num_classes, key, em_steps=em_steps)
    return leep(posteriors, labels, num_classes=num_classes)


# ---------------------------------------------------------------------------------------
# Many candidates at once


def score_candidates(estimator: Callable[..., Array], candidates: Array | Sequence[Array], labels: Array,
                     **kwargs) -> Array:
    """Scores M candidate feature sets (or source heads) with one estimator, in float64.

    Args:
      estimator: any estimator of this module (e.g. `logme`).
      candidates: [M, N, D] array, or a sequence of [N, D_m] arrays (equal shapes are
        vmapped together; different widths are scored group by group).
      labels: [N] integer labels shared by all candidates.
      **kwargs: the estimator's keyword arguments (`num_classes=...`, `key=...`).
    Returns: [M] float64 scores, in candidate order.
    """
    if len(candidates) == 0:
        raise ArgumentError("candidates: expected at least one candidate feature set, found none")
    candidates = [np.asarray(c) for c in candidates]
    for i, c in enumerate(candidates):
        _check(c, labels, kwargs.get("num_classes"), f"candidates[{i}]")
    scores = np.zeros(len(candidates), np.float64)
    with jax.enable_x64(True):
        labels = jnp.asarray(np.asarray(labels), jnp.int32)
        batched = jax.jit(jax.vmap(lambda f: estimator(f, labels, **kwargs)))
        for shape in dict.fromkeys(c.shape for c in candidates):
            chosen = [i for i, c in enumerate(candidates) if c.shape == shape]
            stack = jnp.asarray(np.stack([candidates[i] for i in chosen]), jnp.float64)
            scores[chosen] = np.asarray(batched(stack))
    return scores


# ---------------------------------------------------------------------------------------
# Rank correlation between scores and ground-truth transfer performance


def _paired(x: Array, y: Array) -> tuple[Array, Array]:
    x, y = jnp.asarray(x), jnp.asarray(y)
    chex.assert_rank([x, y], 1)
    if x.shape != y.shape or x.shape[0] < 2:
        raise ArgumentError(f"x, y: expected two 1-D arrays of equal length >= 2, found shapes {x.shape} and {y.shape}")
    dtype = jnp.promote_types(jnp.promote_types(x.dtype, y.dtype), jnp.float32)
    return x.astype(dtype), y.astype(dtype)


def pearson(x: Array, y: Array) -> Array:
    """Pearson correlation coefficient."""
    x, y = _paired(x, y)
    xc, yc = x - x.mean(), y - y.mean()
    return jnp.sum(xc * yc) / jnp.sqrt(jnp.sum(xc**2) * jnp.sum(yc**2))


def spearman(x: Array, y: Array) -> Array:
    """Spearman's rho: Pearson correlation of average ranks (scipy.stats.spearmanr)."""
    x, y = _paired(x, y)
    return pearson(_average_ranks(x), _average_ranks(y))


def _weighted_tau_pairs(x: Array, y: Array, weights: Array) -> Array:
    """Tau-b-style correlation where pair (i, j) counts with weights[i, j]."""
    dx, dy = jnp.sign(x[:, None] - x[None, :]), jnp.sign(y[:, None] - y[None, :])
    upper = jnp.triu(jnp.ones_like(weights), 1) * weights
    return jnp.sum(upper * dx * dy) / jnp.sqrt(jnp.sum(upper * (dx != 0)) * jnp.sum(upper * (dy != 0)))


def kendall_tau(x: Array, y: Array) -> Array:
    """Kendall's tau-b (scipy.stats.kendalltau's default, ties corrected)."""
    x, y = _paired(x, y)
    return _weighted_tau_pairs(x, y, jnp.ones((x.shape[0],) * 2, x.dtype))


def weighted_tau(x: Array, y: Array) -> Array:
    """Weighted Kendall tau (Vigna 2015) as scipy.stats.weightedtau with its defaults: the pair
    (i, j) weighs 1/(r_i + 1) + 1/(r_j + 1), r the 0-based decreasing lexicographic rank by
    (x, y); the result averages this with the same statistic ranked by (y, x). Important
    elements (high scores) count more: the metric used by LogME and SFDA.
    """
    x, y = _paired(x, y)

    def ranked_by(a, b):
        order = jnp.lexsort((-b, -a))  # decreasing by a, ties by decreasing b
        rank = jnp.zeros(a.shape[0], jnp.int32).at[order].set(jnp.arange(a.shape[0], dtype=jnp.int32))
        w = 1.0 / (rank + 1.0)
        return _weighted_tau_pairs(a, b, w[:, None] + w[None, :])

    return (ranked_by(x, y) + ranked_by(y, x)) / 2


ESTIMATORS: dict[str, Callable[..., Array]] = {
    "h_score": h_score, "shrinkage_h_score": shrinkage_h_score, "logme": logme, "transrate": transrate,
    "sfda": sfda, "parc": parc, "knn": knn_accuracy, "linear_probe": linear_probe, "nleep": nleep,
    "gbc": gbc, "pactran_gaussian": pactran_gaussian, "leep": leep, "nce": nce,
}
"""Every estimator by name; `leep` and `nce` take source-head probabilities, the rest features."""
