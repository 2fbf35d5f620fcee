"""Small vision-language models with ground truth, trained on synthetic shapes (the models
that localisation methods are scored on; `experiments.small_vlm` reports their accuracy).

Two tiny models read 32x32 images of coloured shapes (`jaxinterp.data.shapes`) through a
SigLIP-style tower without class token whose patches (4x4 pixels, an 8x8 grid) map one to one
onto image tokens (`select_strategy="full"`, last tower layer), an MLP projector and a
two-block Llama decoder:

- `llava`: causal decoder, trained on the next-token loss of the answer (and the `<eos>` that
  closes it) of chat prompts; answers come from greedy `Model.generate`.
- `diffusion`: a bidirectional decoder with a `<mask>` token (LLaDA-V style), trained with
  LLaDA's SFT objective: t ~ U(0, 1], each answer token (the answer padded with `<eos>` to
  `ANSWER_LENGTH`) masked with probability t, cross-entropy on the masked tokens weighted by
  1/t and divided by the answer length; the prompt is never masked. Answers come from
  `jaxinterp.diffusion.sample`.

`load_small_vlm(kind)` trains a model once and caches it under
`cache_root()/small_vlm/<kind>-<hash of its Settings>` (written with `jaxinterp.save`, beside
a `.json` record of the training curve and time); later calls load it. Since every object's
patch box is known (`Example.region(question)`), later experiments score attention and
saliency maps of these models against ground truth.
"""

from __future__ import annotations

import dataclasses
import fcntl
import functools
import hashlib
import json
import os
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

import jaxinterp
from jaxinterp.cache import cache_root
from jaxinterp.converters import orbax_dir
from jaxinterp.data import shapes
from jaxinterp.data.vocab import word_tokenizer
from jaxinterp.diffusion import sample
from jaxinterp.errors import ArgumentError
from jaxinterp.images import ImageProcessor
from jaxinterp.models import Batch, init_params, make_batch, segment_id
from jaxinterp.models.llama import LlamaConfig
from jaxinterp.models.llava import LlavaConfig
from jaxinterp.models.siglip_vision import SiglipVisionConfig
from jaxinterp.multimodal import encode

KINDS = ("llava", "diffusion")
LEARNING_RATES = {"llava": 3e-3, "diffusion": 1e-3}
ANSWER_LENGTH = 3  # answer tokens generated: the longest answer ("top left") and its <eos>
ANSWER = segment_id("answer")
Loss = Callable[[LlavaConfig, dict, Batch, jax.Array], tuple[jax.Array, dict]]


@dataclasses.dataclass(frozen=True, kw_only=True)
class Settings:
    """Everything that determines a trained model; its hash names the cache entry.

    Attributes:
      kind: `llava` (causal, next-token loss) or `diffusion` (bidirectional, masked diffusion).
      train_images: training scenes (each with one question of every kind).
      steps, batch_size, learning_rate: AdamW with warm-up and cosine decay to a tenth; the
        learning rate defaults per kind (`LEARNING_RATES`: at 3e-3 the diffusion model learned
        only the answer priors, 0.447 held-out accuracy; at 1e-3 it reads the image, 0.62).
      width, heads: residual width and attention heads of tower, projector and decoder.
      vision_layers, text_layers: blocks of the tower and of the decoder.
      image_size, patch_size: the images and the tower's patches.
      seed: parameters, data and batch order.
    """

    kind: str
    train_images: int = 4000
    steps: int = 1200
    batch_size: int = 64
    learning_rate: float | None = None
    width: int = 64
    heads: int = 4
    vision_layers: int = 2
    text_layers: int = 2
    image_size: int = 32
    patch_size: int = 4
    seed: int = 0

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ArgumentError(f"kind: expected one of {KINDS}, found {self.kind!r}")
        if self.learning_rate is None:
            object.__setattr__(self, "learning_rate", LEARNING_RATES[self.kind])
        if self.width % 4 or self.width % self.heads:
            raise ArgumentError(f"width: expected a multiple of 4 and of heads={self.heads}, found {self.width}")

    def digest(self) -> str:
        """A short hash of the settings, the data version and the answer length."""
        text = json.dumps([dataclasses.asdict(self), shapes.VERSION, ANSWER_LENGTH], sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:12]


