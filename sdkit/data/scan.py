"""Scanning a data folder: find every image and its caption, in one of three layouts, and report (never crash on)
what is wrong.

Folder layouts read (auto-detected, or `layout=` stated):
- "folder":   images anywhere below the root, each with a sidecar caption (cat_01.png + cat_01.txt); the file name
              becomes the caption when there is none.
- "metadata": a Hugging Face imagefolder: metadata.jsonl / metadata.csv with a `file_name` column and a caption column
              (`text`, `caption`, `prompt`, ...).
- "kohya":    train_dir/<repeats>_<name>/ sub-folders: each image is seen <repeats> times per epoch, and its caption
              defaults to <name> (e.g. "10_sks dog" -> "sks dog") when it has no sidecar.
Hidden files and folders and OS/notebook noise (.ipynb_checkpoints, __MACOSX, .DS_Store, Thumbs.db) are ignored.
"""
from __future__ import annotations

import csv
import dataclasses
import json
import re
from pathlib import Path

from .files import (IMAGE_EXTS, CaptionError, describe_load_error, is_noise, load_image, read_caption_encoding,
                    relative_path)

METADATA_FILES = ("metadata.jsonl", "metadata.csv")
CAPTION_COLUMNS = ("text", "caption", "captions", "prompt", "description", "label", "tags")
KOHYA_DIR = re.compile(r"^(\d+)_(.+)$")


class DataError(ValueError):
    """The data folder cannot be trained on; the message says why and what to do."""


@dataclasses.dataclass
class Problem:
    path: str
    severity: str  # "error" | "warning" | "info"
    message: str


@dataclasses.dataclass
class Scan:
    """What a folder holds: usable (image path, caption) items and the problems found.

    `repeats[i]` is how often item i is seen per epoch (kohya folders; 1 otherwise), `groups[i]` its concept folder
    ("" outside kohya layouts), `sizes[i]` its (width, height) after EXIF rotation (None when not checked).
    """
    root: Path
    items: list  # [(Path, str)]
    problems: list  # [Problem]
    layout: str = "folder"
    repeats: list = None
    groups: list = None
    sizes: list = None

    def __post_init__(self):
        n = len(self.items)
        self.repeats = list(self.repeats) if self.repeats is not None else [1] * n
        self.groups = list(self.groups) if self.groups is not None else [""] * n
        self.sizes = list(self.sizes) if self.sizes is not None else [None] * n

    @property
    def captions(self):
        return [c for _, c in self.items]

    @property
    def skipped(self) -> int:
        return sum(p.severity == "error" for p in self.problems)

    def subset(self, indices) -> "Scan":
        """A Scan of the items at `indices` (problems kept)."""
        idx = list(indices)
        return Scan(self.root, [self.items[i] for i in idx], list(self.problems), self.layout,
                    [self.repeats[i] for i in idx], [self.groups[i] for i in idx], [self.sizes[i] for i in idx])




def _filename_caption(path: Path) -> str:
    """cat_03.jpg -> 'cat', 'red ball (2).png' -> 'red ball'."""
    stem = re.sub(r"[\s_-]*(\(\d+\)|\d+)$", "", path.stem) or path.stem
    return " ".join(stem.replace("_", " ").replace("-", " ").split())


def _read_metadata(meta_path: Path, problems: list) -> dict:
    """{image path: caption} from a Hugging Face imagefolder metadata.jsonl / metadata.csv."""
    rows = []
    try:
        if meta_path.suffix == ".jsonl":
            for n, line in enumerate(meta_path.read_text(encoding="utf-8-sig").splitlines(), 1):
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError as e:
                        problems.append(Problem(str(meta_path), "warning", f"{meta_path}: line {n} is not JSON "
                                                f"({e.msg}); skipped. Fix: one JSON object per line."))
        else:
            with open(meta_path, newline="", encoding="utf-8-sig") as f:
                rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        problems.append(Problem(str(meta_path), "error", f"{meta_path}: cannot be read ({e}); its captions are not "
                                f"used. Fix: save it as UTF-8."))
        return {}
    rows = [r for r in rows if isinstance(r, dict)]
    if not rows:
        return {}
    cols = list(rows[0])
    if "file_name" not in cols:
        problems.append(Problem(str(meta_path), "error", f"{meta_path}: no 'file_name' column (columns: {cols}); "
                                f"not used. Fix: name the image column file_name, as Hugging Face imagefolder does."))
        return {}
    cap_col = next((c for c in CAPTION_COLUMNS if c in cols), None)
    if cap_col is None:
        cap_col = next((c for c in cols if c != "file_name" and isinstance(rows[0][c], str)), None)
    out = {}
    for r in rows:
        cap = r.get(cap_col, "") if cap_col else ""
        if isinstance(cap, list):  # several captions per image: use the first
            cap = cap[0] if cap else ""
        out[(meta_path.parent / str(r["file_name"])).resolve()] = " ".join(str(cap or "").split())
    return out


def _detect_layout(root: Path) -> str:
    if any((root / m).is_file() for m in METADATA_FILES):
        return "metadata"
    subdirs = [d for d in root.iterdir() if d.is_dir() and not is_noise(d, root)]
    if subdirs and any(KOHYA_DIR.match(d.name) for d in subdirs):
        return "kohya"
    return "folder"


