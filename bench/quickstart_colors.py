"""Does the quickstart keep color control? (issue 17's measurement, before any fix.)

Judged by the mini world's independent judge (sdkit.mini.judge: a digit CNN trained on real MNIST plus palette color
naming), at 25 DDIM steps and guidance 5, for the shipped mini pipeline and for the quickstart's LoRA run:

- concept prompts: 12 prompts `a {fg} sks glyph on a {bg} background` x 4 seeds: are the foreground and the
  background color both right? (the judge does not know the star: only its colors are judged)
- digit prompts: 10 prompts `a {fg} {digit} on a {bg} background` x 4 seeds: digit, fg and bg all right (joint);
- the same 12 color pairs with other words in the glyph's place, on the base model only, to see what disturbs the
  colors: a shape the model knows (`circle`), `glyph` (2 CLIP tokens), one or two extra words before a known shape,
  and `sks glyph` without the two articles (so the prompt is as long as a canonical caption).

    python bench/quickstart_colors.py --run runs/quickstart --json bench/results_quickstart_colors.json

Without --run (or when it does not exist) the quickstart is trained first (python -m sdkit quickstart, ~1 min).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from sdkit.mini.judge import Judge  # noqa: E402
from sdkit.mini.world import COLORS, DIGIT_WORDS, color_pairs  # noqa: E402
from sdkit.models import load_pipeline  # noqa: E402
from sdkit.quickstart import quickstart  # noqa: E402
from sdkit.run import Run  # noqa: E402
from sdkit.sample import generate  # noqa: E402

SEEDS = (0, 1, 2, 3)
STEPS, GUIDANCE = 25, 5.0


def concept_pairs(n: int = 12) -> list:
    """n (fg, bg) pairs spread over the palette: every 56/n-th of the ordered pairs, the README's pair first."""
    pairs = color_pairs()
    chosen = [("red", "white")] + [pairs[round(i * len(pairs) / n)] for i in range(n)]
    return list(dict.fromkeys(chosen))[:n]


def digit_prompts() -> list:
    """(prompt, label) for the ten digits, each with its own color pair."""
    pairs = color_pairs()
    out = []
    for d in range(10):
        fg, bg = pairs[(d * 11) % len(pairs)]
        out.append((f"a {fg} {DIGIT_WORDS[d]} on a {bg} background", {"digit": d, "fg": fg, "bg": bg}))
    return out


def draw(pipe, prompts) -> list:
    """Every prompt at every seed, prompt-major (the order the labels are built in)."""
    return generate(pipe, list(prompts), list(SEEDS), steps=STEPS, guidance_scale=GUIDANCE)


def colors_right(judge, pipe, template: str, pairs) -> dict:
    prompts = [template.format(fg=f, bg=b) for f, b in pairs]
    preds = judge.predict(draw(pipe, prompts))
    labels = [(f, b) for f, b in pairs for _ in SEEDS]
    fg = sum(p["fg"] == f for p, (f, _) in zip(preds, labels)) / len(labels)
    bg = sum(p["bg"] == b for p, (_, b) in zip(preds, labels)) / len(labels)
    both = sum(p["fg"] == f and p["bg"] == b for p, (f, b) in zip(preds, labels)) / len(labels)
    by_prompt = {pr: [(p["fg"], p["bg"]) for p in preds[i * len(SEEDS):(i + 1) * len(SEEDS)]]
                 for i, pr in enumerate(prompts)}
    return {"fg_acc": fg, "bg_acc": bg, "both_acc": both, "n": len(labels), "drawn": by_prompt}


def digits_right(judge, pipe) -> dict:
    items = digit_prompts()
    labels = [lab for _, lab in items for _ in SEEDS]
    return judge.score(draw(pipe, [p for p, _ in items]), labels)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", default="runs/quickstart", help="the quickstart's run directory (trained if missing)")
    ap.add_argument("--json", default=None, help="write the results here")
    a = ap.parse_args()
    torch.set_num_threads(1)
    t0 = time.time()
    if not (Path(a.run) / "checkpoints").is_dir():
        quickstart(out=a.run)
    judge = Judge.load()
    pairs = concept_pairs()
    base = load_pipeline("mini")
    trained = Run(a.run).load_pipeline()
    result = {"date": time.strftime("%Y-%m-%d"), "command": " ".join(["python", *sys.argv]),
              "judge": "sdkit.mini.judge (digit CNN on real MNIST + palette color naming)",
              "sampling": {"steps": STEPS, "guidance_scale": GUIDANCE, "seeds": list(SEEDS), "scheduler": "DDIM"},
              "colors": list(COLORS), "concept_pairs": pairs, "run": str(a.run)}
    result["base"] = {"concept": colors_right(judge, base, "a {fg} sks glyph on a {bg} background", pairs),
                      "digits": digits_right(judge, base)}
    result["quickstart"] = {"concept": colors_right(judge, trained, "a {fg} sks glyph on a {bg} background", pairs),
                            "digits": digits_right(judge, trained)}
    # which words, or which positions, disturb the colors: token counts 7 (canonical), 8, 9
    result["base_words"] = {t: colors_right(judge, base, t, pairs) for t in (
        "a {fg} circle on a {bg} background", "a {fg} glyph on a {bg} background",
        "a {fg} sks circle on a {bg} background", "a {fg} sks sks circle on a {bg} background",
        "a {fg} big sks circle on a {bg} background", "{fg} sks glyph on {bg} background")}
    result["seconds"] = round(time.time() - t0, 1)
    for name in ("base", "quickstart"):
        c, d = result[name]["concept"], result[name]["digits"]
        print(f"{name:>10}: concept fg {c['fg_acc']:.2f} bg {c['bg_acc']:.2f} both {c['both_acc']:.2f} (n={c['n']})"
              f" | digits joint {d['joint_acc']:.2f} (digit {d['digit_acc']:.2f}, fg {d['fg_acc']:.2f}, "
              f"bg {d['bg_acc']:.2f}; n={d['n']})")
    for t, c in result["base_words"].items():
        print(f"  base, {t!r:>42}: fg {c['fg_acc']:.2f} bg {c['bg_acc']:.2f} both {c['both_acc']:.2f}")
    if a.json:
        Path(a.json).write_text(json.dumps(result, indent=1))
        print(f"written {a.json} ({result['seconds']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