def sincos_positions(rows: int, cols: int, width: int) -> np.ndarray:
    """[rows * cols, width] 2D sine-cosine position embeddings in raster order (as MAE's): half
    the channels encode the row, half the column, at geometric frequencies from 1 down to
    1 / (4 x the grid side), so that even a small grid gets distinct, smooth codes."""
    quarter = width // 4
    frequencies = (4 * max(rows, cols)) ** -(np.arange(quarter) / quarter)

    def code(n: int) -> np.ndarray:
        angles = np.arange(n)[:, None] * frequencies
        return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)

    row, col = np.divmod(np.arange(rows * cols), cols)
    return np.concatenate([code(rows)[row], code(cols)[col]], axis=1)


def build(settings: Settings) -> jaxinterp.Model:
    """A randomly initialised model with its word tokenizer and SigLIP image processor."""
    tokenizer = word_tokenizer(shapes.vocabulary(), extra_special=["<image>", "<mask>"])
    width, heads = settings.width, settings.heads
    vision = SiglipVisionConfig(
        image_size=settings.image_size, patch_size=settings.patch_size, num_channels=3, hidden_size=width,
        intermediate_size=4 * width, num_layers=settings.vision_layers, num_heads=heads, head_dim=width // heads,
        layer_norm_eps=1e-6, activation="gelu_pytorch_tanh")
    diffusion = settings.kind == "diffusion"
    text = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=width, intermediate_size=4 * width, num_layers=settings.text_layers,
        num_heads=heads, num_kv_heads=heads, head_dim=width // heads, max_position_embeddings=256,
        causal=not diffusion, objective="masked_token" if diffusion else "next_token", bos_token_id=tokenizer.bos_token_id, eos_token_ids=(tokenizer.eos_token_id,),
        pad_token_id=tokenizer.pad_token_id,
        mask_token_id=tokenizer.convert_tokens_to_ids("<mask>") if diffusion else None)
    config = LlavaConfig(vision=vision, text=text, image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
                         feature_layer=-1, select_strategy="full")
    params = init_params(config, jax.random.key(settings.seed))
    params["vision"]["position_embed"] = jnp.asarray(sincos_positions(*vision.grid, width), jnp.float32)
    return jaxinterp.Model(config, params, tokenizer,
                           processor=ImageProcessor.defaults("siglip", settings.image_size),
                           source=f"small_vlm/{settings.kind}")


def pairs(data: list[shapes.Example]) -> list[tuple[shapes.Example, shapes.Question]]:
    """Every (example, question), example by example."""
    return [(example, question) for example in data for question in example.questions]


def prompts(model: jaxinterp.Model, rows: list[tuple[shapes.Example, shapes.Question]], *,
            answers: bool = False) -> Batch:
    """Chat prompts with their images: right-padded with the answers (teacher forcing) when
    `answers`, else left-padded and ending with the assistant prompt (for answering)."""
    texts, images = [q.text for _, q in rows], [e.image for e, _ in rows]
    if answers:
        return encode(model, texts, images, answers=[q.answer for _, q in rows], chat=True, padding="right")
    return encode(model, texts, images, chat=True, padding="left")


def with_answer_region(model: jaxinterp.Model, prompt: Batch, answers: list[str]) -> Batch:
    """A left-padded prompt followed by its answers, each padded with `<eos>` to `ANSWER_LENGTH`
    tokens (segment `answer`): the layout `jaxinterp.diffusion.sample` fills in."""
    eos = model.tokenizer.eos_token_id
    ids = [model.tokenizer(a, add_special_tokens=False)["input_ids"] for a in answers]
    too_long = [a for a, row in zip(answers, ids) if len(row) >= ANSWER_LENGTH]
    if too_long:
        raise ArgumentError(f"answers: expected fewer than {ANSWER_LENGTH} tokens each, found {too_long[:3]}")
    region = np.array([row + [eos] * (ANSWER_LENGTH - len(row)) for row in ids], np.int32)
    tokens = jnp.concatenate([prompt.tokens, region], axis=1)
    return make_batch(tokens, jnp.concatenate([prompt.mask, jnp.ones(region.shape, bool)], axis=1),
                      segments=jnp.concatenate([prompt.segments, jnp.full(region.shape, ANSWER)], axis=1),
                      pixels=prompt.pixels)


