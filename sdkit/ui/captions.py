"""The caption editor: a notebook widget to read and fix the captions of a data folder, with CLIP token counts.

    editor = caption_editor("my_photos")     # thumbnail, caption box and token count per image; Save writes .txt files
"""
from __future__ import annotations

import io
import os
from pathlib import Path

from ..data.captions import CLIP_CONTEXT, count_tokens
from ..data.files import load_image
from ..data.scan import scan_folder

__all__ = ["caption_editor"]


def caption_editor(folder, caption_ext: str = ".txt", thumb: int = 96, max_items: int = 200, layout: str = "auto"):
    """A widget: one row per image (thumbnail, caption text box, token count); Save writes the changed sidecar
    files. Core ipywidgets only (works with ipywidgets 7.7 and 8). `editor.save()` does the same from code;
    `editor.boxes` maps each image path to its Textarea."""
    import ipywidgets as W
    scan = scan_folder(folder, caption_ext, layout=layout)
    rows, boxes, counts = [], {}, {}
    for path, caption in scan.items[:max_items]:
        im = load_image(path)
        im.thumbnail((thumb, thumb))
        buf = io.BytesIO()
        im.save(buf, format="PNG")
        box = W.Textarea(value=caption, layout=W.Layout(width="420px", height="60px"))
        count = W.HTML()

        def update(change=None, box=box, count=count):
            n = count_tokens(box.value)
            color = "#c00" if n > CLIP_CONTEXT else "#666"
            count.value = f"<span style='color:{color}'>{n}/{CLIP_CONTEXT} tokens</span>"

        update()
        box.observe(update, names="value")
        boxes[path], counts[path] = box, count
        label = W.HTML(f"<code>{os.path.relpath(path, scan.root)}</code>")
        rows.append(W.HBox([W.Image(value=buf.getvalue(), format="png", width=thumb), W.VBox([label, box, count])]))
    status = W.HTML()
    button = W.Button(description="Save captions", button_style="primary")
    originals = {p: b.value for p, b in boxes.items()}

    def save(_=None):
        changed = []
        for p, b in boxes.items():
            cap_path = Path(p).with_suffix(caption_ext)
            text = " ".join(b.value.split())
            if text != originals[p] or not cap_path.exists():
                cap_path.write_text(text + "\n", encoding="utf-8")
                originals[p] = text
                changed.append(cap_path)
        status.value = f"saved {len(changed)} caption file(s)"
        return changed

    button.on_click(save)
    more = f"<i>showing {max_items} of {len(scan.items)} images</i>" if len(scan.items) > max_items else ""
    editor = W.VBox([W.HBox([button, status]), W.HTML(more), *rows])
    editor.save, editor.boxes = save, boxes
    return editor
