"""The live dashboard (a Callback: it only observes the loop) and the panel that joins form, Train/Stop and dashboard.

    panel = sdkit.ui.train_panel(config)   # form + Train/Stop + dashboard (text fallback without a frontend)
    run = panel.run()                      # trains in the foreground of this cell, on the kernel's main thread

Why the loop runs on the kernel's main thread, in a cell (docs/UI.md, shared/NOTEBOOK-UI.md): widget updates from
there reach the browser in every frontend, and the notebook's interrupt (■) stops it everywhere. A click on Train is
handled on the main thread in Colab, VS Code and Notebook/JupyterLab without comms over subshells, so the button
trains there (checked in JupyterLab 4.6 + ipykernel 7.4: an idle kernel gets the Train click on the main thread, a busy
one the Stop click on a subshell thread). Where a Train click arrives on another thread the panel does not train there
and asks for `panel.run()`.
Drawing uses matplotlib's object API into PNG bytes shown in an Image widget, redrawn at most a few times a second
and never more than ~3 % of the wall time (the redraw interval grows with the cost of a redraw).
"""
from __future__ import annotations

import html
import io
import os
import sys
import threading
import time

import ipywidgets as W

from ..plot import LossPlot
from ..train.callbacks import Callback
from ..train.loop import train
from .form import ConfigForm

__all__ = ["Dashboard", "TrainPanel", "stop_help"]


def _esc(text) -> str:
    return html.escape(str(text))


def _fmt_time(s: float) -> str:
    if s != s or s == float("inf"):
        return "?"
    s = int(round(s))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


