"""Every package the library imports is declared in pyproject.toml.

A package that arrives only as another one's dependency (jinja2 came with torch) works on
the test machine and breaks the base install for everyone else. So every import in the
installed packages must name a declared base dependency, or, when it sits inside a
function (imported on demand), a dependency of one of the extras.
"""

from __future__ import annotations

import ast
import importlib.metadata
import pathlib
import re
import sys
import tomllib

ROOT = pathlib.Path(__file__).parents[1]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def _names(requirements: list[str]) -> set[str]:
    return {re.split(r"[<>=!~\[; ]", r, maxsplit=1)[0].lower().replace("_", "-") for r in requirements}


def _imports(path: pathlib.Path) -> list[tuple[str, bool]]:
    """(top-level module, imported at module level) for each absolute import in `path`."""
    tree = ast.parse(path.read_text(), str(path))
    at_top = {id(node) for node in tree.body} | {id(n) for node in tree.body if isinstance(node, ast.If)
                                                 for n in ast.walk(node)}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name.split(".")[0], id(node) in at_top) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.module.split(".")[0], id(node) in at_top))
    return found


def test_every_imported_package_is_declared():
    base = _names(PROJECT["project"]["dependencies"])
    extras = set().union(*(_names(r) for r in PROJECT["project"]["optional-dependencies"].values()))
    distributions = {module: {d.lower().replace("_", "-") for d in names}
                     for module, names in importlib.metadata.packages_distributions().items()}
    folders = PROJECT["tool"]["setuptools"]["package-dir"].values()
    undeclared = []
    for path in sorted(p for folder in set(folders) for p in (ROOT / folder).rglob("*.py")):
        for module, top_level in _imports(path):
            if module in sys.stdlib_module_names or module == "jaxinterp" or module == "__future__":
                continue
            owners = distributions.get(module, {module.replace("_", "-")})
            allowed = base if top_level else base | extras
            if not owners & allowed:
                undeclared.append(f"{path.relative_to(ROOT)}: import {module} ({'/'.join(sorted(owners))}, "
                                  f"{'module level' if top_level else 'inside a function'})")
    assert not undeclared, "imports of undeclared packages:\n" + "\n".join(undeclared)