def training_rows(model: jaxinterp.Model, data: list[shapes.Example]) -> Batch:
    """Every question of `data` as one batch in the layout the model's loss reads."""
    rows = pairs(data)
    if model.next_token:
        return prompts(model, rows, answers=True)
    return with_answer_region(model, prompts(model, rows), [q.answer for _, q in rows])


def next_token_loss(config: LlavaConfig, params: dict, batch: Batch, key: jax.Array) -> tuple[jax.Array, dict]:
    """Mean cross-entropy of the answer tokens and the `<eos>` right after each answer."""
    del key
    logits = jaxinterp.Model(config, params).apply(batch).logits[:, :-1]
    targets = batch.tokens[:, 1:]
    answer = batch.segments[:, 1:] == ANSWER
    closing = (batch.segments[:, :-1] == ANSWER) & jnp.isin(targets, jnp.array(config.eos_token_ids))
    weight = (answer | closing).astype(jnp.float32)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
    correct = (jnp.argmax(logits, -1) == targets).astype(jnp.float32)
    return jnp.sum(ce * weight) / jnp.sum(weight), {"token_accuracy": jnp.sum(correct * weight) / jnp.sum(weight)}


def masked_diffusion_loss(config: LlavaConfig, params: dict, batch: Batch, key: jax.Array,
                          eps: float = 1e-3) -> tuple[jax.Array, dict]:
    """LLaDA's SFT loss: answer tokens masked with probability t ~ U(0, 1] (floored at `eps`),
    cross-entropy on the masked ones weighted by 1/t, per row over the answer length."""
    time_key, mask_key = jax.random.split(key)
    answer = batch.segments == ANSWER
    t = (1 - eps) * jax.random.uniform(time_key, (batch.tokens.shape[0], 1)) + eps
    masked = answer & (jax.random.uniform(mask_key, batch.tokens.shape) < t)
    noisy = batch.replace(tokens=jnp.where(masked, config.mask_token_id, batch.tokens))
    logits = jaxinterp.Model(config, params).apply(noisy).logits
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch.tokens)
    per_row = jnp.sum(ce * masked / t, axis=1) / jnp.sum(answer, axis=1)
    correct = (jnp.argmax(logits, -1) == batch.tokens) & masked
    return jnp.mean(per_row), {"token_accuracy": jnp.sum(correct) / jnp.maximum(jnp.sum(masked), 1)}


LOSSES: dict[str, Loss] = {"llava": next_token_loss, "diffusion": masked_diffusion_loss}


def train(model: jaxinterp.Model, rows: Batch, settings: Settings, *, progress: bool = True) -> tuple[dict, dict]:
    """Trains `model.params` on `rows` with the kind's loss; returns the params and the curves.

    One jitted step (params, optimiser state, batch and key as arguments) serves both kinds;
    batches are drawn without replacement from a seeded permutation of the rows, epoch by epoch.
    """
    loss_fn = functools.partial(LOSSES[settings.kind], model.config)
    schedule = optax.warmup_cosine_decay_schedule(0.0, settings.learning_rate, settings.steps // 10, settings.steps,
                                                  settings.learning_rate / 10)
    optimizer = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(schedule, weight_decay=0.01))

    @jax.jit
    def step(params, state, batch, key):
        (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, batch, key)
        updates, state = optimizer.update(grads, state, params)
        return optax.apply_updates(params, updates), state, {"loss": loss, **metrics}

    rows = jax.tree.map(np.asarray, rows)
    count = rows.tokens.shape[0]
    if count < settings.batch_size:
        raise ArgumentError(f"rows: expected at least batch_size={settings.batch_size} rows, found {count}")
    rng, key = np.random.default_rng(settings.seed), jax.random.key(settings.seed)
    params, state, order = model.params, optimizer.init(model.params), np.zeros(0, int)
    curves: dict[str, list[float]] = {"loss": [], "token_accuracy": []}
    bar = tqdm(range(settings.steps), desc=f"small_vlm {settings.kind}", disable=not progress)
    for i in bar:
        if len(order) < settings.batch_size:
            order = rng.permutation(count)
        chosen, order = order[:settings.batch_size], order[settings.batch_size:]
        batch = jax.tree.map(lambda x: x[chosen], rows)  # noqa: B023
        params, state, metrics = step(params, state, batch, jax.random.fold_in(key, i))
        for name in curves:
            curves[name].append(float(metrics[name]))
        bar.set_postfix(loss=f"{curves['loss'][-1]:.3f}", refresh=False)
    return params, curves


