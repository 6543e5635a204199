"""The notebooks run top to bottom on the built-in data, and are stored without outputs."""

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from conftest import ROOT, THREADS

NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs(path: Path, monkeypatch: pytest.MonkeyPatch):
    # The kernel is a process of its own: torch there starts at THREADS as the suite's processes do, and
    # num_threads=auto keeps it there (two threads beside the other pytest-xdist worker would oversubscribe 2 cores).
    monkeypatch.setenv("OMP_NUM_THREADS", str(THREADS))
    notebook = nbformat.read(path, as_version=4)
    assert all(not cell.get("outputs") for cell in notebook.cells if cell.cell_type == "code"), "stored with outputs"
    NotebookClient(
        notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}
    ).execute()
    images = [o for c in notebook.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert len(images) >= 2  # the plots were drawn


def test_there_are_two_notebooks():
    assert [p.name for p in NOTEBOOKS] == ["01_data.ipynb", "02_results.ipynb"]
