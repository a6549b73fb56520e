"""Every training method on the mini world's glyph concept: parameters, file size, time, fidelity, bleeding.

    OMP_NUM_THREADS=2 python bench/methods_compare.py --steps 200 --json bench/results_methods_compare.json

Calls sdkit.mini.compare.compare (the same code as notebooks/07_more_methods.ipynb); prints the table that
docs/BENCHMARKS.md records. Times are wall-clock training seconds on this machine (they include the per-run model
load and latent caching)."""
import argparse
import json
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sdkit.mini.compare import compare, recipes, table  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--methods", default=",".join(recipes()))
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--seeds", type=int, default=4)
    ap.add_argument("--sample-steps", type=int, default=20)
    ap.add_argument("--out", default="runs/bench-methods")
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    import torch
    rows = compare(a.methods.split(","), steps=a.steps, out=a.out, seeds=tuple(range(a.seeds)),
                   sample_steps=a.sample_steps)
    print(table(rows))
    if a.json:
        Path(a.json).write_text(json.dumps({
            "command": " ".join(sys.argv), "date": time.strftime("%Y-%m-%d"), "machine": platform.machine(),
            "cpu_threads": torch.get_num_threads(), "torch": torch.__version__, "steps": a.steps,
            "rows": [{k: v for k, v in r.items() if k != "images"} for r in rows]}, indent=1))


if __name__ == "__main__":
    main()
