"""The docs' measured sections are generated from the results files and are current."""

from __future__ import annotations

import shutil

import pytest

from experiments import markdown, report

SECTION = "<!-- measured: art_smollm2 -->\n{}<!-- /measured -->\n"


def test_every_measured_section_is_current():
    """`python -m experiments.report --check` in the default run: regenerate, compare, name the stale."""
    assert report.stale() == [], "run python -m experiments.report"
    assert report.main(["--check"]) == 0


@pytest.fixture()
def root(tmp_path):
    (tmp_path / "results" / "art_smollm2").mkdir(parents=True)
    shutil.copy(report.ROOT / "results" / "art_smollm2" / "results.json", tmp_path / "results" / "art_smollm2")
    (tmp_path / "docs").mkdir()
    (tmp_path / "README.md").write_text("# title\n")
    return tmp_path


def test_a_figure_changed_by_hand_is_stale_until_regenerated(root):
    body = report.render("art_smollm2", root=root)
    assert "0.133 [0.075, 0.192]" in body  # the unedited model's generated accuracy, read from the file
    page = root / "docs" / "art.md"
    page.write_text("prose\n" + SECTION.format(body.replace("0.133 [0.075", "0.140 [0.075")) + "more prose 0.9\n")
    assert report.stale(root) == ["docs/art.md: art_smollm2"]
    page.write_text(report.refreshed(page.read_text(), root))
    assert report.stale(root) == [] and page.read_text().endswith("more prose 0.9\n")  # prose outside is kept


def test_a_section_without_results_or_renderer_is_an_error(root):
    (root / "docs" / "x.md").write_text("<!-- measured: moa_lm -->\n<!-- /measured -->\n")
    with pytest.raises(ValueError, match="no results file for the measured section 'moa_lm'"):
        report.stale(root)
    with pytest.raises(ValueError, match="defines no report_nothing"):
        report.render("art_smollm2", "nothing", root)
    (root / "results" / "nowhere").mkdir()
    (root / "results" / "nowhere" / "results.json").write_text("{}")
    with pytest.raises(ValueError, match="no experiment module experiments.nowhere"):
        report.render("nowhere", root=root)


@pytest.mark.parametrize("value, shown", [
    (3, "3"), (1.0, "1.000"), (0.5, "0.500"), (-0.4912, "-0.491"), (2.5, "2.50"), (12.0, "12.0"),
    (123.456, "123"), (99.96, "100"), (1234.5, "1234"), (None, "undefined"), (float("nan"), "undefined")])
def test_a_figure_is_shown_with_its_digits(value, shown):
    """Proportions and their interval bounds keep their decimals (1.000, not 1), larger figures keep
    three significant digits with their trailing zeros; only ints print bare."""
    assert markdown.number(value) == shown
