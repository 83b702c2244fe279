"""Every notebook under notebooks/ is executed, in its short setting, so none can go stale; the
committed notebooks are executed at their full setting, from the code they hold, with figures.

Each notebook reads ``ZOO_NOTEBOOK_FAST`` in its first code cell and shortens its runs when it is
set; :func:`analysis.notebooks.execute` runs it (a cell that raises fails the test).
``python -m analysis.notebooks`` re-executes the committed ones.
"""
from __future__ import annotations

import pytest

nbformat = pytest.importorskip("nbformat")
pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

from analysis import notebooks  # noqa: E402

NOTEBOOKS = notebooks.find()
TIMEOUT_S = 120  # per cell
RERUN = "re-execute it with: python -m analysis.notebooks {}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_executes(path):
    nb = notebooks.execute(path, fast=True, timeout=TIMEOUT_S)
    assert nb.metadata["zoo"] == {"setting": "fast", "code_sha256": notebooks.code_digest(nb)}
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert all(cell.execution_count for cell in code)
    assert any("image/png" in out.get("data", {}) for cell in code for out in cell.outputs), "no figure drawn"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_committed_notebook_shows_its_full_run(path):
    """Executed at the full setting from the code cells it holds now, top to bottom in one kernel,
    without errors, with at least one figure."""
    nb = nbformat.read(path, as_version=4)
    rerun = RERUN.format(path.stem.split("_")[0])
    assert nb.metadata.get("zoo", {}).get("setting") == "full", f"{path.name} is not executed at full setting; {rerun}"
    assert nb.metadata["zoo"]["code_sha256"] == notebooks.code_digest(nb), f"{path.name} changed since run; {rerun}"
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert [cell.execution_count for cell in code] == list(range(1, len(code) + 1)), path.name
    outputs = [out for cell in code for out in cell.outputs]
    assert not [out for out in outputs if out.output_type == "error"], path.name
    assert any("image/png" in out.get("data", {}) for out in outputs), f"{path.name} shows no figure"


def test_notebooks_read_the_fast_setting():
    """The short setting the suite relies on is read in each notebook's first code cell."""
    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        first = next(cell for cell in nb.cells if cell.cell_type == "code")
        assert notebooks.FAST_ENV in first.source, f"{path.name}: first code cell must read {notebooks.FAST_ENV}"


def test_find_selects_by_number_or_name():
    assert notebooks.find(["04"]) == [notebooks.NOTEBOOK_DIR / "04_pretrain_llama.ipynb"]
    assert notebooks.find(["05_pretrain_mae.ipynb", "04_pretrain_llama"]) == [
        notebooks.NOTEBOOK_DIR / "05_pretrain_mae.ipynb", notebooks.NOTEBOOK_DIR / "04_pretrain_llama.ipynb"]
    with pytest.raises(ValueError, match="no notebook '99'; there are 01_zoo_tour"):
        notebooks.find(["99"])
