"""CulturalFrames harness on a small synthetic file in the site's annotation schema."""

from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.stats

from jaxinterp.errors import ArgumentError
from jaxinterp.methods import culturalframes as cf

# (id, model, country, per-rater (alignment, quality, stereotype, overall, explicit, implicit))
IMAGES = [
    ("a", "FLUX.1-dev", "Japan", [(0.0, 0.5, True, 1, True, False), (0.5, 0.5, False, 2, True, True), (0.0, 1.0, False, 2, True, False)]),
    ("b", "FLUX.1-dev", "India", [(0.5, 1.0, False, 3, False, True), (1.0, 1.0, False, 4, False, False), (0.5, 0.5, False, 3, True, True)]),
    ("c", "FLUX.1-dev", "Japan", [(1.0, 1.0, False, 5, False, False), (1.0, 0.5, False, 4, False, False), (0.5, 1.0, False, 4, False, True)]),
    ("d", "Imagen3", "India", [(1.0, 1.0, False, 5, False, False), (1.0, 1.0, False, 5, False, False), (1.0, 0.5, False, 4, False, False)]),
    ("e", "Imagen3", "Japan", [(0.5, 0.0, True, 2, True, False), (0.0, 0.5, True, 1, True, True), (0.5, 0.5, False, 2, False, True)]),
    ("f", "Imagen3", "India", [(1.0, 0.5, False, 4, False, False), (0.5, 1.0, False, 3, True, False), (1.0, 1.0, False, 5, False, False)]),
]


def rating(alignment, quality, stereotype, overall, explicit, implicit):
    return {
        "image_prompt_alignment": {"score": alignment, "missing_elements": {"explicit": explicit, "implicit": implicit},
                                   "incorrect_words": [], "feedback": ""},
        "image_quality": {"score": quality, "issues": {"artifacts": False, "unnatural_impression": False}},
        "stereotypes": {"present": stereotype, "comment": ""},
        "overall_score": overall,
    }


@pytest.fixture
def annotation_file(tmp_path):
    data = [{"id": i, "prompt": f"prompt {i}", "country": c, "model": m, "annotations": [rating(*r) for r in raters]}
            for i, m, c, raters in IMAGES]
    path = tmp_path / "culturalframes_human_annotations.json"
    path.write_text(json.dumps(data))
    return path


def human(criterion_index):
    return np.array([np.mean([r[criterion_index] for r in raters]) for _, _, _, raters in IMAGES], float)


def test_metric_correlations_are_spearman_over_images(annotation_file, tmp_path):
    records = cf.load_annotations(annotation_file)
    alignment = human(0)
    noisy = np.array([0.2, 0.4, 0.4, 0.9, 0.1, 0.3])
    scores = tmp_path / "scores.json"
    scores.write_text(json.dumps({
        "perfect": dict(zip("abcdef", alignment.tolist())),
        "reversed": dict(zip("abcdef", (-alignment).tolist())),
        "noisy": dict(zip("abcdef", noisy.tolist())),
    }))
    result = cf.metric_correlations(records, cf.load_metric_scores(scores), criteria=("alignment", "overall"))
    assert result["perfect"]["alignment"] == pytest.approx(1.0)
    assert result["reversed"]["alignment"] == pytest.approx(-1.0)
    assert result["noisy"]["alignment"] == pytest.approx(scipy.stats.spearmanr(noisy, alignment).statistic, abs=1e-6)
    assert result["noisy"]["overall"] == pytest.approx(scipy.stats.spearmanr(noisy, human(3)).statistic, abs=1e-6)


def test_inter_rater_reference_pools_held_out_raters(annotation_file):
    records = cf.load_annotations(annotation_file)
    held, rest = [], []
    for _, _, _, raters in IMAGES:
        values = [r[1] for r in raters]
        for j in range(3):
            held.append(values[j])
            rest.append(np.mean(values[:j] + values[j + 1:]))
    expected = scipy.stats.spearmanr(held, rest).statistic
    assert cf.inter_rater_correlation(records, "quality") == pytest.approx(expected, abs=1e-6)


def test_group_means_and_error_types(annotation_file):
    records = cf.load_annotations(annotation_file)
    by_model = cf.group_means(records, "model", ("alignment", "stereotype"))
    assert by_model["Imagen3"]["alignment"] == pytest.approx(np.mean(human(0)[3:]))
    assert by_model["FLUX.1-dev"]["stereotype"] == pytest.approx(1 / 9)
    # ratings with alignment < 1, counted by hand: 10; explicit only 4 (a, a, e, f), implicit only 3 (b, c, e),
    # both 3 (a, b, e), neither 0
    types = cf.error_types(records)
    assert types["ratings"] == 10
    assert (types["explicit_only"], types["implicit_only"], types["both"], types["neither"]) == pytest.approx(
        (0.4, 0.3, 0.3, 0.0))


def test_aggregated_records_load_as_one_rating(tmp_path):
    path = tmp_path / "site_sample.json"
    path.write_text(json.dumps([{"id": 1, "prompt": "p", "country": "Iran", "model": "Flux.1-Dev",
                                 "annotations": rating(0.17, 0.67, False, 2.3, True, False)}]))
    (record,) = cf.load_annotations(path)
    assert record.id == "1" and record.score("alignment") == pytest.approx(0.17) and record.score("overall") == 2.3


def test_bad_inputs_are_named(annotation_file, tmp_path):
    records = cf.load_annotations(annotation_file)
    broken = json.loads(annotation_file.read_text())
    del broken[2]["annotations"][1]["image_quality"]["score"]
    path = tmp_path / "broken.json"
    path.write_text(json.dumps(broken))
    with pytest.raises(ArgumentError, match=r"record 2 rating 1: expected key image_quality.score"):
        cf.load_annotations(path)
    path.write_text(json.dumps([broken[0], broken[0]]))
    with pytest.raises(ArgumentError, match="appears twice"):
        cf.load_annotations(path)
    with pytest.raises(ArgumentError, match="no score for 1 image"):
        cf.metric_correlations(records, {"clip": {i: 0.5 for i in "abcde"}})
    with pytest.raises(ArgumentError, match="criteria"):
        cf.metric_correlations(records, {}, criteria=("beauty",))
    with pytest.raises(ArgumentError, match="readable JSON"):
        cf.load_annotations(tmp_path / "absent.json")
