"""Helpers for the browser tests: a JupyterLab server on a free localhost port, and Debian's chromium via Playwright.

Never downloads a browser: Playwright drives /usr/bin/chromium (scripts/install_browser.sh installs it).
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = os.environ.get("SDKIT_CHROMIUM", shutil.which("chromium") or "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def jupyterlab(root_dir: Path, log_path: Path, extra_args=(), timeout=90):
    """Start `jupyter lab` (no token, app exposed as window.jupyterapp) in `root_dir`; yield its base URL."""
    port = free_port()
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1",
               PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               JUPYTER_CONFIG_DIR=str(root_dir / ".jupyter-config"),   # no user settings leak in
               JUPYTER_RUNTIME_DIR=str(root_dir / ".jupyter-runtime"))
    env.pop("SDKIT_UI", None)
    cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", f"--port={port}", "--ip=127.0.0.1",
           f"--ServerApp.root_dir={root_dir}", "--IdentityProvider.token=", "--ServerApp.password=",
           "--ServerApp.disable_check_xsrf=True", "--LabApp.expose_app_in_browser=True",
           "--ServerApp.port_retries=0", "--ServerApp.allow_root=True", "--LabApp.news_url=", "--LabApp.check_for_updates_class="
           "jupyterlab.NeverCheckForUpdate", *extra_args]
    log = open(log_path, "w")
    proc = subprocess.Popen(cmd, cwd=root_dir, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"jupyter lab exited ({proc.returncode}); log:\n{log_path.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{url}/api/status", timeout=2) as r:
                    json.load(r)
                break
            except OSError:
                if time.time() > deadline:
                    raise RuntimeError(f"jupyter lab did not answer in {timeout} s; log:\n"
                                       f"{log_path.read_text()[-3000:]}")
                time.sleep(0.5)
        yield url
    finally:
        # Kernels run in their own process groups: shut them down through the server first, then the server.
        with contextlib.suppress(Exception):
            with urllib.request.urlopen(f"{url}/api/kernels", timeout=5) as r:
                for k in json.load(r):
                    req = urllib.request.Request(f"{url}/api/kernels/{k['id']}", method="DELETE")
                    urllib.request.urlopen(req, timeout=20).close()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)
        log.close()


@contextlib.contextmanager
def browser_page(viewport=(1280, 1600)):
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": viewport[0], "height": viewport[1]})
            page.set_default_timeout(60_000)
            yield page
        finally:
            browser.close()


def write_notebook(path: Path, cells: list):
    import nbformat
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(c) for c in cells]
    nb.metadata = {"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"}}
    nbformat.write(nb, path)


def lab_command(page, command: str, args: dict | None = None):
    """Start a JupyterLab command (not awaited: run-all-cells resolves only when the cells finish)."""
    page.evaluate("([c, a]) => { window.jupyterapp.commands.execute(c, a); return true; }", [command, args or {}])


def kernel_execute(page, code: str, timeout_ms=30_000) -> str:
    """Run `code` in the current notebook's kernel from the page (a real request through the server); return the
    reply's status ('ok' / 'error'), or 'timeout'."""
    return page.evaluate("""async ([code, ms]) => {
        const kernel = window.jupyterapp.shell.currentWidget.sessionContext.session.kernel;
        const future = kernel.requestExecute({code});
        const timeout = new Promise(r => setTimeout(() => r('timeout'), ms));
        const reply = future.done.then(m => m.content.status);
        return await Promise.race([reply, timeout]);
    }""", [code, timeout_ms])


def kernel_status(page) -> str:
    return page.evaluate("window.jupyterapp.shell.currentWidget.sessionContext.session.kernel.status")
