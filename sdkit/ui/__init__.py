"""Notebook UI: a form generated from the config, a live dashboard (a Callback), and a text fallback.

    panel = sdkit.ui.train_panel(sdkit.TrainConfig(model="mini", data="data_samples/glyph", steps=300))
    run = panel.run()        # or press Train; stop with ■ (everywhere) or Stop (JupyterLab >= 4.4.4)
    sdkit.show(run)

Where ipywidgets or a kernel is missing (scripts, papermill/nbconvert with SDKIT_UI=text) the same calls print
progress lines and save PNGs instead. See docs/UI.md for what works in which frontend.
"""
from __future__ import annotations

import os

from .bootstrap import NotebookSetup, setup_notebook
from .env import environment, environment_report
from .text import TextPanel

try:  # the widgets need ipywidgets (in requirements.txt); without it the text panel still works
    from .dashboard import Dashboard, TrainPanel
    from .form import ConfigForm
except ImportError as e:  # pragma: no cover - a bare install without ipywidgets
    WIDGETS_IMPORT_ERROR = e
else:
    WIDGETS_IMPORT_ERROR = None

__all__ = ["train_panel", "ConfigForm", "Dashboard", "TrainPanel", "TextPanel", "environment_report", "environment",
           "widgets_available", "setup_notebook", "NotebookSetup"]


def widgets_available() -> tuple:
    """(True, "") when widgets can be shown here, else (False, why): no ipywidgets, no kernel, or SDKIT_UI=text."""
    if os.environ.get("SDKIT_UI", "").lower() == "text":
        return False, "SDKIT_UI=text"
    try:
        import ipywidgets  # noqa: F401
    except ImportError:
        return False, "ipywidgets is not installed"
    try:
        from IPython import get_ipython
        ip = get_ipython()
    except ImportError:
        return False, "not in IPython"
    if ip is None or getattr(ip, "kernel", None) is None:
        return False, "no Jupyter kernel (a script or a terminal IPython)"
    return True, ""


def train_panel(config=None, ui: str = "auto", display: bool = True):
    """Form + Train/Stop + live dashboard for `config`; a TextPanel where widgets cannot show (ui='text' forces it).

    Train with `panel.run()` in a cell (or the Train button); `panel.config` is the form's TrainConfig.
    """
    ok, why = widgets_available() if ui == "auto" else (ui == "widgets", "ui='text'")
    if not ok:
        return TextPanel(config, reason=why)
    panel = TrainPanel(config)
    if display:
        from IPython.display import display as show
        show(panel.widget)
    return panel
