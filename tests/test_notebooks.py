"""The example notebooks run top to bottom, and treescope renders a model and its parameter tree.

Each notebook executes in a fresh `python3` Jupyter kernel whose working directory is a temporary
folder, so whatever a notebook writes (the attribution report) lands there. They load the
embedded SmolLM2 and compile its programs: about two minutes for all three on two CPU cores, hence `slow`.
"""

from __future__ import annotations

import pathlib

import pytest

from tests.attribution_tiny import text_lm

NOTEBOOKS = sorted((pathlib.Path(__file__).parents[1] / "examples").glob("*.ipynb"))


def _kernel_installed() -> bool:
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        KernelSpecManager().get_kernel_spec("python3")
    except NoSuchKernel:
        return False
    return True


def test_every_example_is_found_and_stored_without_outputs():
    nbformat = pytest.importorskip("nbformat", reason="notebook tests need the `notebook` extra")
    assert [p.name for p in NOTEBOOKS][:3] == ["01_quick_tour.ipynb", "02_attention_edits.ipynb",
                                               "03_attribution.ipynb"]
    for path in NOTEBOOKS:
        code = [c for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code"]
        assert all(not c.outputs and c.execution_count is None for c in code), f"{path.name} is stored with outputs"


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_executes(path, tmp_path):
    nbformat = pytest.importorskip("nbformat", reason="notebook tests need the `notebook` extra")
    nbclient = pytest.importorskip("nbclient", reason="notebook tests need the `notebook` extra")
    pytest.importorskip("jupyter_client", reason="notebook tests need the `notebook` extra")
    if not _kernel_installed():
        pytest.skip("no `python3` Jupyter kernel is installed (pip install ipykernel, or install jaxinterp[notebook])")
    notebook = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()  # raises CellExecutionError, with the cell and its traceback, when a cell fails
    code = [c for c in notebook.cells if c.cell_type == "code"]
    assert all(c.execution_count is not None for c in code)
    if path.name == "03_attribution.ipynb":
        report = tmp_path / "attribution_report.html"
        assert report.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")


def test_treescope_renders_a_model_and_its_params():
    treescope = pytest.importorskip("treescope", reason="treescope rendering needs the `notebook` extra")
    model = text_lm()
    text = treescope.render_to_text(model)
    assert text.startswith("Model(") and "config=LlamaConfig(vocab_size=64" in text
    assert "'blocks_1'" in text and "tokenizer=None" in text
    params = treescope.render_to_text(model.params)
    assert "'k_proj': {'kernel': <jax.Array float32(32, 2, 8)" in params  # GQA: [hidden, kv_heads, head_dim]
    html = treescope.render_to_html(model, compressed=False)  # uncompressed, so the labels are searchable
    assert "LlamaConfig" in html and "k_proj" in html