def _png(image, min_width=192) -> bytes:
    """PNG bytes of a PIL image, enlarged with nearest-neighbor so 32-px samples are visible."""
    from PIL import Image
    if image.width < min_width:
        k = -(-min_width // image.width)
        image = image.resize((image.width * k, image.height * k), Image.NEAREST)
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def frontend() -> str:
    """A guess at the frontend: 'colab', 'vscode', 'jupyter' (a kernel: Lab, Notebook, nbclient) or 'none'."""
    if "google.colab" in sys.modules:
        return "colab"
    if any(k in os.environ for k in ("VSCODE_PID", "VSCODE_CWD", "VSCODE_IPC_HOOK_CLI")):
        return "vscode"
    try:
        from IPython import get_ipython
        ip = get_ipython()
    except ImportError:
        return "none"
    return "jupyter" if ip is not None and getattr(ip, "kernel", None) is not None else "none"


def stop_help(clicks_live=None) -> str:
    """Plain words: which way of stopping works in this frontend."""
    import importlib.metadata as md
    try:
        ipk = md.version("ipykernel")
    except md.PackageNotFoundError:
        ipk = "?"
    where = frontend()
    common = ("<b>To stop:</b> press <b>&#9632;</b> (interrupt the kernel) &mdash; works in every frontend: the run "
              "finishes its step, writes a checkpoint and returns (press twice to stop at once). ")
    if clicks_live:
        return common + ("The <b>Stop</b> button works here too: this frontend delivers clicks while the kernel "
                         "trains (comms over subshells).")
    if where in ("colab", "vscode"):
        name = {"colab": "Colab", "vscode": "VS Code"}[where]
        return common + (f"In {name} the <b>Stop</b> button is not heard while a cell runs: press &#9632;.")
    live = ipk[:1].isdigit() and int(ipk.split(".")[0]) >= 7
    return common + ("The <b>Stop</b> button works while training only in JupyterLab &ge; 4.4.4 with ipykernel &ge; 7 "
                     f"(this kernel: ipykernel {_esc(ipk)}{'' if live else ', so press &#9632;'}); "
                     "in VS Code and Colab press &#9632;.")


class Dashboard(Callback):
    """Progress (step, it/s, ETA), live loss plot, step-0 baseline beside the latest samples, checkpoints, log."""

    def __init__(self, min_redraw_s: float = 0.3, max_draw_share: float = 0.03, max_messages: int = 12):
        self.min_redraw_s = min_redraw_s      # at most ~3 redraws a second
        self.max_draw_share = max_draw_share  # and never more than this share of the wall time
        self.max_messages = max_messages
        self.plot = LossPlot()
        self._lock = threading.Lock()
        self.progress = W.IntProgress(value=0, min=0, max=1, description="step",
                                      layout=W.Layout(width="560px"))
        self.status = W.HTML(value="<i>not started</i>")
        self.log_scale = W.Checkbox(value=False, description="log-scale loss", indent=False)
        self.log_scale.observe(lambda _: self.redraw(force=True), names="value")
        self.loss_image = W.Image(value=b"", format="png", layout=W.Layout(width="576px"))
        self.baseline_image = W.Image(value=b"", format="png")
        self.latest_image = W.Image(value=b"", format="png")
        self.baseline_label = W.HTML(value="<b>step 0 (baseline)</b>")
        self.latest_label = W.HTML(value="<b>latest samples</b>")
        self.checkpoints_html = W.HTML(value="<b>checkpoints:</b> none yet")
        self.log_html = W.HTML(value="")
        samples = W.HBox([W.VBox([self.baseline_label, self.baseline_image]),
                          W.VBox([self.latest_label, self.latest_image])])
        for w, name in ((self.progress, "progress"), (self.status, "status"), (self.loss_image, "loss"),
                        (self.baseline_image, "baseline"), (self.latest_image, "latest"),
                        (self.checkpoints_html, "checkpoints"), (self.log_html, "log")):
            w.add_class(f"sdkit-{name}")  # stable hooks for the browser test and for CSS
        self.widget = W.VBox([W.HBox([self.progress]), self.status, self.log_scale, self.loss_image, samples,
                              self.checkpoints_html, self.log_html])
        self.redraws = 0          # how many times the loss image was drawn (tests and the bench read it)
        self.draw_seconds = 0.0   # time spent drawing
        self._reset()

    def _reset(self):
        self.metrics, self.messages, self.checkpoints = [], [], []
        self.total = 1
        self.start_step, self.t0, self.t_first = 0, time.time(), None
        self._last_draw, self._last_status, self._dirty = 0.0, 0.0, False
        self.run_dir = None

    # ---- callback hooks ----
    def on_train_start(self, trainer):
        self._reset()
        self.run_dir = trainer.run_dir
        self.total = trainer.config.steps
        self.start_step = trainer.step
        self.progress.max = max(self.total, 1)
        self.progress.value = trainer.step
        self.progress.bar_style = "info"
        self.status.value = f"starting <code>{_esc(trainer.run_dir)}</code> (model {_esc(trainer.config.model)})"
        self.loss_image.value = b""
        self.baseline_image.value = self.latest_image.value = b""
        self.checkpoints_html.value = "<b>checkpoints:</b> none yet"
        self.log_html.value = ""

    def on_step_end(self, trainer, logs):
        now = time.time()
        if self.t_first is None:
            self.t_first, self.start_step = now, trainer.step - 1  # rate counted from the first step's end
        if now - self._last_status >= 0.2 or trainer.step >= self.total:
            self._last_status = now
            self.progress.value = trainer.step
            self._update_status(trainer.step, now)
        if self._dirty and now - self._last_draw >= self._redraw_interval():
            self.redraw()

    def on_log(self, trainer, logs):
        self.metrics.append(logs)
        self._dirty = True

    def on_sample(self, trainer, step, images, paths):
        grid = trainer.last_grid
        if grid is None:
            return
        png = _png(grid)
        if step == 0 or not self.baseline_image.value:
            self.baseline_image.value = png
            self.baseline_label.value = f"<b>step {step} (baseline)</b>"
        if step != 0:
            self.latest_image.value = png
            self.latest_label.value = f"<b>step {step}</b>"

    def on_checkpoint(self, trainer, step, path):
        self.checkpoints.append((step, path))
        rows = "".join(f"<tr><td>{s}</td><td><code>{_esc(p)}</code></td></tr>" for s, p in self.checkpoints)
        self.checkpoints_html.value = (f"<b>checkpoints ({len(self.checkpoints)}):</b><table>"
                                       f"<tr><th>step</th><th>folder</th></tr>{rows}</table>")

    def on_message(self, trainer, level, text):
        self.log(level, text)

    def on_train_end(self, trainer, run):
        self.progress.value = trainer.step
        self._update_status(trainer.step, time.time(), done=True, stopped=trainer.stopped_early)
        self.progress.bar_style = "warning" if trainer.stopped_early else "success"
        self.redraw(force=True)

    # ---- drawing ----
    def log(self, level, text):
        color = {"warning": "#b36b00", "error": "#c00"}.get(level, "#333")
        self.messages.append(f"<div style='color:{color}'>[{_esc(level)}] {_esc(text)}</div>")
        self.log_html.value = "".join(self.messages[-self.max_messages:])

    def _update_status(self, step, now, done=False, stopped=False):
        rate = (step - self.start_step) / (now - self.t_first) if self.t_first and now > self.t_first else 0.0
        eta = (self.total - step) / rate if rate > 0 else float("nan")
        loss = f" · loss {self.metrics[-1]['loss']:.4f}" if self.metrics else ""
        head = ("stopped at" if stopped else "finished") if done else "step"
        tail = f"{_fmt_time(now - self.t0)} elapsed" if done else f"ETA {_fmt_time(eta)}"
        self.status.value = (f"<b>{head} {step}/{self.total}</b> · {rate:.2f} it/s · {tail}{loss}"
                             f" · <code>{_esc(self.run_dir)}</code>")

    def _redraw_interval(self) -> float:
        avg = self.draw_seconds / self.redraws if self.redraws else 0.0
        return max(self.min_redraw_s, avg / self.max_draw_share)

    def redraw(self, force=False):
        """Draw the loss curve (raw, smoothed, LR on the second axis) into the Image widget, in place."""
        if not self.metrics:
            return
        with self._lock:
            t = time.perf_counter()
            metrics = self.metrics
            if len(metrics) > 2000:  # plot at most ~2000 points; the smoothing still sees every logged step
                k = len(metrics) // 2000 + 1
                metrics = metrics[::k] + ([metrics[-1]] if (len(metrics) - 1) % k else [])
            self.loss_image.value = self.plot.png(metrics, log_scale=self.log_scale.value)
            self.draw_seconds += time.perf_counter() - t
            self.redraws += 1
            self._last_draw, self._dirty = time.time(), False


class TrainPanel:
    """Form + Train/Stop + dashboard. `run()` trains in the foreground of the calling cell."""

    def __init__(self, config=None, dashboard: Dashboard = None):
        self.form = ConfigForm(config)
        self.dashboard = dashboard or Dashboard()
        self.train_button = W.Button(description="Train", button_style="success", icon="play")
        self.stop_button = W.Button(description="Stop", button_style="danger", icon="stop", disabled=True)
        self.train_button.on_click(self._on_train_click)
        self.stop_button.on_click(self._on_stop_click)
        self.stop_help = W.HTML(value=f"<div style='max-width:720px'>{stop_help()}</div>")
        self.notice = W.HTML(value="")
        for w, name in ((self.train_button, "train"), (self.stop_button, "stop"), (self.notice, "notice")):
            w.add_class(f"sdkit-{name}")
        self.stop_event = threading.Event()
        self.running = False
        self.last_run = None
        self.last_error = None
        self.train_click_thread = self.stop_click_thread = None
        self.form.on_change(lambda form: self._sync_buttons())
        self._sync_buttons()
        self.widget = W.VBox([self.form.widget, W.HBox([self.train_button, self.stop_button]), self.notice,
                              self.stop_help, self.dashboard.widget])

    def _ipython_display_(self):
        from IPython.display import display
        display(self.widget)

    @property
    def config(self):
        return self.form.config

    @config.setter
    def config(self, cfg):
        self.form.config = cfg

    def _sync_buttons(self):
        self.train_button.disabled = self.running or not self.form.valid
        self.stop_button.disabled = not self.running

    # ---- running ----
    def run(self, config=None):
        """Train with the form's config (or `config`, which also fills the form) on this thread; return the Run.

        Call it in a cell: it runs in the foreground on the kernel's main thread, where ■ stops it everywhere.
        """
        if threading.current_thread() is not threading.main_thread():
            raise RuntimeError("TrainPanel.run() must run on the kernel's main thread: call panel.run() in a cell.")
        if self.running:
            raise RuntimeError("a run is already in progress in this panel.")
        if config is not None:
            self.form.config = config
        cfg = self.form.config  # raises ConfigError with the field's message when the form is invalid
        self.stop_event = threading.Event()
        self.running, self.last_error = True, None
        self._sync_buttons()
        self.notice.value = ""
        try:
            self.last_run = train(cfg, callbacks=[self.dashboard], stop_event=self.stop_event, progress=None)
            return self.last_run
        except KeyboardInterrupt:
            self.dashboard.log("warning", "interrupted at once (second ■): the last checkpoint is the one listed.")
            raise
        except Exception as e:
            self.last_error = e
            self.dashboard.log("error", f"{type(e).__name__}: {e}")
            self.dashboard.progress.bar_style = "danger"
            raise
        finally:
            self.running = False
            self._sync_buttons()

    def _run_from_click(self):
        try:
            self.run()
        except KeyboardInterrupt:
            pass  # reported in the log
        except Exception:
            pass  # reported in the log (a click has no cell to show a traceback in)

    def _on_train_click(self, _=None):
        self.train_click_thread = threading.current_thread().name  # where this frontend delivers clicks (docs/UI.md)
        if self.running or not self.form.valid:
            return
        if threading.current_thread() is threading.main_thread():
            self._run_from_click()
            return
        # The click arrived on another thread (a subshell): training there could not be stopped with ■ and its
        # widget updates may not render (Colab). Do not train here; ask for the foreground cell.
        self.stop_help.value = f"<div style='max-width:720px'>{stop_help(clicks_live=True)}</div>"
        self.notice.value = ("<b>This frontend handled the click off the kernel's main thread, where training could "
                             "not be stopped with &#9632;. Run <code>run = panel.run()</code> in a cell instead "
                             "(the Stop button will work there).</b>")

    def _on_stop_click(self, _=None):
        self.stop_click_thread = threading.current_thread().name
        self.stop_event.set()
        self.dashboard.log("info", "Stop pressed: finishing this step and writing a checkpoint.")