def cache_entry(settings: Settings) -> str:
    """The cache directory of a trained model (its training record is `<entry>.json`)."""
    return os.path.join(cache_root(), "small_vlm", f"{settings.kind}-{settings.digest()}")


def load_small_vlm(kind: str, settings: Settings | None = None, *, progress: bool = True) -> jaxinterp.Model:
    """The trained small VLM of `kind` (`llava` or `diffusion`), trained first if not cached.

    Args:
      kind: which model.
      settings: training settings (default `Settings(kind=kind)`); each distinct setting is
        its own cache entry.
      progress: show a progress bar while training.
    """
    settings = settings or Settings(kind=kind)
    if settings.kind != kind:
        raise ArgumentError(f"settings.kind: expected {kind!r} (the kind asked for), found {settings.kind!r}")
    entry = cache_entry(settings)
    if not orbax_dir.is_converted(entry):
        os.makedirs(os.path.dirname(entry), exist_ok=True)
        with open(f"{entry}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not orbax_dir.is_converted(entry):
                _train_and_save(settings, entry, progress)
    return jaxinterp.load(entry)


def _train_and_save(settings: Settings, entry: str, progress: bool) -> None:
    started = time.perf_counter()
    model = build(settings)
    rows = training_rows(model, shapes.examples("train", settings.train_images, settings.seed,
                                                 image_size=settings.image_size, patch_size=settings.patch_size))
    encoded = time.perf_counter()
    params, curves = train(model, rows, settings, progress=progress)
    model = model.replace(params=jax.block_until_ready(params))
    record = {"settings": dataclasses.asdict(settings), "encode_seconds": encoded - started,
              "train_seconds": time.perf_counter() - encoded, "curves": curves}
    with open(f"{entry}.json.partial", "w") as f:
        json.dump(record, f)
    os.replace(f"{entry}.json.partial", f"{entry}.json")
    jaxinterp.save(model, entry, source=f"small_vlm/{settings.kind}", source_hash=settings.digest())


def training_record(settings: Settings) -> dict:
    """Settings, encoding and training seconds and curves of a cached model."""
    with open(f"{cache_entry(settings)}.json") as f:
        return json.load(f)


def answer(model: jaxinterp.Model, rows: list[tuple[shapes.Example, shapes.Question]], *,
           chunk: int = 256) -> list[str]:
    """The model's answers: greedy decoding (causal) or LLaDA sampling of `ANSWER_LENGTH`
    tokens in one block, one token per step (bidirectional)."""
    texts = []
    for start in range(0, len(rows), chunk):
        batch = prompts(model, rows[start:start + chunk])
        if model.next_token:
            texts += model.generate(batch, max_new_tokens=ANSWER_LENGTH).texts
        else:
            texts += sample(model, batch, gen_length=ANSWER_LENGTH, steps=ANSWER_LENGTH,
                            block_length=ANSWER_LENGTH).texts
    return [t.strip() for t in texts]


def accuracy(rows: list[tuple[shapes.Example, shapes.Question]], predicted: list[str]) -> dict[str, float]:
    """Exact-match accuracy per question kind and overall."""
    hits = {kind: [p == q.answer for (_, q), p in zip(rows, predicted) if q.kind == kind] for kind in shapes.KINDS}
    result = {kind: float(np.mean(h)) for kind, h in hits.items() if h}
    result["overall"] = float(np.mean([p == q.answer for (_, q), p in zip(rows, predicted)]))
    return result
