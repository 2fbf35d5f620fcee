"""The docs' measured sections, generated from the results files: `python -m experiments.report`.

A page marks each generated section

    <!-- measured: art_smollm2 -->
    (generated)
    <!-- /measured -->

and the section is `report(results)` of the experiment module `experiments.<name>` applied to
`results/<name>/results.json` (`measured: <name>:<part>` calls `report_<part>(results)`, for an
experiment that several pages quote), so a figure on a page cannot disagree with its results file.
Interpretation stays outside the markers. `--check` writes nothing and exits 1 naming each
stale section (the default test run calls it).
"""

from __future__ import annotations

import argparse
import importlib
import json
import pathlib
import re
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
SECTION = re.compile(r"(?P<open><!-- measured: (?P<name>[A-Za-z0-9_]+)(?::(?P<part>[A-Za-z0-9_]+))? -->\n)"
                     r"(?P<body>.*?)(?P<close><!-- /measured -->)", re.S)


def pages(root: pathlib.Path = ROOT) -> list[pathlib.Path]:
    """Every page that may hold measured sections: the README and the method pages."""
    return [root / "README.md", *sorted((root / "docs").glob("*.md"))]


def render(name: str, part: str | None = None, root: pathlib.Path = ROOT) -> str:
    """The section of experiment `name` (its `report`, or `report_<part>`) from its results file
    (ValueError naming what is missing)."""
    path = root / "results" / name / "results.json"
    if not path.is_file():
        raise ValueError(f"{path}: no results file for the measured section {name!r}; run the experiment first")
    try:
        module = importlib.import_module(f"experiments.{name}")
    except ModuleNotFoundError as error:
        raise ValueError(f"measured section {name!r}: no experiment module experiments.{name}") from error
    function = "report" if part is None else f"report_{part}"
    if not callable(getattr(module, function, None)):
        raise ValueError(f"experiments.{name}: defines no {function}(results) for its measured section")
    body = getattr(module, function)(json.loads(path.read_text())).strip()
    return f"{body}\n\n(Generated from `results/{name}/results.json` by `python -m experiments.report`.)\n"


def refreshed(text: str, root: pathlib.Path = ROOT) -> str:
    """`text` with every measured section regenerated."""
    return SECTION.sub(lambda m: m["open"] + render(m["name"], m["part"], root) + m["close"], text)


def stale(root: pathlib.Path = ROOT) -> list[str]:
    """`page: section` for every measured section that differs from its regeneration."""
    found = []
    for page in pages(root):
        text = page.read_text()
        for match in SECTION.finditer(text):
            if match["body"] != render(match["name"], match["part"], root):
                found.append(f"{page.relative_to(root)}: {match['name']}" + (f":{match['part']}" if match["part"] else ""))
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if a section is stale")
    args = parser.parse_args(argv)
    if args.check:
        found = stale()
        for entry in found:
            print(f"stale: {entry} (run python -m experiments.report)")
        return 1 if found else 0
    for page in pages():
        text = page.read_text()
        new = refreshed(text)
        if new != text:
            page.write_text(new)
            print(f"wrote {page.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
