"""The notebooks' setup: every notebook starts with the same short Colab install and one call to
sdkit.ui.setup_notebook(), which gives the same working directory, runs folder and quick-mode switch locally and on
Colab (simulated here: a fake google.colab module, pip and git recorded instead of run)."""
import json
import subprocess
import sys
import types
from pathlib import Path

import pytest

import sdkit.ui
from sdkit.ui import bootstrap

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
# the first code cell of every notebook, up to the call (which takes each notebook's own arguments)
INSTALL = '''import importlib.util, subprocess, sys  # on Colab, first fetch the course and install it (Colab's torch is kept)
if "google.colab" in sys.modules and importlib.util.find_spec("sdkit") is None:
    subprocess.run("test -d /content/sdkit || git clone -q --depth 1 "
                   "${SDKIT_REPO:-https://github.com/sdkit-course/sdkit} /content/sdkit && "
                   f"{sys.executable} -m pip install -q -e /content/sdkit", shell=True, check=True)
    sys.path.insert(0, "/content/sdkit")
import sdkit.ui
'''


def _setup_cell(path):
    cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    return "".join(next(c for c in cells if c["cell_type"] == "code")["source"])


@pytest.fixture
def record_subprocess(monkeypatch):
    calls = []
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: calls.append((a, k)))
    return calls


@pytest.fixture
def colab(monkeypatch):
    """A fake google.colab whose drive.mount is recorded."""
    mounted = []
    drive = types.ModuleType("google.colab.drive")
    drive.mount = mounted.append
    colab = types.ModuleType("google.colab")
    colab.drive = drive
    google = types.ModuleType("google")
    google.colab = colab
    monkeypatch.setitem(sys.modules, "google", google)
    monkeypatch.setitem(sys.modules, "google.colab", colab)
    monkeypatch.setitem(sys.modules, "google.colab.drive", drive)
    return mounted


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_every_notebook_starts_with_the_bootstrap_cell(path):
    cell = _setup_cell(path)
    assert cell.startswith(INSTALL), (f"{path.name}: the first code cell must be the course's bootstrap (the Colab "
                                      f"install, then one sdkit.ui.setup_notebook() call); edit {path.stem}.py")
    rest = [line for line in cell[len(INSTALL):].splitlines() if line.strip() and not line.startswith("#")]
    assert rest[0].startswith("NB = sdkit.ui.setup_notebook("), f"{path.name}: call sdkit.ui.setup_notebook() once"
    assert len(rest) <= 2 and "setup_notebook" not in "".join(rest[1:]), f"{path.name}: keep the setup cell short"


def test_bootstrap_cell_on_colab_clones_and_installs_without_touching_torch(colab, record_subprocess, monkeypatch):
    import importlib.util
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)   # sdkit not installed yet
    monkeypatch.setattr(sys, "path", list(sys.path))
    exec(INSTALL.replace("import sdkit.ui\n", ""), {})
    (args, kwargs), = record_subprocess
    command = args[0]
    assert kwargs == {"shell": True, "check": True}
    assert "git clone -q --depth 1 ${SDKIT_REPO:-https://github.com/sdkit-course/sdkit} /content/sdkit" in command
    assert command.startswith("test -d /content/sdkit || ")   # a rerun after a failed pip does not clone again
    assert command.endswith(f"&& {sys.executable} -m pip install -q -e /content/sdkit")
    assert "torch" not in command and "-U" not in command
    assert sys.path[0] == "/content/sdkit"


def test_bootstrap_cell_does_nothing_where_sdkit_is_installed(colab, record_subprocess, monkeypatch):
    monkeypatch.setattr(sys, "path", list(sys.path))
    exec(INSTALL.replace("import sdkit.ui\n", ""), {})
    assert record_subprocess == [] and "/content/sdkit" not in sys.path


def test_setup_notebook_locally_from_the_notebooks_folder(tmp_path, monkeypatch, record_subprocess, capsys):
    (tmp_path / "notebooks").mkdir()
    monkeypatch.chdir(tmp_path / "notebooks")   # Jupyter and VS Code start the kernel in the notebook's folder
    monkeypatch.setenv("SDKIT_QUICK", "1")
    nb = sdkit.ui.setup_notebook(pip=("a_module_that_is_not_installed",), drive=True)
    assert Path.cwd() == tmp_path and nb.root == tmp_path   # the repository root: data_samples/, runs/
    assert nb.quick and not nb.in_colab and nb.runs == "runs"   # drive is Colab only
    assert nb.device in ("cpu", "cuda")
    assert record_subprocess == []   # extras are installed on Colab only
    out = capsys.readouterr().out
    assert f"sdkit {sdkit.__version__}" in out and "quick mode" in out and f"working directory: {tmp_path}" in out


def test_setup_notebook_locally_elsewhere_keeps_the_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SDKIT_QUICK", raising=False)
    nb = sdkit.ui.setup_notebook(verbose=False)
    assert Path.cwd() == tmp_path and not nb.quick
    (tmp_path / "notebooks").mkdir()
    monkeypatch.chdir(tmp_path / "notebooks")
    assert sdkit.ui.setup_notebook(chdir=False, verbose=False).root == tmp_path / "notebooks"   # notebook 00


def test_setup_notebook_on_colab(tmp_path, monkeypatch, colab, record_subprocess):
    monkeypatch.chdir(tmp_path)   # Colab starts in /content; the clone is the checkout sdkit was imported from
    monkeypatch.setattr(bootstrap, "checkout_root", lambda: tmp_path / "sdkit")
    (tmp_path / "sdkit").mkdir()
    nb = sdkit.ui.setup_notebook(pip=("json", "a_module_that_is_not_installed"), drive=True, verbose=False)
    assert nb.in_colab and Path.cwd() == tmp_path / "sdkit" == nb.root
    assert colab == ["/content/drive"] and nb.runs == bootstrap.DRIVE_RUNS == "/content/drive/MyDrive/sdkit-runs"
    (args, kwargs), = record_subprocess   # only the missing extra, never an upgrade
    assert args[0] == [sys.executable, "-m", "pip", "install", "-q", "a_module_that_is_not_installed"]
    assert kwargs == {"check": True}


def test_setup_notebook_on_colab_without_drive_keeps_runs_local(tmp_path, monkeypatch, colab, record_subprocess):
    monkeypatch.chdir(tmp_path)
    nb = sdkit.ui.setup_notebook(chdir=False, verbose=False)
    assert nb.in_colab and nb.runs == "runs" and colab == [] and record_subprocess == [] and nb.root == tmp_path


def test_checkout_root_is_this_repository():
    assert bootstrap.checkout_root() == ROOT
