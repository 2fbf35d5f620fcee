"""CulturalFrames evaluation harness: how well do T2I metrics agree with human cultural ratings?

Nayak et al., "CulturalFrames: Assessing Cultural Expectation Alignment in Text-to-Image
Models and Evaluation Metrics" (arXiv 2506.08835, 2025). The benchmark rates images from four
T2I models on prompts about 10 countries; the paper correlates automatic metrics (CLIPScore,
VQAScore, VIEScore, ...) with the human scores using Spearman's rho over images, per
criterion. This module loads the annotations, aggregates raters, and computes those
correlations, the inter-rater reference, per-model / per-country means and error types.

Data (cannot be fetched here): the annotations are `culturalframes_human_annotations.json`
in the Hugging Face dataset `mair-lab/CulturalFrames` (images: its `data/train-*` parquet
shards, ~6 GB). Download it yourself, e.g.
  huggingface-cli download mair-lab/CulturalFrames culturalframes_human_annotations.json \
      --repo-type dataset --local-dir DIR
and pass the local path. Metric scores are yours to compute: a JSON object
{metric name: {image id: score}}.

Annotation schema (the project site's sample records; the released file's exact layout was
not available offline): a JSON list of objects
  {"id", "prompt", "country", "model", "annotations": A}
where A is one rating object, or a list with one per rater, of the form
  {"image_prompt_alignment": {"score": 0-1, "missing_elements": {"explicit": bool, "implicit": bool},
                              "incorrect_words": [...], "feedback": str},
   "image_quality": {"score": 0-1, "issues": {...}},
   "stereotypes": {"present": bool, "comment": str},
   "overall_score": 1-5}
Per image, each criterion is the mean over raters (inferred aggregation).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping, Sequence

import numpy as np

from jaxinterp.errors import ArgumentError, shown
from jaxinterp.methods.transferability import spearman

# criterion -> path of its value inside one rating object
CRITERIA: dict[str, tuple[str, ...]] = {
    "alignment": ("image_prompt_alignment", "score"),
    "quality": ("image_quality", "score"),
    "stereotype": ("stereotypes", "present"),
    "overall": ("overall_score",),
}
MISSING = {"explicit": ("image_prompt_alignment", "missing_elements", "explicit"),
           "implicit": ("image_prompt_alignment", "missing_elements", "implicit")}


@dataclasses.dataclass(frozen=True)
class Rating:
    """One rater's scores for one image (criterion -> value) and missing-element flags."""

    scores: dict[str, float]
    explicit_missing: bool
    implicit_missing: bool


@dataclasses.dataclass(frozen=True)
class Record:
    """One image-prompt instance with its ratings."""

    id: str
    prompt: str
    country: str
    model: str
    ratings: tuple[Rating, ...]

    def score(self, criterion: str) -> float:
        """Mean over raters of one criterion."""
        return float(np.mean([r.scores[criterion] for r in self.ratings]))


def _get(obj: Mapping, path: tuple[str, ...], where: str):
    for key in path:
        if not isinstance(obj, Mapping) or key not in obj:
            raise ArgumentError(f"{where}: expected key {'.'.join(path)}, not found")
        obj = obj[key]
    return obj


def _rating(raw: Mapping, where: str) -> Rating:
    scores = {}
    for criterion, path in CRITERIA.items():
        value = _get(raw, path, where)
        if isinstance(value, str) or not isinstance(value, (int, float, bool)):
            raise ArgumentError(f"{where}: {'.'.join(path)}: expected a number or bool, found {value!r}")
        scores[criterion] = float(value)
    return Rating(scores=scores, explicit_missing=bool(_get(raw, MISSING["explicit"], where)),
                  implicit_missing=bool(_get(raw, MISSING["implicit"], where)))


def _read_json(path: str | os.PathLike, what: str):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError) as error:
        raise ArgumentError(f"{path}: expected a readable JSON file of {what} ({shown(str(error), 300)})") from None