# ---- scanning ---------------------------------------------------------------------------------------------------
def scan_folder(root, caption_ext: str = ".txt", check_images: bool = True, layout: str = "auto",
                require_images: bool = True) -> Scan:
    """Find every image under `root` (recursive) and its caption; report, never crash, on bad files.

    `layout`: "auto" (detected), "folder", "metadata" or "kohya" (see the module docstring). Broken images are
    reported as errors and skipped. With `require_images` (the default) a folder with no usable image raises
    DataError; otherwise an empty Scan comes back (what `sdkit.data.check` reports on)."""
    root = Path(root)
    if not root.exists():
        raise DataError(f"data folder {root} does not exist. Fix: check the path (relative paths are from "
                        f"{Path.cwd()}).")
    if not root.is_dir():
        raise DataError(f"data {root} is a file; expected a folder of images with {caption_ext} captions.")
    if layout == "auto":
        layout = _detect_layout(root)
    if layout not in ("folder", "metadata", "kohya"):
        raise DataError(f"layout: got {layout!r}; expected auto, folder, metadata or kohya.")
    items, problems, repeats, groups, sizes = [], [], [], [], []
    metadata = {}
    if layout == "metadata":
        for m in METADATA_FILES:
            for meta_path in sorted(root.rglob(m)):
                if not is_noise(meta_path, root):
                    metadata.update(_read_metadata(meta_path, problems))
    caption_ext_l = caption_ext.lower()
    for path in sorted(root.rglob("*")):
        if is_noise(path, root) or path.is_dir():
            continue
        suffix = path.suffix.lower()
        if suffix not in IMAGE_EXTS:
            if suffix == caption_ext_l:
                if not any(path.with_suffix(e).exists() or path.with_suffix(e.upper()).exists() for e in IMAGE_EXTS):
                    problems.append(Problem(str(path), "info", f"{relative_path(path, root)}: caption file with no image of the same "
                                            f"name; ignored."))
            elif path.name not in METADATA_FILES:
                problems.append(Problem(str(path), "info", f"{relative_path(path, root)}: not an image; ignored."))
            continue
        # kohya: the first folder below the root names repeats and the default caption
        rep, group, default_caption = 1, "", None
        if layout == "kohya":
            rel = path.relative_to(root).parts
            m = KOHYA_DIR.match(rel[0]) if len(rel) > 1 else None
            if m is None:
                problems.append(Problem(str(path), "warning", f"{relative_path(path, root)}: not inside a <repeats>_<name> folder, so "
                                        f"it is not used (kohya layout). Fix: move it into e.g. 10_sks dog/."))
                continue
            rep, group = int(m.group(1)), rel[0]
            default_caption = " ".join(m.group(2).split())
            if rep == 0:
                problems.append(Problem(str(path), "warning", f"{relative_path(path, root)}: folder {rel[0]!r} repeats 0 times; "
                                        f"not used. Fix: rename it with a repeat count of at least 1."))
                continue
        size = None
        if check_images:
            try:
                size = load_image(path).size
            except Exception as e:  # noqa: BLE001 - any decoder error means: skip and report
                problems.append(Problem(str(path), "error", describe_load_error(path, e, relative_path(path, root))))
                continue
        # caption: sidecar file, else metadata row, else kohya folder name, else file name
        cap_path = path.with_suffix(caption_ext)
        resolved = path.resolve() if path.exists() else path
        if cap_path.is_file():
            try:
                caption, encoding = read_caption_encoding(cap_path, relative_path(cap_path, root))
            except CaptionError as e:  # not text: skip the image rather than train it on garbage
                problems.append(Problem(str(cap_path), "error", f"{e.problem}; {relative_path(path, root)} is "
                                        f"skipped. {e.fix}"))
                continue
            except OSError as e:
                caption = None
                problems.append(Problem(str(cap_path), "warning", f"{relative_path(cap_path, root)}: cannot be read ({e}); "
                                        f"using the default caption."))
            else:
                if encoding == "cp1252":
                    problems.append(Problem(str(cap_path), "warning", f"{relative_path(cap_path, root)}: not UTF-8; read "
                                            f"as Windows-1252: {caption[:60]!r}. Fix: if that is wrong, save it as UTF-8."))
            if caption == "":
                problems.append(Problem(str(cap_path), "warning", f"{relative_path(cap_path, root)}: empty caption; the image "
                                        f"trains unconditionally. Fix: write a caption."))
        else:
            caption = None
        if caption is None:
            if resolved in metadata:
                caption = metadata[resolved]
                if not caption:
                    problems.append(Problem(str(path), "warning", f"{relative_path(path, root)}: empty caption in metadata; the image "
                                            f"trains unconditionally. Fix: fill in its caption."))
            elif default_caption is not None:
                caption = default_caption
            else:
                caption = _filename_caption(path)
                where = "no row in metadata" if layout == "metadata" else f"no {caption_ext} caption"
                problems.append(Problem(str(path), "warning", f"{relative_path(path, root)}: {where}; using the file name "
                                        f"{caption!r}. Fix: add {cap_path.name}."))
        items.append((path, caption))
        repeats.append(rep)
        groups.append(group)
        sizes.append(size)
    if not items and require_images:
        found = sorted({p.suffix.lower() for p in root.rglob("*") if p.is_file() and not is_noise(p, root)})
        broken = sum(p.severity == "error" for p in problems)
        why = f"{broken} image(s) could not be read (run `python -m sdkit data check {root}`); " if broken else ""
        raise DataError(f"data folder {root}: no usable image found ({why}extensions present: {found or 'none'}; "
                        f"images read: {', '.join(sorted(IMAGE_EXTS))}). Fix: put images (with {caption_ext} "
                        f"caption files of the same name) in the folder.")
    return Scan(root, items, problems, layout, repeats, groups, sizes)

