"""Overhead of the notebook dashboard: the same short training with and without the Dashboard callback.

    OMP_NUM_THREADS=1 python bench/bench_dashboard.py --steps 150 --repeats 2

Runs in a plain process (the widgets update their state as in a kernel with no frontend attached; the cost of
drawing the loss plot and encoding PNGs is all on this side). Reports wall time of the training loop (from the
first step's end to the last, so model loading and step-0 samples do not count) and the overhead in %.
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import sdkit
from sdkit.models import make_tiny
from sdkit.quickstart import write_shapes_folder
from sdkit.train.callbacks import Callback


class Timer(Callback):
    def on_step_end(self, trainer, logs):
        now = time.perf_counter()
        if trainer.step == 1:
            self.t1 = now
        self.t_last = now

    def seconds(self):
        return self.t_last - self.t1


def timed_dashboard():
    """A Dashboard whose hooks add up the time they take (a direct measure, immune to a noisy neighbor)."""
    from sdkit.ui.dashboard import Dashboard

    class Timed(Dashboard):
        hook_seconds = 0.0

    for name in ("on_step_end", "on_log", "on_sample", "on_checkpoint", "on_message"):
        def wrap(self, *a, _f=getattr(Dashboard, name)):
            t = time.perf_counter()
            _f(self, *a)
            self.hook_seconds += time.perf_counter() - t
        setattr(Timed, name, wrap)
    return Timed()


def one(model, data, steps, out, dashboard):
    timer = Timer()
    dash = timed_dashboard() if dashboard else None
    cfg = sdkit.TrainConfig(model=str(model), data=str(data), steps=steps, resolution=32, out=str(out),
                            sample_steps=2, sample_at_start=False, tensorboard=False, lr=1e-3, batch_size=2)
    sdkit.train(cfg, callbacks=[timer] + ([dash] if dash else []), progress=None)
    shutil.rmtree(out)
    return timer.seconds(), dash


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-dash-"))
    model, data = make_tiny(tmp / "tiny"), write_shapes_folder(tmp / "data", n=16, size=32)
    one(model, data, 5, tmp / "warm", True)  # warm-up: imports, first matplotlib draw
    base, dash = [], []
    for r in range(args.repeats):  # interleaved, so a noisy neighbor hits both alike
        base.append(one(model, data, args.steps, tmp / f"b{r}", False)[0])
        s, d = one(model, data, args.steps, tmp / f"d{r}", True)
        dash.append(s)
        LAST.update(redraws=d.redraws, draw_s=round(d.draw_seconds, 2))
        LAST.setdefault("hook_share", []).append(100 * d.hook_seconds / s)
    b, d = statistics.median(base), statistics.median(dash)
    print(f"steps {args.steps} x {args.repeats} repeats (tiny pipeline, 32 px, batch 2, CPU)")
    print(f"without dashboard: {b:.2f} s  ({[round(x, 2) for x in base]})")
    print(f"with dashboard:    {d:.2f} s  ({[round(x, 2) for x in dash]}); loss redraws in last run: "
          f"{dash_redraws(d)}")
    print(f"overhead (wall-time difference of medians): {100 * (d - b) / b:+.1f} %")
    print(f"overhead (time inside the dashboard's hooks / loop time): "
          f"{', '.join(f'{x:.1f} %' for x in LAST['hook_share'])}")
    shutil.rmtree(tmp)


def dash_redraws(_):
    return f"{LAST.get('redraws', '?')} taking {LAST.get('draw_s', '?')} s"


LAST = {}

if __name__ == "__main__":
    main()
