"""docs/quickstart.ipynb runs top to bottom in a real Jupyter kernel (nbclient), as a user's
notebook would: any cell that raises fails the test."""

from __future__ import annotations

from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).resolve().parent.parent / "docs" / "quickstart.ipynb"


@pytest.mark.slow
def test_quickstart_notebook_runs_in_a_kernel(tmp_path):
    nbformat = pytest.importorskip("nbformat", reason="pip install -e '.[test]' (notebook extra)")
    from nbclient import NotebookClient

    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()  # raises CellExecutionError naming the cell on any error
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    shown = "\n".join(str(o.get("data", {}).get("text/plain", "")) for o in outputs)
    assert "<Run inspect finished exit=0" in shown and "<Run baseline finished exit=0" in shown
    assert "<Run recipe finished exit=0" in shown, shown
    html = "\n".join(str(o.get("data", {}).get("text/html", "")) for o in outputs)
    assert "init.loss" in html and "data:image/png;base64," in html  # verdicts and curves inline
    # the runs are on disk where the kernel worked: a recipe with its two stages
    recipes = [p.parent for p in tmp_path.glob("outputs/*/*/recipe.csv")]
    assert len(recipes) == 1 and (recipes[0] / "2-overfit" / "summary.json").is_file()
