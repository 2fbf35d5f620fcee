"""Probes of latent thoughts (ILI, Chang et al., ACL 2026, arXiv:2606.01243, §3).

- `linear_cka`: structural alignment of latent step surrogates with CoT step states (Eq. 6).
- `init_mapper` / `apply_mapper` / `train_mapper`: pointwise recoverability, a mapper trained
  with the cosine loss 1 - cos(f(zbar), c) (Eq. 7), AdamW, best validation epoch kept.
- `logit_lens`: the lexical probe softmax(W LN(zbar)) through the model's own final norm and
  head (Eq. 8), and `nearest_token`, weight tying read as nearest-neighbour projection (Eq. 10).
- `init_energy` / `energy` / `train_energy`: an energy H that should fall along the thought
  chain, trained with the margin ranking loss max(0, gamma - (H(x_t) - H(x_{t+1}))) (Eq. 11).
- `flip_rate`, `retrieve_anchors`: causal-probe bookkeeping (Eq. 9) and the slerp anchor bank.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxinterp.edits import FunctionEdit
from jaxinterp.errors import ArgumentError
from jaxinterp.models import make_batch

Array = jax.Array


def linear_cka(z: Array, c: Array) -> Array:
    """Linear CKA(Z, C) = |Z^T C|_F^2 / (|Z^T Z|_F |C^T C|_F) on column-centred [N, d] matrices (Eq. 6)."""
    chex.assert_rank([z, c], 2)
    chex.assert_equal_shape_prefix([z, c], 1)
    z = z - z.mean(0)
    c = c - c.mean(0)
    return jnp.sum((z.T @ c) ** 2) / (jnp.linalg.norm(z.T @ z) * jnp.linalg.norm(c.T @ c))


def init_mapper(key: Array, dim: int, hidden: int | None = 1024) -> dict:
    """Mapper parameters: linear R^d -> R^d when `hidden` is None (the paper), else
    Linear(d, hidden) -> ReLU -> LayerNorm -> Linear(hidden, d) (the ILI code default, hidden 1024)."""
    if hidden is None:
        return {"w": jnp.eye(dim), "b": jnp.zeros(dim)}
    k1, k2 = jax.random.split(key)
    return {"w1": jax.random.normal(k1, (dim, hidden)) / np.sqrt(dim), "b1": jnp.zeros(hidden),
            "scale": jnp.ones(hidden), "bias": jnp.zeros(hidden),
            "w2": jax.random.normal(k2, (hidden, dim)) / np.sqrt(hidden), "b2": jnp.zeros(dim)}


def apply_mapper(params: dict, x: Array) -> Array:
    """f_phi(x) for parameters from `init_mapper`."""
    if "w" in params:
        return x @ params["w"] + params["b"]
    h = jax.nn.relu(x @ params["w1"] + params["b1"])
    h = (h - h.mean(-1, keepdims=True)) * jax.lax.rsqrt(h.var(-1, keepdims=True) + 1e-5) * params["scale"] + params["bias"]
    return h @ params["w2"] + params["b2"]


def cosine(a: Array, b: Array) -> Array:
    """Row-wise cosine similarity."""
    return jnp.sum(a * b, -1) / (jnp.linalg.norm(a, axis=-1) * jnp.linalg.norm(b, axis=-1) + 1e-8)


def _minibatches(count: int, size: int, rng: np.random.Generator):
    order = rng.permutation(count)
    return [order[i:i + size] for i in range(0, count, size)]


def train_mapper(z: Array, c: Array, *, hidden: int | None = 1024, epochs: int = 80, lr: float = 1e-3,
                 weight_decay: float = 1e-4, batch_size: int = 64, validation: float = 0.1, seed: int = 0) -> tuple[dict, dict]:
    """Trains f_phi on pairs (zbar_t, c_t) with L = mean(1 - cos(f(zbar), c)) (Eq. 7), AdamW (ILI code
    defaults), keeping the epoch with the best validation cosine. Returns (params, report) with the
    validation cosine of the mapper and of the identity map. Split the items into train and test
    yourself for a held-out number; `validation` is carved from what is given here."""
    z, c = np.asarray(z, np.float32), np.asarray(c, np.float32)
    if z.shape != c.shape or z.ndim != 2:
        raise ArgumentError(f"z, c: expected two [N, d] arrays of one shape, found {z.shape} and {c.shape}")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(z))
    cut = max(1, int(round(validation * len(z))))
    val, train = order[:cut], order[cut:]
    params = init_mapper(jax.random.key(seed), z.shape[1], hidden)
    optimizer = optax.adamw(lr, weight_decay=weight_decay)
    state = optimizer.init(params)
    loss = lambda p, a, b: jnp.mean(1 - cosine(apply_mapper(p, a), b))  # noqa: E731

    @jax.jit
    def update(params, state, a, b):
        grads = jax.grad(loss)(params, a, b)
        updates, state = optimizer.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    best, best_params = -np.inf, params
    for _ in range(epochs):
        for rows in _minibatches(len(train), batch_size, rng):
            params, state = update(params, state, z[train[rows]], c[train[rows]])
        score = float(jnp.mean(cosine(apply_mapper(params, z[val]), c[val])))
        if score > best:
            best, best_params = score, params
    return best_params, {"val_cosine": best, "identity_cosine": float(jnp.mean(cosine(z[val], c[val])))}


def logit_lens(model, vectors: Array, *, renormalise: bool = True) -> Array:
    """Logits [N, V] of the model's head on `vectors` [N, D] (Eq. 8).

    With `renormalise` the vectors replace the last block's residual output, so the model's own
    final norm is applied first (softmax(W LN(zbar))); without it they replace the final-norm
    output (for vectors that already are final-norm states, like Coconut thoughts)."""
    vectors = jnp.asarray(vectors)
    chex.assert_rank(vectors, 2)
    site = f"blocks.{model.config.num_layers - 1}.resid_post" if renormalise else "final_norm"
    edit = FunctionEdit((site,), lambda x, ctx, v: v[:, None, :].astype(x.dtype), vectors)
    return model(make_batch(np.zeros((len(vectors), 1), np.int32)), edits=edit)[:, 0]


def nearest_token(embedding: Array, h: Array) -> Array:
    """T(h) = argmax_i <h, e_i> (Eq. 10): ids [N] of the embedding rows with the largest inner product."""
    return jnp.argmax(jnp.asarray(h) @ jnp.asarray(embedding).T, axis=-1)


def init_energy(key: Array, nodes: Array, hidden: int = 1024) -> dict:
    """Energy parameters: whitening statistics of `nodes` [N, d] then Linear-ReLU-Linear-ReLU-Linear
    to a scalar (ILI code: hidden 1024; the paper says hidden = d)."""
    nodes = jnp.asarray(nodes)
    keys = jax.random.split(key, 3)
    dim = nodes.shape[-1]
    dense = lambda k, a, b: jax.random.normal(k, (a, b)) / np.sqrt(a)  # noqa: E731
    return {"mu": nodes.mean(0), "sigma": nodes.std(0) + 1e-6,
            "w1": dense(keys[0], dim, hidden), "b1": jnp.zeros(hidden), "w2": dense(keys[1], hidden, hidden),
            "b2": jnp.zeros(hidden), "w3": dense(keys[2], hidden, 1), "b3": jnp.zeros(1)}


def energy(params: dict, x: Array) -> Array:
    """H(x) [...] for parameters from `init_energy`."""
    h = (x - params["mu"]) / params["sigma"]
    h = jax.nn.relu(h @ params["w1"] + params["b1"])
    h = jax.nn.relu(h @ params["w2"] + params["b2"])
    return (h @ params["w3"] + params["b3"])[..., 0]


def train_energy(chains: Array, *, gamma: float = 0.1, hidden: int = 1024, epochs: int = 20, lr: float = 1e-3,
                 batch_size: int = 64, seed: int = 0) -> dict:
    """Trains H on chains [N, K, d] (states in reasoning order) with the margin ranking loss
    mean max(0, gamma - (H(x_t) - H(x_{t+1}))) over consecutive pairs (Eq. 11; Adam, ILI code defaults)."""
    chains = np.asarray(chains, np.float32)
    if chains.ndim != 3 or chains.shape[1] < 2:
        raise ArgumentError(f"chains: expected [N, K >= 2, d] states, found shape {chains.shape}")
    rng = np.random.default_rng(seed)
    params = init_energy(jax.random.key(seed), chains.reshape(-1, chains.shape[-1]), hidden)
    trainable = {k: v for k, v in params.items() if k not in ("mu", "sigma")}
    optimizer = optax.adam(lr)
    state = optimizer.init(trainable)

    def loss(trainable, batch):
        e = energy({**params, **trainable}, batch)
        return jnp.mean(jax.nn.relu(gamma - (e[:, :-1] - e[:, 1:])))

    @jax.jit
    def update(trainable, state, batch):
        grads = jax.grad(loss)(trainable, batch)
        updates, state = optimizer.update(grads, state, trainable)
        return optax.apply_updates(trainable, updates), state

    for _ in range(epochs):
        for rows in _minibatches(len(chains), batch_size, rng):
            trainable, state = update(trainable, state, chains[rows])
    return {**params, **trainable}


def monotone_fraction(params: dict, chains: Array) -> float:
    """Share of chains [N, K, d] whose energy strictly decreases at every step."""
    e = np.asarray(energy(params, jnp.asarray(chains)))
    return float(np.mean(np.all(np.diff(e, axis=1) < 0, axis=1)))


def flip_rate(before: np.ndarray, after: np.ndarray) -> float:
    """Share of items whose decoded answer changed (the paper's Flip %, inferred definition)."""
    return float(np.mean(np.asarray(before) != np.asarray(after)))


def retrieve_anchors(queries: Array, bank_keys: Array, bank_values: Array) -> Array:
    """For each query [B, D], the bank value [D] whose key has the highest cosine (ILI App. C.2:
    keys are prefix states, values final thoughts z_K of exemplars from a SEPARATE set)."""
    scores = cosine(jnp.asarray(queries)[:, None, :], jnp.asarray(bank_keys)[None, :, :])
    return jnp.asarray(bank_values)[jnp.argmax(scores, axis=1)]