def load_annotations(path: str | os.PathLike) -> list[Record]:
    """Reads the annotation file (schema in the module docstring); errors name record and key."""
    data = _read_json(path, "CulturalFrames annotations")
    if not isinstance(data, list) or not data:
        raise ArgumentError(f"{path}: expected a non-empty JSON list of records, found {type(data).__name__}")
    records, seen = [], set()
    for i, raw in enumerate(data):
        where = f"{path}: record {i}"
        for key in ("id", "prompt", "country", "model", "annotations"):
            _get(raw, (key,), where)
        raters = raw["annotations"] if isinstance(raw["annotations"], list) else [raw["annotations"]]
        if not raters:
            raise ArgumentError(f"{where}: annotations: expected at least one rating, found an empty list")
        record = Record(
            id=str(raw["id"]), prompt=raw["prompt"], country=raw["country"], model=raw["model"],
            ratings=tuple(_rating(r, f"{where} rating {j}") for j, r in enumerate(raters)),
        )
        if record.id in seen:
            raise ArgumentError(f"{where}: id {record.id!r} appears twice; ids must be unique to join metric scores")
        seen.add(record.id)
        records.append(record)
    return records


def load_metric_scores(path: str | os.PathLike) -> dict[str, dict[str, float]]:
    """Reads {metric name: {image id: score}} from JSON."""
    data = _read_json(path, "metric scores")
    if not isinstance(data, dict) or not data or not all(isinstance(v, dict) for v in data.values()):
        raise ArgumentError(f"{path}: expected a JSON object {{metric: {{image id: score}}}}, found {type(data).__name__}")
    return {metric: {str(k): float(v) for k, v in scores.items()} for metric, scores in data.items()}


def _check_criteria(criteria: Sequence[str]) -> None:
    unknown = [c for c in criteria if c not in CRITERIA]
    if unknown or not criteria:
        raise ArgumentError(f"criteria: expected a non-empty subset of {tuple(CRITERIA)}, found {list(criteria)}")


def metric_correlations(
    records: Sequence[Record],
    metric_scores: Mapping[str, Mapping[str, float]],
    criteria: Sequence[str] = ("alignment", "quality", "overall"),
) -> dict[str, dict[str, float]]:
    """Spearman's rho over images between each metric and the mean human score per criterion
    (the paper's metric analysis). Every record needs a score from every metric."""
    _check_criteria(criteria)
    if len(records) < 2:
        raise ArgumentError(f"records: expected at least 2 images to correlate, found {len(records)}")
    result = {}
    for metric, scores in metric_scores.items():
        missing = [r.id for r in records if r.id not in scores]
        if missing:
            raise ArgumentError(f"metric_scores[{metric!r}]: no score for {len(missing)} image(s), e.g. {missing[:3]}")
        values = np.array([scores[r.id] for r in records])
        result[metric] = {c: float(spearman(values, np.array([r.score(c) for r in records]))) for c in criteria}
    return result


def inter_rater_correlation(records: Sequence[Record], criterion: str) -> float:
    """Human reference (inferred definition; the paper's is not known): Spearman's rho between
    each held-out rating and the mean of the other ratings of the same image, pooled over
    every (image, held-out rater) pair of images with at least two raters."""
    _check_criteria([criterion])
    held, rest = [], []
    for record in records:
        values = [r.scores[criterion] for r in record.ratings]
        for j, value in enumerate(values):
            if len(values) > 1:
                held.append(value)
                rest.append(np.mean(values[:j] + values[j + 1:]))
    if len(held) < 2:
        raise ArgumentError("records: the inter-rater reference needs images with at least two ratings")
    return float(spearman(np.array(held), np.array(rest)))


def group_means(records: Sequence[Record], by: str, criteria: Sequence[str] = tuple(CRITERIA)) -> dict[str, dict[str, float]]:
    """Mean human score per criterion for each value of `by` ("model" or "country")."""
    _check_criteria(criteria)
    if by not in ("model", "country"):
        raise ArgumentError(f"by: expected 'model' or 'country', found {by!r}")
    groups = sorted({getattr(r, by) for r in records})
    return {g: {c: float(np.mean([r.score(c) for r in records if getattr(r, by) == g])) for c in criteria} for g in groups}


def error_types(records: Sequence[Record]) -> dict[str, float]:
    """Among ratings with alignment < 1: the share flagging only explicit, only implicit, or
    both kinds of missing elements (and neither)."""
    flagged = [(r.explicit_missing, r.implicit_missing) for rec in records for r in rec.ratings if r.scores["alignment"] < 1]
    if not flagged:
        raise ArgumentError("records: no rating with alignment < 1, so there are no errors to type")
    count = lambda e, i: sum(f == (e, i) for f in flagged) / len(flagged)  # noqa: E731
    return {"explicit_only": count(True, False), "implicit_only": count(False, True), "both": count(True, True),
            "neither": count(False, False), "ratings": len(flagged)}
