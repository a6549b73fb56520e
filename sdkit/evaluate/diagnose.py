"""Reading a loss curve: which pattern a run shows, the evidence, and what to change.

The diffusion training loss is very noisy: each step draws new timesteps, and the loss at t=50 is far from the loss
at t=950. So the verdict is based on (1) the training loss SMOOTHED over a window and (2) the deterministic
validation loss of each checkpoint (sdkit.evaluate.metrics.validation_loss: fixed timesteps and noise), never on
single raw points. Patterns (the source texts get the last one wrong: a loss that keeps falling is not by itself
overtraining; overtraining is the training loss falling while held-out numbers get worse):

  still_improving  the validation loss (or smoothed loss) still falls at the end  -> train longer
  converged        flat for the last part of the run                                -> stop; more steps buy little
  down_then_up     the validation loss has its minimum at an inner checkpoint       -> pick that checkpoint
  overtraining     training loss falls while the validation loss rises (widening gap: best seen in the
                   deterministic loss on training vs held-out pictures), or generated pictures come close to
                   copies of training images                                        -> pick earlier, fewer steps
  diverging        the loss blows up (smoothed loss far above its minimum, or NaN)  -> lower the learning rate
"""
from __future__ import annotations

import dataclasses
import json
import math


import numpy as np

from ..run import Run

__all__ = ["Diagnosis", "diagnose", "smooth", "diagnose_series"]


@dataclasses.dataclass
class Diagnosis:
    verdict: str              # still_improving | converged | down_then_up | overtraining | diverging | too_short
    pick: str | None          # the checkpoint to use (step_XXXXXX) when one can be named
    evidence: list            # sentences with the numbers behind the verdict
    advice: str               # what to change

    def __str__(self):
        lines = [f"verdict: {self.verdict}" + (f"  ->  use {self.pick}" if self.pick else "")]
        lines += [f"  - {e}" for e in self.evidence]
        lines.append(f"advice: {self.advice}")
        return "\n".join(lines)

    def _repr_html_(self):
        import html
        items = "".join(f"<li>{html.escape(e)}</li>" for e in self.evidence)
        pick = f" &rarr; use <code>{self.pick}</code>" if self.pick else ""
        return f"<b>verdict: {self.verdict}</b>{pick}<ul>{items}</ul><b>advice:</b> {html.escape(self.advice)}"

    def as_dict(self):
        return dataclasses.asdict(self)


ADVICE = {
    "still_improving": "train longer (resume with --resume latest and more steps); the curve has not flattened.",
    "converged": "more steps will not buy much: keep the last (or best-scoring) checkpoint; to learn more, improve "
                 "the data or raise the LoRA rank rather than the step count.",
    "down_then_up": "use the checkpoint at the minimum; next time train about that many steps, or lower the "
                    "learning rate so the minimum is wider.",
    "overtraining": "use the earlier checkpoint; next time: fewer steps or a lower learning rate, more (and more "
                    "varied) training images, prior preservation / regularisation images, caption dropout.",
    "diverging": "lower the learning rate 3-10x, keep gradient clipping on (max_grad_norm=1), add warm-up steps; "
                 "with fp16 try bf16 or fp32. Restart from the last good checkpoint or from scratch.",
    "too_short": "log more steps (and checkpoints with validation metrics) before reading the curve.",
}


