"""Synthetic shapes: small RGB images of coloured shapes, questions about them, and ground truth.

Each scene holds 1-3 objects with distinct shapes (square, circle, triangle) and distinct
colours (red, green, blue, yellow) on a black background, each inside its own quadrant of the
image (so objects never overlap and the quadrant answer is never ambiguous), with a random
size and offset inside that quadrant. Every object records its pixel box and the box of the
patches it touches, so a trained vision-language model's attention or saliency can be scored
against a known region. Every scene comes with one question of each kind:

    presence   "is there a red circle ?"       -> yes / no   (negatives are near misses: the
                                                  shape or the colour is present, not both)
    colour     "what colour is the square ?"   -> red / green / blue / yellow
    position   "where is the triangle ?"       -> top left / top right / bottom left / bottom right
    count      "how many shapes are there ?"   -> one / two / three

and each question names the objects its answer depends on: the object asked about; for a
"no", the near misses that share the asked shape or colour; for a count, every object.

Splits are disjoint by construction: a scene belongs to `heldout` when a stable hash of its
layout falls in one bucket of ten, else to `train`; the seed picks which scenes are drawn.
"""

from __future__ import annotations

import dataclasses
import zlib

import numpy as np

from jaxinterp.errors import ArgumentError

SHAPES = ("square", "circle", "triangle")
COLOURS = {"red": (220, 40, 40), "green": (40, 190, 60), "blue": (50, 90, 235), "yellow": (235, 215, 40)}
QUADRANTS = ("top left", "top right", "bottom left", "bottom right")
COUNTS = ("one", "two", "three")
TEMPLATES = {
    "presence": "is there a {colour} {shape} ?",
    "colour": "what colour is the {shape} ?",
    "position": "where is the {shape} ?",
    "count": "how many shapes are there ?",
}
KINDS = tuple(TEMPLATES)
SPLITS = ("train", "heldout")
HELDOUT_BUCKETS = 10  # one layout hash bucket in ten is held out
VERSION = 1  # bump when generation changes, so caches of models trained on the data rebuild

Box = tuple[int, int, int, int]  # (top, left, bottom, right); bottom and right exclusive


def vocabulary() -> list[str]:
    """Every word of every question and answer (for `jaxinterp.data.vocab.word_tokenizer`)."""
    texts = [t.format(colour="", shape="") for t in TEMPLATES.values()]
    texts += [*SHAPES, *COLOURS, *QUADRANTS, *COUNTS, "yes no"]
    return sorted({word for text in texts for word in text.split()})


@dataclasses.dataclass(frozen=True)
class SceneObject:
    """One drawn shape.

    Attributes:
      shape, colour, quadrant: names as they appear in questions and answers.
      box: bounding box of the drawn pixels, (top, left, bottom, right), bottom/right exclusive.
      grid_box: the patches that box touches, (row0, col0, row1, col1) in patch units, exclusive.
    """

    shape: str
    colour: str
    quadrant: str
    box: Box
    grid_box: Box


@dataclasses.dataclass(frozen=True)
class Question:
    """A question, its one- or two-word answer, and the indices (into the example's objects)
    of the objects the answer depends on: the ground-truth region for localisation."""

    kind: str
    text: str
    answer: str
    objects: tuple[int, ...]


@dataclasses.dataclass(frozen=True, eq=False)
class Example:
    """An image [H, W, 3] uint8, its objects and one question of each kind (in `KINDS` order)."""

    image: np.ndarray
    objects: tuple[SceneObject, ...]
    questions: tuple[Question, ...]
    patch_size: int

    @property
    def grid(self) -> tuple[int, int]:
        """(rows, columns) of the patch grid."""
        return self.image.shape[0] // self.patch_size, self.image.shape[1] // self.patch_size

    def region(self, question: Question) -> np.ndarray:
        """[rows, cols] bool: the patches of the objects `question` depends on (raster order
        flattens it onto a full-select LLaVA model's image tokens)."""
        mask = np.zeros(self.grid, bool)
        for i in question.objects:
            row0, col0, row1, col1 = self.objects[i].grid_box
            mask[row0:row1, col0:col1] = True
        return mask


def _stencil(shape: str, size: int) -> np.ndarray:
    """[size, size] bool pixels of a shape: a filled square, disc, or upward triangle."""
    y, x = np.mgrid[:size, :size] + 0.5
    if shape == "square":
        return np.ones((size, size), bool)
    if shape == "circle":
        return (x - size / 2) ** 2 + (y - size / 2) ** 2 <= (size / 2) ** 2
    return np.abs(x - size / 2) <= y / 2


