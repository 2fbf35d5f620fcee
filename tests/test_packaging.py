"""Packaging: every package directory is listed in pyproject.toml, so the wheel ships it."""

from __future__ import annotations

import pathlib
import tomllib

ROOT = pathlib.Path(__file__).parents[1]


def test_every_package_is_listed():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    mapping = config["package-dir"]
    found = set()
    for name, folder in mapping.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            relative = init.parent.relative_to(ROOT / folder)
            found.add(".".join([name, *relative.parts]))
    assert found == listed


def test_wheel_installs_and_imports_in_a_fresh_venv(tmp_path):
    """Build the wheel, install it (without dependencies) into a new venv that borrows this
    environment's dependencies, and import every package from the installed copy."""
    import subprocess
    import sys
    import sysconfig

    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "-q", "-w", str(wheels)],
                   check=True, capture_output=True, text=True, timeout=600)
    wheel = next(wheels.glob("jaxinterp-*.whl"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    python = venv / "bin" / "python"
    site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    (pathlib.Path(site) / "borrowed_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([python, "-m", "pip", "install", "--no-deps", "-q", str(wheel)], check=True, timeout=300)
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    script = (
        "import importlib, jaxinterp; "
        f"[importlib.import_module(p) for p in {config['packages']!r}]; "
        "import os; assert os.path.exists(os.path.join(os.path.dirname(jaxinterp.__file__), 'py.typed')); "
        "print(jaxinterp.__file__, jaxinterp.__version__)"
    )
    out = subprocess.run([python, "-c", script], check=True, capture_output=True, text=True, cwd=tmp_path).stdout
    assert out.startswith(site) and "0.1.0" in out
    help_text = subprocess.run([venv / "bin" / "jaxinterp", "--help"], check=True, capture_output=True, text=True).stdout
    assert "generate" in help_text
