"""Run course notebooks top to bottom in full mode (no SDKIT_QUICK), as a learner would, and record what they print.

    python bench/notebook_full.py 01 --json bench/results_notebook_01_full.json
    python bench/notebook_full.py 04 05 --threads 2

For each notebook: wall time, the machine, and every code cell's printed text (stream output), so the numbers a
notebook's prose refers to can be read back and copied into docs/TEACHING.md with their date. The executed notebook
is written beside the JSON (`*.executed.ipynb`, git-ignored); notebooks/ keeps its outputs-free copies.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_notebook(number: str, threads: int | None = None, timeout: int = 3600) -> dict:
    import nbclient
    import nbformat

    matches = sorted((ROOT / "notebooks").glob(f"{number}_*.ipynb"))
    if len(matches) != 1:
        raise SystemExit(f"notebook {number!r}: expected one notebooks/{number}_*.ipynb, found {len(matches)}")
    path = matches[0]
    env_before = dict(os.environ)
    os.environ.pop("SDKIT_QUICK", None)
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["PYTHONPATH"] = str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")
    if threads:
        os.environ["OMP_NUM_THREADS"] = str(threads)
    try:
        nb = nbformat.read(path, as_version=4)
        client = nbclient.NotebookClient(nb, timeout=timeout, kernel_name="python3",
                                         resources={"metadata": {"path": str(path.parent)}})
        t0 = time.time()
        client.execute()
        seconds = time.time() - t0
    finally:
        os.environ.clear()
        os.environ.update(env_before)
    printed = []
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        text = "".join(o.get("text", "") for o in cell.get("outputs", []) if o.get("output_type") == "stream")
        if text.strip():
            printed.append({"cell": i, "text": text})
    return {"notebook": path.name, "mode": "full", "seconds": round(seconds, 1), "minutes": round(seconds / 60, 1),
            "threads": threads or os.cpu_count(), "cpu_count": os.cpu_count(), "machine": platform.platform(),
            "python": sys.version.split()[0], "date": time.strftime("%Y-%m-%d"), "printed": printed,
            "executed": nb}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("numbers", nargs="+", help="notebook numbers, e.g. 01 04")
    ap.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS for the kernel (default: all cores)")
    ap.add_argument("--json", help="write the results here (one notebook) or a folder (several)")
    args = ap.parse_args(argv)
    for number in args.numbers:
        result = run_notebook(number, args.threads)
        executed = result.pop("executed")
        print(f"{result['notebook']}: {result['minutes']} min in full mode")
        for p in result["printed"]:
            print(f"--- cell {p['cell']}\n{p['text'].rstrip()}")
        if args.json:
            out = Path(args.json)
            if len(args.numbers) > 1:
                out = out / f"results_notebook_{number}_full.json"
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(result, indent=1) + "\n")
            import nbformat
            nbformat.write(executed, str(out.with_suffix(".executed.ipynb")))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
