"""Build every notebooks/NN_name.ipynb from its source, notebooks/NN_name.py (jupytext percent format).

    python scripts/build_notebooks.py           # rebuild all .ipynb from their .py
    python scripts/build_notebooks.py --check   # change nothing; exit 1 naming each .ipynb that is out of date

The .py is the one source of truth: edit it (any editor; `# %%` starts a code cell, `# %% [markdown]` a markdown
cell), then run this. The .ipynb stays in git for Colab's badge, stored clean: no outputs, no execution counts, no
widget state, and each cell's id derived from its content, so building twice gives the same bytes and a diff shows
only the cells that changed. tests/test_notebooks.py fails when an .ipynb differs from what its .py builds.
"""
from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
COMMAND = "python scripts/build_notebooks.py"


def sources(folder: Path = NOTEBOOKS) -> list:
    """The notebook sources: NN_name.py files (two digits, underscore) in `folder`."""
    return sorted(p for p in folder.glob("[0-9][0-9]_*.py"))


def cell_id(cell_type: str, source: str, taken: set) -> str:
    """A stable id: 8 hex digits of the cell's type and text (-2, -3, ... for identical cells)."""
    base = hashlib.sha1(f"{cell_type}\n{source}".encode()).hexdigest()[:8]
    cid, n = base, 1
    while cid in taken:
        n += 1
        cid = f"{base}-{n}"
    taken.add(cid)
    return cid


def build(py: Path) -> str:
    """The .ipynb text that `py` builds (nbformat 4.5 JSON, no outputs, stable ids, trailing newline)."""
    import jupytext
    import nbformat
    nb = jupytext.read(py, fmt="py:percent")
    nb.metadata.pop("widgets", None)
    nb.metadata.get("jupytext", {}).pop("text_representation", None)
    taken = set()
    for cell in nb.cells:
        cell.id = cell_id(cell.cell_type, cell.source, taken)
        cell.metadata.pop("lines_to_next_cell", None)   # only the .py's blank lines, nothing for the notebook
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    nb.nbformat, nb.nbformat_minor = 4, 5
    text = jupytext.writes(nb, fmt="ipynb")
    nbformat.validate(json.loads(text))
    return text if text.endswith("\n") else text + "\n"


def stale(folder: Path = NOTEBOOKS) -> list:
    """Names of the .ipynb files that are missing or differ from what their .py builds."""
    return [py.with_suffix(".ipynb").name for py in sources(folder)
            if not py.with_suffix(".ipynb").is_file()
            or py.with_suffix(".ipynb").read_text(encoding="utf-8") != build(py)]


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "--check" in argv:
        out = stale()
        for name in out:
            print(f"notebooks/{name} is out of date with its .py source: run `{COMMAND}`")
        return 1 if out else 0
    for py in sources():
        ipynb = py.with_suffix(".ipynb")
        text = build(py)
        if not ipynb.is_file() or ipynb.read_text(encoding="utf-8") != text:
            ipynb.write_text(text, encoding="utf-8")
            print(f"wrote notebooks/{ipynb.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