def _layout(rng: np.random.Generator, image_size: int) -> tuple[tuple[str, str, int, int, int, int], ...]:
    """A random scene: (shape, colour, quadrant index, size, top, left) per object."""
    half = image_size // 2
    count = rng.integers(1, 4)
    shapes = rng.permutation(len(SHAPES))[:count]
    colours = rng.permutation(len(COLOURS))[:count]
    quadrants = rng.permutation(len(QUADRANTS))[:count]
    layout = []
    for shape, colour, quadrant in zip(shapes, colours, quadrants):
        size = int(rng.integers(half // 2, 3 * half // 4 + 1))
        top, left = rng.integers(1, half - size, size=2)  # a one-pixel margin inside the quadrant
        layout.append((SHAPES[shape], list(COLOURS)[colour], int(quadrant), size,
                       int(top + half * (quadrant // 2)), int(left + half * (quadrant % 2))))
    return tuple(sorted(layout))


def split_of(layout: tuple) -> str:
    """The split a scene layout belongs to (a stable hash, independent of seeds)."""
    return SPLITS[zlib.crc32(repr(layout).encode()) % HELDOUT_BUCKETS == 0]


def _render(layout: tuple, image_size: int, patch_size: int) -> tuple[np.ndarray, tuple[SceneObject, ...]]:
    image = np.zeros((image_size, image_size, 3), np.uint8)
    objects = []
    for shape, colour, quadrant, size, top, left in layout:
        stencil = _stencil(shape, size)
        image[top:top + size, left:left + size][stencil] = COLOURS[colour]
        rows, cols = np.nonzero(stencil)
        box = (top + rows.min(), left + cols.min(), top + rows.max() + 1, left + cols.max() + 1)
        grid_box = (box[0] // patch_size, box[1] // patch_size, -(-box[2] // patch_size), -(-box[3] // patch_size))
        objects.append(SceneObject(shape, colour, QUADRANTS[quadrant], tuple(map(int, box)), tuple(map(int, grid_box))))
    return image, tuple(objects)


def _questions(rng: np.random.Generator, objects: tuple[SceneObject, ...]) -> tuple[Question, ...]:
    """One question of each kind about the scene."""
    everyone = tuple(range(len(objects)))
    asked = int(rng.integers(len(objects)))
    target = objects[asked]
    if rng.random() < 0.5:
        presence = Question("presence", TEMPLATES["presence"].format(colour=target.colour, shape=target.shape),
                            "yes", (asked,))
    else:
        present = {(o.colour, o.shape) for o in objects}
        misses = [(c, s) for c in COLOURS for s in SHAPES if (c, s) not in present
                  and any(o.colour == c or o.shape == s for o in objects)]
        colour, shape = misses[rng.integers(len(misses))]
        presence = Question("presence", TEMPLATES["presence"].format(colour=colour, shape=shape), "no",
                            tuple(i for i, o in enumerate(objects) if o.colour == colour or o.shape == shape))
    return (
        presence,
        Question("colour", TEMPLATES["colour"].format(shape=target.shape), target.colour, (asked,)),
        Question("position", TEMPLATES["position"].format(shape=target.shape), target.quadrant, (asked,)),
        Question("count", TEMPLATES["count"], COUNTS[len(objects) - 1], everyone),
    )


def examples(split: str, n: int, seed: int = 0, *, image_size: int = 32, patch_size: int = 4) -> list[Example]:
    """`n` examples of `split` (`train` or `heldout`), the same for the same arguments.

    Args:
      split: which side of the layout-hash partition the scenes come from.
      n: number of examples.
      seed: picks the scenes and questions (the split's own stream: seeds never mix splits).
      image_size: side of the square image in pixels (at least 16).
      patch_size: side of a square patch, for the patch-grid boxes (divides `image_size`).
    """
    if split not in SPLITS:
        raise ArgumentError(f"split: expected one of {SPLITS}, found {split!r}")
    if image_size < 16 or image_size % 2:
        raise ArgumentError(f"image_size: expected an even number of pixels >= 16, found {image_size}")
    if patch_size < 1 or image_size % patch_size:
        raise ArgumentError(f"patch_size: expected a divisor of image_size={image_size}, found {patch_size}")
    rng = np.random.default_rng([seed, SPLITS.index(split)])
    out = []
    while len(out) < n:
        layout = _layout(rng, image_size)
        if split_of(layout) != split:
            continue
        image, objects = _render(layout, image_size, patch_size)
        out.append(Example(image, objects, _questions(rng, objects), patch_size))
    return out
