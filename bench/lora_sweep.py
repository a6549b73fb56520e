"""Rank x learning-rate sweep of a LoRA on the mini world's sks glyph: fidelity and bleeding per cell.

    OMP_NUM_THREADS=1 python bench/lora_sweep.py --steps 300 --ranks 2 8 32 --lrs 1e-3 5e-3 2e-2
    OMP_NUM_THREADS=1 python bench/lora_sweep.py --quick          # tiny: seconds, code path only

Every run: same seed, data (data_samples/glyph), batch 4, steps, targets; only rank (alpha = rank) and lr change.
Each is measured with sdkit.mini.concept.measure (star detector for fidelity, judge for control prompts).
Writes bench/results/lora_sweep.json and prints a Markdown table (paste into docs/BENCHMARKS.md).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing


def main(argv=None):
    import sdkit
    from sdkit.mini.concept import StarDetector, measure
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="default: mini when data_samples/mini-sd exists, else tiny")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--ranks", type=int, nargs="+", default=[2, 8, 32])
    ap.add_argument("--lrs", type=float, nargs="+", default=[1e-3, 5e-3, 2e-2])
    ap.add_argument("--seeds", type=int, default=4)
    ap.add_argument("--targets", default="to_q,to_k,to_v,to_out.0,ff.net.0.proj,ff.net.2,conv1,conv2",
                    help="lora_targets (default: attention + feed-forward + conv, as notebook 04)")
    ap.add_argument("--quick", action="store_true", help="2 x 2 cells, 20 steps, 2 seeds")
    ap.add_argument("--out", default="bench/results/lora_sweep.json")
    a = ap.parse_args(argv)
    if a.quick:
        a.steps, a.ranks, a.lrs, a.seeds = 20, a.ranks[:2], a.lrs[:2], 2
    model = a.model or ("mini" if Path("data_samples/mini-sd/model_index.json").is_file() else "tiny")
    det = StarDetector.fit()
    seeds = tuple(range(a.seeds))
    base = measure(sdkit.load_pipeline(model), seeds=seeds, detector=det)
    rows = []
    for r in a.ranks:
        for lr in a.lrs:
            t = time.time()
            config = sdkit.TrainConfig(model=model, data="data_samples/glyph", lora_rank=r, lora_alpha=r,
                                       lora_targets=a.targets, lr=lr, steps=a.steps, batch_size=4,
                                       sample_at_start=False, tensorboard=False,
                                       out=f"runs/bench_sweep/r{r}_lr{lr:g}")
            run = sdkit.train(config, progress=None)
            m = measure(run.load_pipeline(), base["images"]["control"], seeds=seeds, detector=det)
            rows.append({"rank": r, "lr": lr, "steps": a.steps, "fidelity": m["fidelity"],
                         "class_star_rate": m["class_star_rate"], "control_acc": m["control_acc"],
                         "control_drift": m["control_drift"], "seconds": round(time.time() - t, 1)})
            print(rows[-1], flush=True)
    report = {"model": model, "base": {k: base[k] for k in ("fidelity", "class_star_rate", "control_acc")},
              "rows": rows}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(report, indent=1))
    print(f"\nmodel {model}, {a.steps} steps, {a.seeds} seeds; base: fidelity {base['fidelity']:.2f}, "
          f"control acc {base['control_acc']:.2f}\n")
    print("| rank | lr | fidelity | 'a glyph' = star | control acc | control drift | s |\n|---|---|---|---|---|---|---|")
    for x in rows:
        print(f"| {x['rank']} | {x['lr']:g} | {x['fidelity']:.2f} | {x['class_star_rate']:.2f} | "
              f"{x['control_acc']:.2f} | {x['control_drift']:.3f} | {x['seconds']} |")


if __name__ == "__main__":
    main()
