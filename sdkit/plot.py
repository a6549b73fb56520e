"""Drawing a run: loss curve (raw + smoothed, learning rate on a second axis) and samples over steps.

Uses matplotlib's object API (Figure + Agg), never pyplot: safe in scripts, threads and live notebook widgets.
"""
from __future__ import annotations

import io
from pathlib import Path

__all__ = ["loss_figure", "save_loss_plot", "figure_png", "show"]


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
    from .run import Run
    run = run if isinstance(run, Run) else Run(run)
    path = Path(path or run.path / "loss.png")
    path.write_bytes(figure_png(loss_figure(run.metrics, title=f"{run.path.name}: training loss")))
    return path


def show(run_or_path, log_scale=False):
    """Display a run in a notebook (loss curve, samples over steps, checkpoints); print paths elsewhere."""
    from .run import Run
    run = run_or_path if isinstance(run_or_path, Run) else Run(run_or_path)
    png = figure_png(loss_figure(run.metrics, log_scale=log_scale, title=f"{run.path.name}: training loss"))
    rows = [(step, run.grid(step)) for step in sorted(run.samples)]
    ckpts = [p.name for p in run.checkpoints]
    try:
        from IPython import get_ipython
        in_notebook = get_ipython() is not None
    except ImportError:
        in_notebook = False
    if in_notebook:
        from IPython.display import HTML, Image, display
        display(Image(data=png))
        for step, grid in rows:
            display(HTML(f"<b>samples at step {step}</b>"))
            display(Image(filename=str(grid)))
        display(HTML("<b>checkpoints:</b> " + (", ".join(ckpts) or "none")))
    else:
        path = save_loss_plot(run)
        print(f"loss plot: {path}")
        for step, grid in rows:
            print(f"samples at step {step}: {grid}")
        print("checkpoints: " + (", ".join(ckpts) or "none"))
    return run
