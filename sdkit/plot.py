"""Drawing a run: loss curve (raw + smoothed, learning rate on a second axis) and samples over steps.

Uses matplotlib's object API (Figure + Agg), never pyplot: safe in scripts, threads and live notebook widgets.
"""
from __future__ import annotations

import io
from pathlib import Path

from .run import Run
from .sample import label_grid

__all__ = ["loss_figure", "save_loss_plot", "figure_png", "LossPlot", "run_figure", "samples_over_steps",
           "checkpoint_rows", "show"]


def _smooth(values, weight=0.9):
    out, s = [], None
    for v in values:
        s = v if s is None else weight * s + (1 - weight) * v
        out.append(s)
    return out


def loss_figure(metrics, log_scale=False, title=None, fig=None):
    """A Figure with the raw and smoothed loss against step and the learning rate on a second axis."""
    from matplotlib.figure import Figure
    fig = fig or Figure(figsize=(6.4, 3.2), dpi=100)
    fig.clear()
    ax = fig.add_subplot(111)
    steps = [m["step"] for m in metrics]
    loss = [m["loss"] for m in metrics]
    if steps:
        ax.plot(steps, loss, color="tab:blue", alpha=0.35, lw=1, label="loss")
        ax.plot(steps, _smooth(loss), color="tab:blue", lw=2, label="smoothed")
        ax2 = ax.twinx()
        ax2.plot(steps, [m.get("lr", 0) for m in metrics], color="tab:orange", lw=1, ls="--", label="lr")
        ax2.set_ylabel("learning rate", color="tab:orange")
        ax2.tick_params(axis="y", labelcolor="tab:orange")
    if log_scale:
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (MSE)")
    ax.set_title(title or "training loss")
    ax.legend(loc="upper right", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def figure_png(fig) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def save_loss_plot(run, path=None) -> Path:
    """Write the run's loss curve to RUN/loss.png (or `path`)."""
    run = run if isinstance(run, Run) else Run(run)
    path = Path(path or run.path / "loss.png")
    path.write_bytes(figure_png(loss_figure(run.metrics, title=f"{run.path.name}: training loss")))
    return path


class LossPlot:
    """A live loss plot that is cheap to redraw: the figure and its lines are made once, each `png()` only moves
    the data and renders (no tight_layout, fast PNG compression). Used by the notebook dashboard."""

    def __init__(self, figsize=(6.4, 3.0), dpi=80):
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        self.fig = Figure(figsize=figsize, dpi=dpi)
        self.canvas = FigureCanvasAgg(self.fig)
        self.ax = self.fig.add_subplot(111)
        self.ax2 = self.ax.twinx()
        self.fig.subplots_adjust(left=0.11, right=0.85, bottom=0.16, top=0.9)
        self.raw, = self.ax.plot([], [], color="tab:blue", alpha=0.35, lw=1)
        self.smooth, = self.ax.plot([], [], color="tab:blue", lw=2)
        self.lr, = self.ax2.plot([], [], color="tab:orange", lw=1, ls="--")
        self.ax.legend([self.raw, self.smooth, self.lr], ["loss", "smoothed", "lr"], loc="upper right", fontsize=8)
        self.ax.set_xlabel("step")
        self.ax.set_ylabel("loss (MSE)")
        self.ax2.set_ylabel("learning rate", color="tab:orange")
        self.ax2.tick_params(axis="y", labelcolor="tab:orange")
        self.ax.grid(alpha=0.3)
        self.ax.set_title("training loss")

    def png(self, metrics, log_scale=False) -> bytes:
        from PIL import Image
        steps = [m["step"] for m in metrics]
        loss = [m["loss"] for m in metrics]
        smooth = [m["loss_smooth"] for m in metrics] if metrics and "loss_smooth" in metrics[0] else _smooth(loss)
        self.raw.set_data(steps, loss)
        self.smooth.set_data(steps, smooth)
        self.lr.set_data(steps, [m.get("lr") or 0.0 for m in metrics])
        self.ax.set_yscale("log" if log_scale and all(v > 0 for v in loss) else "linear")
        for ax in (self.ax, self.ax2):
            ax.relim()
            ax.autoscale_view()
        self.canvas.draw()
        image = Image.frombuffer("RGBA", self.canvas.get_width_height(), self.canvas.buffer_rgba())
        buf = io.BytesIO()
        image.convert("RGB").save(buf, format="PNG", compress_level=1)
        return buf.getvalue()


def run_figure(run, log_scale=False, fig=None):
    """Two panels: training loss (raw + smoothed) and learning rate, against step."""
    from matplotlib.figure import Figure
    metrics = run.metrics
    fig = fig or Figure(figsize=(7.0, 4.6), dpi=100)
    fig.clear()
    ax, ax_lr = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    steps = [m["step"] for m in metrics]
    loss = [m["loss"] for m in metrics]
    if steps:
        ax.plot(steps, loss, color="tab:blue", alpha=0.35, lw=1, label="loss")
        ax.plot(steps, _smooth(loss), color="tab:blue", lw=2, label="smoothed")
        ax_lr.plot(steps, [m.get("lr") or 0.0 for m in metrics], color="tab:orange", lw=1.5)
        ax.legend(loc="upper right", fontsize=8)
    if log_scale and loss and all(v > 0 for v in loss):
        ax.set_yscale("log")
    ax.set_ylabel("loss (MSE)")
    ax.set_title(f"{run.path.name}: training loss")
    ax_lr.set_ylabel("lr")
    ax_lr.set_xlabel("step")
    for a in (ax, ax_lr):
        a.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def samples_over_steps(run, max_rows=8, cell=96):
    """One image: a row per sample step (step 0 first), a column per (prompt, seed); None when there are none.

    With more sample steps than `max_rows`, the first, the last and evenly spaced ones between are shown."""
    from PIL import Image
    samples = run.samples
    steps = [s for s in sorted(samples) if samples[s]]
    if not steps:
        return None
    if len(steps) > max_rows:
        idx = sorted({round(i * (len(steps) - 1) / (max_rows - 1)) for i in range(max_rows)})
        steps = [steps[i] for i in idx]
    cols = max(len(samples[s]) for s in steps)
    names = [p.stem for p in samples[steps[-1]]][:cols]
    images = []
    for s in steps:
        row = [Image.open(p).convert("RGB") for p in samples[s][:cols]]
        row += [Image.new("RGB", row[0].size, (255, 255, 255))] * (cols - len(row))
        images += row
    return label_grid(images, [f"step {s}" for s in steps], names, cell=cell, label_width=70)


def checkpoint_rows(run) -> list:
    """[(step, folder, size in MB)] for the run's complete checkpoints, oldest first."""
    rows = []
    for p in run.checkpoints:
        size = sum(f.stat().st_size for f in p.rglob("*") if f.is_file()) / 2**20
        rows.append((int(p.name[5:]), p, size))
    return rows


def show(run_or_path, log_scale=False):
    """Draw any run directory (a notebook's, the CLI's, one on Drive): loss curve and learning rate, the samples
    over steps, and a checkpoints table. In a notebook as plain images and HTML (no widgets: works in nbconvert
    and after a tab reload); elsewhere it writes RUN/loss.png and RUN/samples_over_steps.png and prints paths."""
    import html
    run = run_or_path if isinstance(run_or_path, Run) else Run(run_or_path)
    fig = run_figure(run, log_scale=log_scale)
    grid = samples_over_steps(run)
    ckpts = checkpoint_rows(run)
    metrics = run.metrics
    summary = (f"{run.path}: {metrics[-1]['step']} steps, last loss {metrics[-1]['loss']:.4f}"
               + (f" (smoothed {metrics[-1]['loss_smooth']:.4f})" if metrics[-1].get("loss_smooth") else "")
               if metrics else f"{run.path}: no logged steps yet")
    try:
        from IPython import get_ipython
        in_notebook = get_ipython() is not None and getattr(get_ipython(), "kernel", None) is not None
    except ImportError:
        in_notebook = False
    if in_notebook:
        from IPython.display import HTML, Image, display
        display(HTML(f"<b>{html.escape(summary)}</b>"))
        display(Image(data=figure_png(fig)))
        if grid is not None:
            buf = io.BytesIO()
            grid.save(buf, format="PNG")
            display(HTML("<b>samples over steps</b> (rows: step; columns: prompt p and seed s)"))
            display(Image(data=buf.getvalue()))
        body = "".join(f"<tr><td>{s}</td><td><code>{html.escape(str(p))}</code></td><td>{mb:.1f} MB</td></tr>"
                       for s, p, mb in ckpts)
        display(HTML("<b>checkpoints</b><table><tr><th>step</th><th>folder</th><th>size</th></tr>"
                     f"{body}</table>" if ckpts else "<b>checkpoints:</b> none"))
    else:
        path = run.path / "loss.png"
        path.write_bytes(figure_png(fig))
        print(summary)
        print(f"loss and learning rate: {path}")
        if grid is not None:
            grid_path = run.path / "samples_over_steps.png"
            grid.save(grid_path)
            print(f"samples over steps:     {grid_path}")
        print("checkpoints:" + ("".join(f"\n  step {s:>7}  {p}  ({mb:.1f} MB)" for s, p, mb in ckpts) or " none"))
    return run
