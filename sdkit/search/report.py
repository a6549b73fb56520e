"""What a search found: SearchResult (summary.json's content), the summary table and the figure.

    result = load_result("runs/search-lr")      # a search folder (or its summary.json)
    print(summary_table(result))                 # one row per trial, the best marked with *
    search_figure(result)                        # objective per trial (best so far), then against each param
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import typing
from pathlib import Path

from ..run import Run

__all__ = ["SearchResult", "load_result", "summary_table", "search_figure", "fmt_value"]


def fmt_value(v):
    """A param value as the tables and logs show it (floats to 3 significant digits)."""
    return f"{v:.3g}" if isinstance(v, float) else str(v)


@dataclasses.dataclass
class SearchResult:
    """What a search found. `trials`: one dict per trial (number, params, value, state, run, best_step, history,
    seconds, error); `best`: the best trial (+ checkpoint path), chosen by `rule`; `baseline`: the base model."""
    path: Path
    spec: dict
    objective: str
    direction: str
    trials: list
    best: typing.Optional[dict]
    rule: str
    baseline: typing.Optional[dict] = None
    interrupted: bool = False

    @property
    def best_run(self):
        """The best trial's run directory as a Run (load_pipeline(checkpoint) gives its weights)."""
        return Run(self.path / self.best["run"]) if self.best else None

    def table(self) -> str:
        return summary_table(self)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["path"] = str(self.path)
        return d

    def __repr__(self):
        best = f"trial {self.best['number']} {self.objective}={self.best['value']:.5f}" if self.best else "none"
        return f"SearchResult({str(self.path)!r}, trials={len(self.trials)}, best={best})"


def load_result(path) -> SearchResult:
    """A SearchResult read back from a search folder (or its summary.json)."""
    path = Path(path)
    file = path / "summary.json" if path.is_dir() else path
    if not file.is_file():
        raise FileNotFoundError(f"{file}: no search summary there. Fix: pass a search folder (runs/search-NAME).")
    d = json.loads(file.read_text(encoding="utf-8"))
    d["path"] = Path(d["path"])
    return SearchResult(**d)


def summary_table(result, markdown: bool = False) -> str:
    """One row per trial (state, params, objective, best step, run), the best marked with *, then its rule.
    `result`: a SearchResult, its dict, or a search folder."""
    if isinstance(result, (str, os.PathLike)):
        result = load_result(result)
    if isinstance(result, dict):
        result = SearchResult(**{**result, "path": Path(result["path"])})
    names = list(result.spec["space"])
    obj = result.objective
    head = ["trial", "state", *names, obj, "best step", "seconds", "run"]
    best = result.best["number"] if result.best else None
    lines = []
    for r in result.trials:
        value = "" if r["value"] is None else f"{r['value']:.5f}"
        cells = [f"{r['number']}{' *' if r['number'] == best else ''}", r["state"],
                 *[fmt_value(r["params"].get(n, "")) for n in names], value, "" if not value else str(r["best_step"]),
                 "" if r["seconds"] is None else f"{r['seconds']:.0f}", r["run"]]
        lines.append(cells)
    if markdown:
        text = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        text += ["| " + " | ".join(c) + " |" for c in lines]
    else:
        widths = [max(len(h), *(len(c[i]) for c in lines)) if lines else len(h) for i, h in enumerate(head)]
        text = ["  ".join(h.ljust(w) for h, w in zip(head, widths))]
        text += ["  ".join(c.ljust(w) for c, w in zip(cells, widths)) for cells in lines]
    text.append("")
    if result.baseline and obj in result.baseline:
        text.append(f"base model (step 0, before training): {obj} {result.baseline[obj]:.5f}")
    if result.best:
        b = result.best
        text.append(f"* best: trial {b['number']} ({', '.join(f'{k}={fmt_value(v)}' for k, v in b['params'].items())}), "
                    f"{obj} {b['value']:.5f} at step {b['best_step']}; checkpoint {b['checkpoint']}")
        text.append(f"  rule: {result.rule}")
    else:
        text.append(f"no best trial yet ({result.rule})")
    return "\n".join(text)


def search_figure(result, fig=None):
    """A Figure: the objective per trial with the best-so-far line, then the objective against each param."""
    from matplotlib.figure import Figure
    names = list(result.spec["space"])
    n = 1 + len(names)
    fig = fig or Figure(figsize=(3.6 * n, 3.2), dpi=100)
    fig.clear()
    obj, minimize = result.objective, result.direction == "minimize"
    scored = [r for r in result.trials if r["value"] is not None and r["state"] in ("complete", "pruned")]
    done = [r for r in scored if r["state"] == "complete"]
    pruned = [r for r in scored if r["state"] == "pruned"]
    # panel 1: objective per trial, best so far
    from matplotlib.ticker import MaxNLocator
    ax = fig.add_subplot(1, n, 1)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.scatter([r["number"] for r in done], [r["value"] for r in done], color="tab:blue", label="complete", zorder=3)
    if pruned:
        ax.scatter([r["number"] for r in pruned], [r["value"] for r in pruned], color="tab:gray", marker="x",
                   label="pruned (value when stopped)", zorder=3)
    best, xs, ys = None, [], []
    for r in sorted(done, key=lambda r: r["number"]):
        if best is None or (r["value"] < best if minimize else r["value"] > best):
            best = r["value"]
        xs.append(r["number"]), ys.append(best)
    if xs:
        last = max(r["number"] for r in result.trials)
        ax.step(xs + [last], ys + [ys[-1]], where="post", color="tab:orange", lw=2, label="best so far")
    if result.baseline and obj in result.baseline:
        ax.axhline(result.baseline[obj], color="tab:red", ls=":", lw=1, label="base model")
    ax.set_xlabel("trial")
    ax.set_ylabel(obj)
    ax.set_title(f"{obj} per trial")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    # panels 2..: objective against each param (log axis where the param was searched on a log scale)
    for i, name in enumerate(names, start=2):
        ax = fig.add_subplot(1, n, i)
        p = result.spec["space"][name]
        listed = p.get("values", p.get("choices"))
        numeric = listed is None or all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in listed)
        x = (lambda v: v) if numeric else str
        if not numeric:                         # categories in the order written, each on the axis
            ax.scatter([str(v) for v in listed], [math.nan] * len(listed))
        for rows, style in ((done, dict(color="tab:blue")), (pruned, dict(color="tab:gray", marker="x"))):
            pts = [(x(r["params"][name]), r["value"]) for r in rows if name in r["params"]]
            if pts:
                ax.scatter(*zip(*pts), zorder=3, **style)
        spread = listed and numeric and min(listed) > 0 and max(listed) / min(listed) >= 100
        if p.get("log") or spread:              # a log-scale range, or listed values over two decades or more
            ax.set_xscale("log")
        if result.best:
            ax.scatter([x(result.best["params"].get(name))], [result.best["value"]], s=120,
                       facecolors="none", edgecolors="tab:orange", lw=2, zorder=4, label="best")
            ax.legend(fontsize=7)
        ax.set_xlabel(name)
        ax.set_ylabel(obj)
        ax.set_title(f"{obj} vs {name}")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig
