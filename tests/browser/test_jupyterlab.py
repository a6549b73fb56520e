"""A real browser: JupyterLab on localhost driven by Debian's chromium (Playwright, system browser).

1. Train button: the notebook shows the panel, the test clicks Train; the loss image must change at least twice and a
   sample image appear while the kernel trains; then Stop (where clicks reach the busy kernel — JupyterLab >= 4.4.4
   with ipykernel >= 7) or else the kernel interrupt ends the run; a checkpoint is on disk; the kernel still answers.
2. `run = panel.run()` in a cell, stopped with the notebook's interrupt (■): the same checks.
Screenshots go to the test's tmp folder and to $SDKIT_SCREENSHOTS (default /tmp/sdkit-screenshots).
"""
import os
import shutil
import time
from pathlib import Path

import pytest

from .helpers import CHROMIUM, jupyterlab, browser_page, kernel_execute, lab_command, write_notebook

pytest.importorskip("playwright", reason="pip install playwright (the Python package; no browser download)")
pytest.importorskip("jupyterlab")
if not Path(CHROMIUM).exists():
    pytest.fail(f"{CHROMIUM} not found: run scripts/install_browser.sh", pytrace=False)

SHOTS = Path(os.environ.get("SDKIT_SCREENSHOTS", "/tmp/sdkit-screenshots"))

SETUP = """
import sdkit, sdkit.ui
cfg = sdkit.TrainConfig(model={model!r}, data={data!r}, steps=3000, resolution=32, out={out!r}, sample_steps=2,
                        sample_every=6, tensorboard=False, lr=1e-3, batch_size=2)
panel = sdkit.ui.train_panel(cfg)
"""


def _src(page, cls):
    return page.evaluate(f"(() => {{ const e = document.querySelector('img.{cls}'); "
                         f"return e && e.naturalWidth > 0 ? e.src : null; }})()")


def _watch_live_updates(page, timeout=150):
    """Wait until the loss image has shown 2 new pictures after the first and a sample image is shown."""
    seen, sample = [], None
    deadline = time.time() + timeout
    while time.time() < deadline:
        src = _src(page, "sdkit-loss")
        if src and (not seen or seen[-1] != src):
            seen.append(src)
        sample = sample or _src(page, "sdkit-latest")
        if len(seen) >= 3 and sample:
            return seen, sample
        time.sleep(0.2)
    raise AssertionError(f"live updates missing: {len(seen)} loss pictures, sample shown: {bool(sample)}; "
                         f"status: {page.inner_text('.sdkit-status')!r}")


def _status(page):
    return page.inner_text(".sdkit-status")


def _wait_stopped(page, timeout):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if "stopped at" in _status(page):
            return True
        time.sleep(0.25)
    return False


def _open(page, url, name):
    page.goto(f"{url}/lab/tree/{name}")
    page.wait_for_function("window.jupyterapp && window.jupyterapp.shell.currentWidget && "
                           "window.jupyterapp.shell.currentWidget.sessionContext && "
                           "window.jupyterapp.shell.currentWidget.sessionContext.session && "
                           "window.jupyterapp.shell.currentWidget.sessionContext.session.kernel && "
                           "window.jupyterapp.shell.currentWidget.sessionContext.session.kernel.status === 'idle'",
                           timeout=120_000)


def _shot(page, tmp_path, name):
    path = tmp_path / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    SHOTS.mkdir(parents=True, exist_ok=True)
    shutil.copy(path, SHOTS / path.name)
    return path


def _check_run(out: Path):
    from sdkit.run import Run
    run = Run(out)
    assert run.checkpoints, "no checkpoint written"
    assert run.checkpoints[-1].name == f"step_{run.final_step:06d}", (run.checkpoints, run.final_step)
    assert 0 in run.samples and len(run.samples) >= 2
    return run


def test_train_button_live_dashboard_and_stop(tiny_model, data8, tmp_path):
    out = tmp_path / "run-button"
    write_notebook(tmp_path / "button.ipynb", [SETUP.format(model=str(tiny_model), data=str(data8), out=str(out))])
    with jupyterlab(tmp_path, tmp_path / "lab.log") as url, browser_page() as page:
        _open(page, url, "button.ipynb")
        lab_command(page, "notebook:run-all-cells")
        train = page.locator("button.sdkit-train")
        train.wait_for(state="visible", timeout=120_000)
        page.wait_for_function("!document.querySelector('button.sdkit-train').disabled", timeout=60_000)
        train.click()
        _watch_live_updates(page)
        notice = page.inner_text(".sdkit-notice")
        assert "panel.run()" not in notice, f"the Train button did not train: {notice}"
        _shot(page, tmp_path, "jupyterlab-button-training")
        page.locator("button.sdkit-stop").click()
        stopped_by = "Stop button"
        if not _wait_stopped(page, 30):        # clicks not delivered while the kernel is busy: use ■
            stopped_by = "kernel interrupt"
            lab_command(page, "notebook:interrupt-kernel")
            assert _wait_stopped(page, 60), _status(page)
        _shot(page, tmp_path, "jupyterlab-button-stopped")
        on_main = kernel_execute(page, "assert panel.train_click_thread == 'MainThread'")
        stop_main = kernel_execute(page, "assert panel.stop_click_thread == 'MainThread'")
        print(f"stopped by: {stopped_by}; Train click on main thread: {on_main == 'ok'}; Stop click on main "
              f"thread: {stop_main == 'ok'}; status: {_status(page)}")
        assert kernel_execute(page, "assert not panel.running and panel.last_run.stopped_early") == "ok"
    _check_run(out)


def test_panel_run_cell_stopped_with_kernel_interrupt(tiny_model, data8, tmp_path):
    out = tmp_path / "run-cell"
    write_notebook(tmp_path / "cell.ipynb", [SETUP.format(model=str(tiny_model), data=str(data8), out=str(out)),
                                             "run = panel.run()\nprint('RESULT', run.stopped_early)"])
    with jupyterlab(tmp_path, tmp_path / "lab.log") as url, browser_page() as page:
        _open(page, url, "cell.ipynb")
        lab_command(page, "notebook:run-all-cells")
        _watch_live_updates(page)
        assert page.evaluate("window.jupyterapp.shell.currentWidget.sessionContext.session.kernel.status") == "busy"
        lab_command(page, "notebook:interrupt-kernel")     # the toolbar's ■
        assert _wait_stopped(page, 60), _status(page)
        page.get_by_text("RESULT True").wait_for(timeout=30_000)
        _shot(page, tmp_path, "jupyterlab-cell-interrupted")
        assert kernel_execute(page, "assert run.stopped_early and 6 * 7 == 42") == "ok"
    _check_run(out)
