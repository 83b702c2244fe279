"""Every notebook under notebooks/ is executed, in its short setting, so none can go stale.

Each notebook reads ``ZOO_NOTEBOOK_FAST`` in its first code cell and shortens its runs when it is
set; a cell that raises fails the test. The kernel runs in the notebook's folder with the
repository root on ``PYTHONPATH`` (so ``import zoo`` works without ``pip install -e .``) and with
matplotlib's non-interactive Agg backend.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
TIMEOUT_S = 120  # per cell


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_executes(path: Path, monkeypatch):
    monkeypatch.setenv("ZOO_NOTEBOOK_FAST", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=TIMEOUT_S, kernel_name="python3",
                                     resources={"metadata": {"path": str(path.parent)}})
    client.execute()  # raises CellExecutionError, naming the cell, on any error


def test_notebooks_are_stored_without_outputs():
    """Outputs are produced by running, never committed: the repository stays small and diffable."""
    assert NOTEBOOKS, "no notebooks found under notebooks/"
    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        for i, cell in enumerate(nb.cells):
            if cell.cell_type == "code":
                assert not cell.outputs and cell.execution_count is None, f"{path.name}: cell {i} has outputs"


def test_notebooks_read_the_fast_setting():
    """The short setting the suite relies on is read in each notebook's first code cell."""
    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        first = next(cell for cell in nb.cells if cell.cell_type == "code")
        assert "ZOO_NOTEBOOK_FAST" in first.source, f"{path.name}: first code cell must read ZOO_NOTEBOOK_FAST"
