"""Lint a data folder before training: what will break, what will train badly, and what to do about it.

    report = sdkit.data.check("my_photos", resolution=512, trigger="sks", kind="subject")
    print(report.table())          # readable in a terminal
    report.grid()                  # thumbnails, problems marked (a PIL image; shows itself in a notebook)
    report.to_json("report.json")  # {"usable": [...], "problems": [{"path", "severity", "message"}], "stats": {...}}

Same from the shell: `python -m sdkit data check DIR [--json REPORT] [--resolution R]` (exit 0 when trainable).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
import statistics
import textwrap
from pathlib import Path

import numpy as np

from .buckets import kept_fraction
from .captions import CLIP_CONTEXT, count_tokens, has_trigger
from .dataset import COLOR_WORDS
from .files import load_image, relative_path
from .scan import Problem, scan_folder

__all__ = ["check", "Report", "DATASET_SIZES"]

# How many images a concept needs. The DreamBooth paper (Ruiz et al., 2022) personalizes a subject from 3-5 images;
# LoRA practice for a subject is about 10-20 varied pictures; a style needs more variety (community guides say
# 50-200; a few dozen already work when they vary in subject). These are rules of thumb, not measurements.
DATASET_SIZES = {
    "subject": (5, "a subject (one object, character or person) trains from about 5-20 varied images (the "
                   "DreamBooth paper used 3-5; LoRA guides suggest 10-20)"),
    "style": (20, "a style needs more variety than a subject: several dozen images of different subjects "
                 "(community guides say 50-200)"),
    None: (5, "a concept trains from about 5-20 varied images (a subject) or several dozen (a style)"),
}
ASPECT_LIMIT = 2.5  # wider than 2.5:1: a square crop keeps less than 40% of the picture
# A flat picture (one color, or nearly) has no texture for a perceptual hash to see: every flat picture hashes the
# same. Below this gray-level spread (0-255) two pictures are near duplicates only when their pixels agree too.
FLAT_STD = 4.0
FLAT_PIXEL_DIFF = 8.0  # mean absolute difference (0-255) of 16x16 thumbnails under which two flat pictures match


@dataclasses.dataclass
class Report:
    """What `check` found. `usable`: images that will train; `problems`: Problem(path, severity, message)."""
    root: Path
    usable: list
    problems: list
    stats: dict
    scan: object = None

    @property
    def ok(self) -> bool:
        """Trainable: at least one usable image (warnings allowed)."""
        return bool(self.usable)

    def count(self, severity: str) -> int:
        return sum(p.severity == severity for p in self.problems)

    def to_dict(self) -> dict:
        return {"usable": [str(p) for p in self.usable],
                "problems": [dataclasses.asdict(p) for p in self.problems],
                "stats": self.stats}

    def to_json(self, path=None) -> str:
        text = json.dumps(self.to_dict(), indent=2, ensure_ascii=False)
        if path is not None:
            Path(path).write_text(text + "\n", encoding="utf-8")
        return text

    def table(self, width: int = 110, show_info: bool = True) -> str:
        """A plain-text table: summary, then one row per problem (errors first)."""
        s = self.stats
        lines = [f"data check: {self.root}",
                 f"  layout {s['layout']} | {s['usable']} usable image(s), {s['skipped']} skipped | "
                 f"{s['samples_per_epoch']} samples per epoch | errors {self.count('error')}, "
                 f"warnings {self.count('warning')}, info {self.count('info')}"]
        if s.get("width"):
            lines.append(f"  sizes {s['width']['min']}-{s['width']['max']} x {s['height']['min']}-"
                         f"{s['height']['max']} px | caption tokens max {s['tokens']['max']} "
                         f"(CLIP reads {CLIP_CONTEXT})")
        order = {"error": 0, "warning": 1, "info": 2}
        # per severity, file rows by path, then what concerns the whole folder (its verdict comes last)
        rows = sorted((p for p in self.problems if show_info or p.severity != "info"),
                      key=lambda p: (order[p.severity], p.path == str(self.root), p.path))
        if rows:
            lines.append("")
            lines.append(f"  {'SEVERITY':<8}  MESSAGE")
            lines.append("  " + "-" * (width - 2))
            for p in rows:
                wrapped = textwrap.wrap(p.message, width - 12) or [""]
                lines.append(f"  {p.severity.upper():<8}  {wrapped[0]}")
                lines += [f"  {'':<8}    {w}" for w in wrapped[1:]]
        verdict = ("OK: trainable" + (" (read the warnings)" if self.count("warning") else "")) if self.ok \
            else "NOT TRAINABLE: no usable image"
        lines += ["", verdict]
        return "\n".join(lines)

    def __str__(self):
        return self.table()

    def grid(self, thumb: int = 96, columns: int = 8, max_items: int = 64):
        """Thumbnails of every image (usable and broken); a red frame marks an error, orange a warning.
        Returns a PIL image (a notebook displays it)."""
        from PIL import Image, ImageDraw
        worst = {}
        rank = {"info": 0, "warning": 1, "error": 2}
        for p in self.problems:
            key = str(p.path)
            for ext in (self.stats.get("caption_ext", ".txt"),):  # caption problems mark their image
                if key.endswith(ext):
                    key = key[: -len(ext)]
            if rank[p.severity] > rank.get(worst.get(key), -1):
                worst[key] = p.severity
        paths = [Path(p) for p in self.usable] + [Path(p.path) for p in self.problems if p.severity == "error"]
        paths = paths[:max_items]
        rows = max(1, math.ceil(len(paths) / columns))
        cell = thumb + 8
        sheet = Image.new("RGB", (columns * cell, rows * (cell + 14)), (255, 255, 255))
        draw = ImageDraw.Draw(sheet)
        for k, path in enumerate(paths):
            x, y = (k % columns) * cell, (k // columns) * (cell + 14)
            try:
                im = load_image(path)
                im.thumbnail((thumb, thumb))
            except Exception:  # noqa: BLE001 - draw a crossed gray tile for a broken file
                im = Image.new("RGB", (thumb, thumb), (200, 200, 200))
                d = ImageDraw.Draw(im)
                d.line((0, 0, thumb, thumb), fill=(200, 0, 0), width=3)
                d.line((0, thumb, thumb, 0), fill=(200, 0, 0), width=3)
            sev = worst.get(str(path)) or worst.get(str(path.with_suffix("")))
            color = {"error": (220, 0, 0), "warning": (255, 150, 0)}.get(sev)
            if color:
                draw.rectangle((x, y, x + cell - 1, y + cell - 1), outline=color, width=4)
            sheet.paste(im, (x + 4 + (thumb - im.width) // 2, y + 4 + (thumb - im.height) // 2))
            draw.text((x + 2, y + cell), path.name[:16], fill=(0, 0, 0))
        return sheet


def _alike_pixels(a, b) -> bool:
    """Whether two (16, 16, 3) thumbnails may be near duplicates: always when both have texture (the perceptual hash
    decides); for a flat picture only when the pixels agree (pHash calls any two flat pictures equal)."""
    if min(a.mean(axis=2).std(), b.mean(axis=2).std()) >= FLAT_STD:
        return True
    return float(np.abs(a - b).mean()) < FLAT_PIXEL_DIFF


def _pixel_hash(im) -> str:
    return hashlib.sha256(im.tobytes() + repr(im.size).encode()).hexdigest()


def check(root, resolution: int = 512, caption_ext: str = ".txt", trigger: str = "", kind: str = None,
          layout: str = "auto", near_duplicate_distance: int = 4, color_jitter: float = 0.0,
          tokenizer=None, buckets=None) -> Report:
    """Check a data folder; never raises for bad files (only for a folder that does not exist).

    resolution: the training resolution (images smaller than it get upscaled). trigger: a token every caption should
    contain. kind: "subject" or "style" for dataset-size advice. near_duplicate_distance: perceptual-hash (pHash)
    bit distance under which two images count as near duplicates (0-64; 4 is strict). buckets: the (width, height)
    buckets training will use (None: square crops), for the aspect-ratio warning."""
    import imagehash
    scan = scan_folder(root, caption_ext, layout=layout, require_images=False)
    problems = list(scan.problems)
    root = scan.root
    R = lambda p: relative_path(p, root)  # noqa: E731
    sizes, tokens, phashes, pixel_hashes, thumbs = [], [], [], {}, []
    # ---- 1. per image: size, aspect, caption length, trigger --------------------------------------------------
    for (path, caption), size in zip(scan.items, scan.sizes):
        im = load_image(path)
        w, h = im.size
        sizes.append((w, h))
        if min(w, h) < resolution:
            problems.append(Problem(str(path), "warning", f"{R(path)}: {w}x{h} is below the training resolution "
                                    f"{resolution}; it will be upscaled and look soft. Fix: use a larger original, "
                                    f"or train at a lower resolution."))
        ar = max(w, h) / min(w, h)
        kept = max(kept_fraction((w, h), b) for b in buckets) if buckets else 1 / ar
        if kept < 1 / ASPECT_LIMIT:
            where = "its closest bucket" if buckets else "a square crop"
            fix = ("crop it by hand, or allow longer buckets (max_bucket_side)" if buckets else
                   "crop it by hand, or train with aspect-ratio buckets (bucketing=True, the default)")
            problems.append(Problem(str(path), "warning", f"{R(path)}: aspect ratio {ar:.1f}:1; {where} keeps "
                                    f"only {100 * kept:.0f}% of it. Fix: {fix}."))
        n = count_tokens(caption, tokenizer)
        tokens.append(n)
        if n > CLIP_CONTEXT:
            problems.append(Problem(str(path), "warning", f"{R(path)}: caption has {n} CLIP tokens; CLIP reads "
                                    f"{CLIP_CONTEXT}, so the last {n - CLIP_CONTEXT} are cut — shorten it."))
        if trigger and not has_trigger(caption, trigger):
            problems.append(Problem(str(path), "warning", f"{R(path)}: caption {caption[:60]!r} lacks the trigger "
                                    f"{trigger!r}. Fix: add it (sdkit.data.insert_trigger), or the image "
                                    f"teaches nothing about {trigger!r}."))
        pixel_hashes.setdefault(_pixel_hash(im), []).append(path)
        phashes.append(imagehash.phash(im))
        thumbs.append(np.asarray(im.resize((16, 16)), dtype=np.float32))  # (16, 16, 3) for flat pictures
    # ---- 2. duplicates: identical pixels, then near duplicates by perceptual hash ------------------------------
    n_dupes = 0
    exact_of = {}
    for paths in pixel_hashes.values():
        # the original is the one whose name does not look like a copy ("x (2).png", "x copy.png"), else the shorter
        paths = sorted(paths, key=lambda p: (bool(re.search(r"copy|\(\d+\)$", p.stem, re.I)), len(p.name), p.name))
        for p in paths[1:]:
            exact_of[p] = paths[0]
            n_dupes += 1
            problems.append(Problem(str(p), "warning", f"{R(p)}: exact duplicate of {R(paths[0])}; it counts twice "
                                    f"and gets memorized. Fix: delete one of them."))
    items = [p for p, _ in scan.items]
    for i in range(len(items)):
        for j in range(i + 1, len(items)):
            d = phashes[i] - phashes[j]
            if d <= near_duplicate_distance and items[j] not in exact_of and items[i] not in exact_of \
                    and _alike_pixels(thumbs[i], thumbs[j]):
                n_dupes += 1
                problems.append(Problem(str(items[j]), "warning", f"{R(items[j])}: near duplicate of "
                                        f"{R(items[i])} (pHash distance {d} of 64); near-copies are memorized. "
                                        f"Fix: keep the better one, or check they really differ."))
    # ---- 3. captions shared by several images -----------------------------------------------------------------
    by_caption = {}
    for path, caption in scan.items:
        if caption:
            by_caption.setdefault(caption, []).append(path)
    for caption, paths in by_caption.items():
        if len(paths) > 1:
            problems.append(Problem(str(paths[0]), "info", f"{len(paths)} images share the caption {caption!r} "
                                    f"({', '.join(R(p) for p in paths[:3])}{', ...' if len(paths) > 3 else ''}). "
                                    f"Fine for single-token captions; otherwise describe what differs."))
    # ---- 4. dataset size and balance --------------------------------------------------------------------------
    n_use = len(scan.items)
    need, advice = DATASET_SIZES.get(kind, DATASET_SIZES[None])
    if 0 < n_use < need:
        problems.append(Problem(str(root), "warning", f"{root.name or root}: only {n_use} usable image(s); {advice}. Fix: add "
                                f"more varied pictures (poses, backgrounds, lighting) or expect a narrow result."))
    per_group = {}
    for g, r in zip(scan.groups, scan.repeats):
        per_group[g] = per_group.get(g, 0) + r
    if scan.layout == "kohya" and len(per_group) > 1:
        lo, hi = min(per_group.values()), max(per_group.values())
        if hi > 2 * lo:
            parts = ", ".join(f"{g!r}: {n}" for g, n in sorted(per_group.items()))
            problems.append(Problem(str(root), "warning", f"{root.name or root}: concepts are unbalanced (samples per epoch = "
                                    f"images x repeats: {parts}); the biggest is seen {hi / lo:.1f}x as often. "
                                    f"Fix: change the repeat counts in the folder names to even them out."))
    if color_jitter:
        hits = sorted({w for c in scan.captions for w in c.lower().replace(",", " ").split() if w in COLOR_WORDS})
        if hits:
            problems.append(Problem(str(root), "warning", f"{root.name or root}: color jitter is on but captions name "
                                    f"colors ({', '.join(hits)}); the model would learn wrong colors. "
                                    f"Fix: color_jitter=0 when the concept depends on color."))
    if not n_use:
        errors = sum(p.severity == "error" for p in problems)
        fix = f", or fix the {errors} error(s) listed with this one" if errors else ""
        problems.append(Problem(str(root), "error", f"{root.name or root}: no usable image. Fix: add images (png, jpg, "
                                f"webp, ...) with {caption_ext} captions{fix}."))
    # ---- 5. stats ---------------------------------------------------------------------------------------------
    def summary(values):
        return {"min": min(values), "median": statistics.median(values), "max": max(values)} if values else None
    stats = {
        "layout": scan.layout, "caption_ext": caption_ext, "resolution": resolution,
        "images_found": n_use + scan.skipped, "usable": n_use, "skipped": scan.skipped,
        "samples_per_epoch": int(sum(scan.repeats)),
        "width": summary([w for w, _ in sizes]), "height": summary([h for _, h in sizes]),
        "aspect": summary([round(max(w, h) / min(w, h), 3) for w, h in sizes]),
        "tokens": summary(tokens) or {"min": 0, "median": 0, "max": 0},
        "below_resolution": sum(min(s) < resolution for s in sizes),
        "duplicates": n_dupes, "distinct_captions": len(by_caption),
        "groups": per_group if scan.layout == "kohya" else {},
        "severity": {s: sum(p.severity == s for p in problems) for s in ("error", "warning", "info")},
    }
    if stats["tokens"] and tokens:
        stats["tokens"]["mean"] = round(float(np.mean(tokens)), 1)
    return Report(root, [p for p, _ in scan.items], problems, stats, scan)
