"""Every notebook in notebooks/ is built from its jupytext source (notebooks/NN_name.py) and is up to date with it,
runs top to bottom in quick mode (SDKIT_QUICK=1) in a real kernel, and is stored clean (no outputs, no widget state).
New notebooks are picked up automatically."""
import importlib.util
import json
import os
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
SOURCES = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.py"))
BUILD = "python scripts/build_notebooks.py"


def _build_module():
    spec = importlib.util.spec_from_file_location("build_notebooks", ROOT / "scripts" / "build_notebooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_there_are_notebooks():
    assert any(p.name.startswith("00_") for p in NOTEBOOKS), "notebooks/00_setup_and_tour.ipynb is missing"


def test_every_notebook_has_one_source_and_every_source_a_notebook():
    notebooks, sources = {p.stem for p in NOTEBOOKS}, {p.stem for p in SOURCES}
    assert not notebooks - sources, (f"no jupytext source for {sorted(f'{n}.ipynb' for n in notebooks - sources)}: "
                                     "write notebooks/NAME.py (`jupytext --to py:percent --set-formats "
                                     f"ipynb,py:percent notebooks/NAME.ipynb`), then run `{BUILD}`")
    assert not sources - notebooks, (f"{sorted(f'{n}.py' for n in sources - notebooks)} has no .ipynb: run `{BUILD}` "
                                     "and commit the notebook (Colab's badge opens the .ipynb)")
    assert _build_module().sources() == SOURCES


@pytest.mark.parametrize("source", SOURCES, ids=[p.stem for p in SOURCES])
def test_notebook_is_built_from_its_source(source):
    pytest.importorskip("jupytext")
    ipynb = source.with_suffix(".ipynb")
    if not ipynb.is_file():
        pytest.fail(f"notebooks/{ipynb.name} is missing: run `{BUILD}`", pytrace=False)
    built, stored = json.loads(_build_module().build(source)), json.loads(ipynb.read_text(encoding="utf-8"))
    hint = f"notebooks/{ipynb.name} is out of date with its source notebooks/{source.name}: run `{BUILD}`"
    assert stored["metadata"] == built["metadata"], f"{hint} (notebook metadata differs)"
    assert len(stored["cells"]) == len(built["cells"]), (f"{hint} ({len(stored['cells'])} cells stored, "
                                                         f"{len(built['cells'])} in the source)")
    for i, (s, b) in enumerate(zip(stored["cells"], built["cells"])):
        for key in ("cell_type", "source", "metadata", "id"):
            assert s.get(key) == b.get(key), f"{hint} (cell {i}: {key} differs)"
    assert stored == built, f"{hint} (outputs, execution counts or format differ)"


def test_notebook_build_is_stable():
    build = _build_module().build
    for source in SOURCES[:2]:
        text = build(source)
        assert text == build(source), f"building notebooks/{source.name} twice gave different notebooks"
        ids = [c["id"] for c in json.loads(text)["cells"]]
        assert len(set(ids)) == len(ids), f"{source.name}: cell ids repeat"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_is_stored_without_outputs_or_widget_state(path):
    nb = json.loads(path.read_text(encoding="utf-8"))
    assert "widgets" not in nb.get("metadata", {}), f"{path.name}: strip metadata.widgets"
    for i, cell in enumerate(nb["cells"]):
        if cell["cell_type"] == "code":
            assert not cell.get("outputs") and cell.get("execution_count") is None, f"{path.name}: cell {i} has output"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_in_quick_mode(path, monkeypatch):
    monkeypatch.setenv("SDKIT_QUICK", "1")
    monkeypatch.setenv("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", "1"))
    monkeypatch.setenv("PYTHONPATH", str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    nb = nbformat.read(path, as_version=4)
    # cwd = the notebook's folder, as Jupyter and VS Code run it (runs/ there is git-ignored)
    client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": str(path.parent)}})
    client.execute()
    images = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if "image/png" in o.get("data", {})]
    if path.name.startswith("00_"):
        assert len(images) >= 2, "notebook 00 must draw the loss curve and the samples"
