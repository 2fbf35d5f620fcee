"""Synthetic shapes: deterministic scenes, boxes that match the drawn pixels, answers that
follow from the objects, disjoint splits."""

from __future__ import annotations

import numpy as np
import pytest

from jaxinterp.data import shapes
from jaxinterp.data.vocab import word_tokenizer
from jaxinterp.errors import ArgumentError


@pytest.fixture(scope="module")
def train():
    return shapes.examples("train", 300, seed=0)


def _describe(example: shapes.Example):
    return example.image.tobytes(), example.objects, example.questions


def test_same_arguments_same_examples(train):
    again = shapes.examples("train", 300, seed=0)
    assert [_describe(e) for e in again] == [_describe(e) for e in train]
    other = shapes.examples("train", 300, seed=1)
    assert [_describe(e) for e in other] != [_describe(e) for e in train]


def test_boxes_match_the_pixels_drawn(train):
    for example in train:
        drawn = np.zeros(example.image.shape[:2], bool)
        rows, cols = example.grid
        for obj in example.objects:
            pixels = np.all(example.image == shapes.COLOURS[obj.colour], axis=-1)
            ys, xs = np.nonzero(pixels)
            assert obj.box == (ys.min(), xs.min(), ys.max() + 1, xs.max() + 1)
            patches = pixels.reshape(rows, example.patch_size, cols, example.patch_size).any(axis=(1, 3))
            ys, xs = np.nonzero(patches)
            assert obj.grid_box == (ys.min(), xs.min(), ys.max() + 1, xs.max() + 1)
            half = example.image.shape[0] // 2
            vertical, horizontal = obj.quadrant.split()
            assert (obj.box[0] >= half) == (vertical == "bottom") and (obj.box[2] <= half) == (vertical == "top")
            assert (obj.box[1] >= half) == (horizontal == "right") and (obj.box[3] <= half) == (horizontal == "left")
            assert not (drawn & pixels).any()
            drawn |= pixels
        assert not example.image[~drawn].any(), "only the objects are drawn, on black"
        assert len({o.shape for o in example.objects}) == len({o.colour for o in example.objects}) == len(example.objects)


def test_answers_follow_from_the_objects(train):
    for example in train:
        objects = example.objects
        by_shape = {o.shape: i for i, o in enumerate(objects)}
        presence, colour, position, count = example.questions
        assert [q.kind for q in example.questions] == list(shapes.KINDS)

        asked_colour, asked_shape = presence.text.split()[3:5]
        found = [i for i, o in enumerate(objects) if (o.colour, o.shape) == (asked_colour, asked_shape)]
        assert presence.answer == ("yes" if found else "no")
        near = tuple(i for i, o in enumerate(objects) if o.colour == asked_colour or o.shape == asked_shape)
        assert presence.objects == (tuple(found) if found else near) and presence.objects

        target = by_shape[colour.text.split()[-2]]
        assert (colour.answer, colour.objects) == (objects[target].colour, (target,))
        target = by_shape[position.text.split()[-2]]
        assert (position.answer, position.objects) == (objects[target].quadrant, (target,))
        assert count.answer == shapes.COUNTS[len(objects) - 1] and count.objects == tuple(range(len(objects)))


def test_region_is_the_union_of_the_answer_objects_patches(train):
    example = next(e for e in train if len(e.objects) == 3)
    count = example.questions[3]
    expected = np.zeros(example.grid, bool)
    for obj in example.objects:
        expected[obj.grid_box[0]:obj.grid_box[2], obj.grid_box[1]:obj.grid_box[3]] = True
    np.testing.assert_array_equal(example.region(count), expected)
    colour = example.questions[1]
    assert example.region(colour).sum() < expected.sum()


def test_answers_are_balanced(train):
    for kind, question in zip(shapes.KINDS, zip(*(e.questions for e in train))):
        answers = [q.answer for q in question]
        shares = [answers.count(a) / len(answers) for a in set(answers)]
        assert max(shares) < 1.6 / len(shares), kind


def test_splits_are_disjoint():
    train = {e.image.tobytes() for e in shapes.examples("train", 3000, seed=0)}
    heldout = shapes.examples("heldout", 300, seed=0)
    assert not train & {e.image.tobytes() for e in heldout}


def test_vocabulary_covers_every_question_and_answer(train):
    tokenizer = word_tokenizer(shapes.vocabulary())
    for example in train[:50]:
        for q in example.questions:
            assert tokenizer.unk_token_id not in tokenizer(f"{q.text} {q.answer}")["input_ids"]


@pytest.mark.parametrize("kwargs, argument", [
    ({"split": "test"}, "split"),
    ({"image_size": 12}, "image_size"),
    ({"patch_size": 5}, "patch_size"),
])
def test_bad_arguments_name_themselves(kwargs, argument):
    with pytest.raises(ArgumentError, match=argument):
        shapes.examples(**{"split": "train", "n": 1, **kwargs})


def test_other_sizes():
    example = shapes.examples("heldout", 1, image_size=16, patch_size=2)[0]
    assert example.image.shape == (16, 16, 3) and example.grid == (8, 8)