def smooth(values, window: int | None = None) -> np.ndarray:
    """Centered moving median then mean over `window` points (default ~ a tenth of the run, at least 5): robust
    to the single huge losses that high timesteps give."""
    v = np.asarray(values, dtype=float)
    n = len(v)
    if n == 0:
        return v
    w = window or max(5, n // 10)
    w = min(w, n)
    h = w // 2
    med = np.array([np.median(v[max(0, i - h): i + h + 1]) for i in range(n)])
    return np.array([med[max(0, i - h): i + h + 1].mean() for i in range(n)])


def _name(step):
    return f"step_{int(step):06d}"


def _trend(x, y) -> tuple:
    """Least-squares line through raw (x, y): (fractional change over the span, its standard error). The noise of
    single diffusion losses averages out in the fit, so a trend is real when it is several standard errors."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    if len(x) < 3 or np.ptp(x) == 0:
        return 0.0, float("inf")
    A = np.stack([x - x.mean(), np.ones_like(x)], axis=1)
    coef, *_ = np.linalg.lstsq(A, y, rcond=None)
    resid = y - A @ coef
    se = np.sqrt(resid @ resid / max(len(x) - 2, 1) / ((x - x.mean()) ** 2).sum())
    scale = max(abs(y.mean()), 1e-12) / np.ptp(x)
    return float(coef[0] / scale), float(se / scale)


def _val_pick(vs, vl):
    """The trained checkpoint with the lowest validation loss, when it beats the base model."""
    good = [(v, st) for v, st in zip(vl, vs) if st > 0 and np.isfinite(v)]
    if good and len(vl) and min(good)[0] < vl[0]:
        return _name(min(good)[1]), min(good)[0]
    return None, None


def diagnose_series(train_steps, train_loss, val_steps=(), val_loss=(), memorization=None, nn_baseline=None,
                    rel_tol: float = 0.02, train_det=None) -> Diagnosis:
    """The verdict from raw series: training loss per logged step, validation loss per checkpoint (step 0 = base).

    train_det: the same deterministic loss on training pictures at each checkpoint (evaluate_run's train_loss_det),
    a noise-free view of the training loss. rel_tol: a change smaller than this fraction counts as flat."""
    ev = []
    ts, tl = np.asarray(train_steps, float), np.asarray(train_loss, float)
    vs, vl = np.asarray(val_steps, float), np.asarray(val_loss, float)

    # 1. diverging: NaN, or the smoothed loss ends far above its minimum and climbs
    if len(tl) and not np.all(np.isfinite(tl)):
        k = int(np.argmax(~np.isfinite(tl)))
        ev.append(f"the training loss is {tl[k]} at step {int(ts[k])}")
        return Diagnosis("diverging", None, ev, ADVICE["diverging"])
    pick, pick_v = _val_pick(vs, vl)
    blown = None
    start = float(np.median(tl[:max(1, len(tl) // 10)])) if len(tl) else 0.0
    # a blow-up is sustained: single steps at small timesteps can be 10x the typical loss in a healthy run, so
    # look at a 5-point moving median (3 of 5 consecutive logged steps must be that high)
    med5 = np.array([np.median(tl[max(0, i - 2): i + 3]) for i in range(len(tl))]) if len(tl) >= 5 else tl
    if len(tl) >= 2 and med5[1:].max() > 10 * max(start, 1e-12):
        k = 1 + int(np.argmax(med5[1:]))
        blown = (f"the training loss stayed above 10x its start ({start:.4g}) around step {int(ts[k])} (5-step "
                 f"moving median {med5[k]:.4g}); a denoising MSE of healthy weights stays near 1 or below")
    elif len(tl) >= 6:
        s = smooth(tl)
        lo, end, first = float(s.min()), float(s[-1]), float(s[0])
        if end > 1.5 * lo and end > first * 1.2:
            blown = (f"smoothed training loss rose from a minimum of {lo:.4f} (step {int(ts[int(np.argmin(s))])}) "
                     f"to {end:.4f} at step {int(ts[-1])} ({end / lo:.1f}x), above where it started ({first:.4f})")
    if blown is None and len(vl) >= 2 and np.isfinite(vl).all() and vl[-1] > 2.0 * vl.min() and vl[-1] > vl[0] * 1.5:
        blown = f"validation loss {vl[0]:.4f} at step {int(vs[0])} -> {vl[-1]:.4f} at step {int(vs[-1])}"
    if blown is None and len(vl) >= 3 and np.isfinite(vl).all() and vl[1:-1].max() > 1.5 * max(vl[0], vl[-1]):
        k = 1 + int(np.argmax(vl[1:-1]))
        blown = (f"validation loss spiked to {vl[k]:.4f} at step {int(vs[k])} (step {int(vs[0])}: {vl[0]:.4f}, "
                 f"step {int(vs[-1])}: {vl[-1]:.4f}): the weights were thrown off and recovered — unstable training")
    if blown:
        ev.append(blown)
        if pick:
            ev.append(f"lowest validation loss of a trained checkpoint: {pick_v:.4f} at {pick}")
        return Diagnosis("diverging", pick, ev, ADVICE["diverging"])

    # 2. with validation numbers of at least 3 checkpoints: where is the minimum?
    if len(vl) >= 3:
        k = int(np.argmin(vl))
        lo = float(vl[k])
        rise = (vl[-1] - lo) / lo
        ev.append("validation loss per checkpoint: " + ", ".join(f"step {int(s)} {v:.4f}" for s, v in zip(vs, vl)))
        if k < len(vl) - 1 and rise > rel_tol:
            ev.append(f"minimum {lo:.4f} at step {int(vs[k])}; the last checkpoint is {100 * rise:.1f}% higher")
            # the training loss over the same stretch: still falling -> widening gap -> overtraining
            after = ts >= vs[k]
            train_drop = None
            if after.sum() >= 4:
                change, se = _trend(ts[after], tl[after])
                train_drop = -change if -change > 3 * se else 0.0
                ev.append(f"training loss over the same steps (line fit): {100 * change:+.1f}% +/- {100 * se:.1f}%")
            det_drop = None
            if train_det is not None and len(train_det) == len(vl) and np.isfinite(train_det).all():
                td = np.asarray(train_det, float)
                det_drop = (td[k] - td[-1]) / max(td[k], 1e-12)
                ev.append(f"the same deterministic loss on training pictures: {td[k]:.4f} at step {int(vs[k])} -> "
                          f"{td[-1]:.4f} at step {int(vs[-1])} ({-100 * det_drop:+.1f}%)")
                if det_drop > max(rel_tol, 0.05):
                    ev.append("the gap between training and held-out pictures widens: the model fits its training "
                              "pictures better and everything else worse")
            mem = memorization is not None and nn_baseline is not None and memorization > nn_baseline
            if mem:
                ev.append(f"generated pictures are closer to their nearest training image ({memorization:.3f}) than "
                          f"training images are to each other ({nn_baseline:.3f}): copies")
            if (train_drop is not None and train_drop > max(rel_tol, 0.05)) or mem or \
                    (det_drop is not None and det_drop > max(rel_tol, 0.05)):
                return Diagnosis("overtraining", _name(vs[k]), ev, ADVICE["overtraining"])
            return Diagnosis("down_then_up", _name(vs[k]), ev, ADVICE["down_then_up"])
        # minimum at the end (or flat after it): improving or converged? compare the last two checkpoints
        last_drop = (vl[-2] - vl[-1]) / max(abs(vl[-2]), 1e-12)
        total_drop = (vl[0] - vl[-1]) / max(abs(vl[0]), 1e-12)
        if last_drop > rel_tol / 2 and last_drop > 0.1 * total_drop:
            ev.append(f"the last checkpoint lowered it by {100 * last_drop:.1f}% ({100 * total_drop:.1f}% since "
                      f"step {int(vs[0])})")
            return Diagnosis("still_improving", _name(vs[-1]), ev, ADVICE["still_improving"])
        ev.append(f"the last checkpoint changed it by {-100 * last_drop:+.1f}% (total {100 * total_drop:.1f}% lower "
                  f"than step {int(vs[0])})")
        return Diagnosis("converged", _name(vs[int(np.argmin(vl))]), ev, ADVICE["converged"])

    # 3. training loss only: slope of the smoothed curve over the last third, against its noise
    if len(tl) < 10:
        ev.append(f"only {len(tl)} logged steps and {len(vl)} validation points")
        return Diagnosis("too_short", None, ev, ADVICE["too_short"])
    s = smooth(tl)
    half = ts >= ts[len(ts) // 2]
    change, se = _trend(ts[half], tl[half])     # fractional change over the second half, with its standard error
    ev.append(f"smoothed training loss {s[0]:.4f} -> {s[-1]:.4f}; line fit over the second half: "
              f"{100 * change:+.1f}% +/- {100 * se:.1f}%; no validation loss, so this verdict is weak")
    k = int(np.argmin(s))
    third = max(3, len(s) // 3)
    if k < len(s) - third:
        near, last = tl[max(0, k - third // 2): k + third // 2 + 1], tl[-third:]
        rise = (last.mean() - near.mean()) / max(near.mean(), 1e-12)
        err = np.sqrt(near.var() / len(near) + last.var() / len(last)) / max(near.mean(), 1e-12)
        if rise > max(0.1, 3 * err):
            ev.append(f"loss near its smoothed minimum (step {int(ts[k])}) {near.mean():.4f}; over the last third "
                      f"{last.mean():.4f} ({100 * rise:+.0f}% +/- {100 * err:.0f}%)")
            return Diagnosis("down_then_up", None, ev, ADVICE["down_then_up"] + " Compute validation metrics "
                             "(python -m sdkit eval metrics RUN) to name the checkpoint.")
    if -change > max(rel_tol, 2 * se):
        return Diagnosis("still_improving", None, ev, ADVICE["still_improving"])
    return Diagnosis("converged", None, ev, ADVICE["converged"])


def diagnose(run, metrics=None) -> Diagnosis:
    """Diagnose a run from its loss curve (metrics.jsonl) and, when present, its validation metrics
    (`metrics`: the dict of evaluate_run, or RUN/eval/metrics.json when it exists)."""
    run = run if isinstance(run, Run) else Run(run)
    train = run.metrics
    ts = [m["step"] for m in train]
    tl = [m["loss"] if m["loss"] is not None else float("nan") for m in train]
    if metrics is None and (run.path / "eval" / "metrics.json").is_file():
        metrics = json.loads((run.path / "eval" / "metrics.json").read_text())
    vs, vl, mem, nn, td = [], [], None, None, None
    if metrics:
        rows = sorted(metrics["checkpoints"].values(), key=lambda m: m["step"])
        rows = [m for m in rows if m.get("val_loss") is not None and math.isfinite(m["val_loss"])]
        vs, vl = [m["step"] for m in rows], [m["val_loss"] for m in rows]
        if rows and all("train_loss_det" in m for m in rows):
            td = [m["train_loss_det"] for m in rows]
        if rows:
            mem = rows[-1].get("memorization")
            nn = metrics.get("baselines", {}).get("train_nn_baseline")
    # a run stopped by a NaN loss leaves a message event
    for e in run.events:
        if e.get("event") in ("error", "message") and "became nan" in str(e.get("text", "")).lower():
            tl.append(float("nan"))
            ts.append(ts[-1] + 1 if ts else 1)
    return diagnose_series(ts, tl, vs, vl, memorization=mem, nn_baseline=nn, train_det=td)
