"""Grids across checkpoints, prompts, seeds and LoRA strengths: the "X/Y/Z plot" of checkpoint comparison.

Every cell of a grid is drawn with the same settings (sampler steps, guidance, size) and its column's seed, so two
cells differ only in what the row says: the checkpoint (step 0 = the base model) or the LoRA strength.

    g = checkpoint_grid(run, ["a white sks glyph on a black background"], seeds=[0, 1])
    g.save("grid.png")          # one PNG, or grid.png + grid_part2.png ... when it has many rows
    grid_browser(g)             # a small widget: pick checkpoint / strength / prompt, see the pictures
"""
from __future__ import annotations

import dataclasses
import io
from pathlib import Path

import torch
from PIL import Image

from ..methods import make_method
from ..models import load_pipeline, native_resolution
from ..run import Run
from ..sample import generate, label_grid

__all__ = ["CheckpointSwitcher", "Grid", "checkpoint_grid", "xyz_grid", "grid_browser", "select_checkpoints"]

BASE = "step_000000"  # the base model, before any training step


def select_checkpoints(run, which="all", include_base: bool = True) -> list:
    """Checkpoint names of `run` to compare: 'all' (default), 'latest', or names/steps like ['step_000020', 40].

    The base model is listed first as step_000000 (it has no folder: it is the pipeline before training)."""
    available = [p.name for p in run.checkpoints]
    if which in (None, "all", ["all"]):
        names = list(available)
    elif which in ("latest", ["latest"]):
        names = [run.latest_checkpoint.name] if run.latest_checkpoint else []
    else:
        names = []
        for w in ([which] if isinstance(which, (str, int)) else which):
            name = f"step_{int(w):06d}" if str(w).isdigit() else Path(str(w)).name
            if name != BASE and name not in available:
                raise FileNotFoundError(f"checkpoint {w!r}: not in {run.path}/checkpoints (has: "
                                        f"{', '.join(available) or 'none'}). Fix: use one of those, or 'all'.")
            names.append(name)
    if include_base and BASE not in names:
        names.insert(0, BASE)
    return sorted(dict.fromkeys(names), key=lambda n: int(n[5:]))


class CheckpointSwitcher:
    """One pipeline whose trained weights are swapped checkpoint by checkpoint (loading the base model once).

    The run's method adds its adapters (LoRA B = 0, so the pipeline still draws exactly like the base model); the
    weights of that state are kept as 'step_000000', and `use(name)` loads any checkpoint's trainable.safetensors.
    """

    def __init__(self, run, device="cpu"):
        self.run = run
        self.config = run.config
        self.pipe = load_pipeline(self.config.model, revision=self.config.revision)
        self.method = make_method(self.config)
        self.method.prepare_pipeline(self.pipe)
        torch.manual_seed(self.config.seed)
        self.method.setup(self.pipe.unet, self.pipe.text_encoder)
        # the method's weights made to change nothing (a fresh LoRA: lora_B = 0): the base model
        self.base_state = self.method.no_op_state({k: v.detach().clone() for k, v in
                                                   self.method.state_dict(self.pipe.unet, self.pipe.text_encoder).items()})
        self.pipe.unet.eval(), self.pipe.text_encoder.eval()
        self.pipe.to(device)
        self.current = None
        self.use(BASE)

    def use(self, name: str):
        """Load checkpoint `name` (step_XXXXXX; step_000000 = the base model) into the pipeline; return it."""
        from safetensors.torch import load_file
        if name == self.current:
            return self.pipe
        state = self.base_state if name == BASE else load_file(self.run.path / "checkpoints" / name /
                                                               "trainable.safetensors")
        self.method.load_state_dict(self.pipe.unet, self.pipe.text_encoder, state)
        self.current = name
        return self.pipe

    def settings(self, steps=None, guidance_scale=None, resolution=None, width=None, height=None,
                 square: bool = False) -> dict:
        """The sampling settings of the run's own samples (its sample_width x sample_height, else its training
        resolution), unless overridden: `resolution` or `square=True` (the metrics: their feature extractors read
        squares) for a square, `width` / `height` for any size."""
        c = self.config
        size = resolution or c.resolution or native_resolution(self.pipe)
        width = width or (None if resolution or square else c.sample_width) or size
        height = height or (None if resolution or square else c.sample_height) or size
        return {"steps": int(steps or c.sample_steps), "guidance_scale": float(
            c.guidance_scale if guidance_scale is None else guidance_scale), "height": int(height),
            "width": int(width), "negative_prompt": c.negative_prompt}

    def draw(self, name, prompts, seeds, scale: float = 1.0, **settings) -> list:
        """Images of checkpoint `name` at LoRA strength `scale`, prompt-major like sdkit.sample.generate."""
        pipe = self.use(name)
        kwargs = {"scale": float(scale)} if (self.method.supports_strength and float(scale) != 1.0) else None
        return generate(pipe, prompts, seeds, cross_attention_kwargs=kwargs, **settings)


@dataclasses.dataclass
class Grid:
    """Pictures keyed by (checkpoint, scale, prompt, seed); rows = checkpoint x scale, columns = prompt x seed."""
    cells: dict
    checkpoints: list
    scales: list
    prompts: list
    seeds: list
    settings: dict

    def rows(self):
        """(checkpoint, strength) per row; the base model gets one row (it has no LoRA to scale)."""
        return [(c, s) for c in self.checkpoints for s in (self.scales[:1] if c == BASE else self.scales)]

    def row_label(self, c, s):
        if c == BASE:
            return "base (step 0)"
        return f"step {int(c[5:])}" + (f" x{s:g}" if len(self.scales) > 1 else "")

    def col_labels(self):
        return [f"p{p} s{s}" for p in range(len(self.prompts)) for s in self.seeds]

    def image(self, rows=None, cell: int = 96) -> Image.Image:
        """One labeled PIL image of the given rows (default: all)."""
        rows = rows or self.rows()
        images = [self.cells[(c, s, p, seed)] for c, s in rows for p in self.prompts for seed in self.seeds]
        return label_grid(images, [self.row_label(c, s) for c, s in rows], self.col_labels(), cell=cell,
                          label_width=100)

    def legend(self) -> str:
        return "; ".join(f"p{i} = {p!r}" for i, p in enumerate(self.prompts)) + \
            f"; s = seed; {self.settings.get('steps')} steps, guidance {self.settings.get('guidance_scale')}"

    def save(self, path, cell: int = 96, max_rows: int = 16) -> list:
        """Write the grid as PNG; more than `max_rows` rows are tiled into path, path_part2.png, ... Returns paths.

        A legend (prompt of each column) goes to the same name with .txt."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        rows = self.rows()
        out = []
        for k in range(0, len(rows), max_rows):
            p = path if k == 0 else path.with_name(f"{path.stem}_part{k // max_rows + 1}{path.suffix}")
            self.image(rows[k:k + max_rows], cell=cell).save(p)
            out.append(p)
        path.with_suffix(".txt").write_text(self.legend() + "\n", encoding="utf-8")
        return out

    def png(self, rows=None, cell: int = 96) -> bytes:
        buf = io.BytesIO()
        self.image(rows, cell).save(buf, format="PNG")
        return buf.getvalue()


def checkpoint_grid(run, prompts, seeds=(0, 1), checkpoints="all", scales=(1.0,), steps=None, guidance_scale=None,
                    include_base: bool = True, switcher: CheckpointSwitcher = None, progress=None, width=None,
                    height=None) -> Grid:
    """Draw every (checkpoint, LoRA strength, prompt, seed) of `run` with the same settings. Returns a Grid.

    Pictures are the run's sample size (sample_width x sample_height, else its resolution) unless `width` /
    `height` say otherwise (a non-square grid for a run trained with aspect-ratio buckets).

    The base model (step 0) is the first row. `scales` are LoRA strengths (0 = base model, 1 = as trained; they
    go through `cross_attention_kwargs={"scale": s}`); for full fine-tunes only 1 is meaningful."""
    run = run if isinstance(run, Run) else Run(run)
    switcher = switcher or CheckpointSwitcher(run)
    if not switcher.method.supports_strength and any(float(s) != 1.0 for s in scales):
        raise ValueError(f"scales {list(scales)}: a strength needs a LoRA-like run; {run.path} is method "
                         f"{switcher.config.method!r}. Fix: scales=(1.0,).")
    names = select_checkpoints(run, checkpoints, include_base)
    settings = switcher.settings(steps, guidance_scale, width=width, height=height)
    cells = {}
    for name in names:
        for s in scales:
            if name == BASE and s != scales[0]:
                # the base model has no LoRA to scale: every strength draws the same pictures
                for p in prompts:
                    for seed in seeds:
                        cells[(name, float(s), p, int(seed))] = cells[(name, float(scales[0]), p, int(seed))]
                continue
            images = switcher.draw(name, prompts, seeds, scale=s, **settings)
            for i, im in enumerate(images):
                cells[(name, float(s), prompts[i // len(seeds)], int(seeds[i % len(seeds)]))] = im
            if progress:
                progress(f"{name} x{s:g}: {len(images)} images")
    return Grid(cells, names, [float(s) for s in scales], list(prompts), [int(s) for s in seeds], settings)


def xyz_grid(draw, x: tuple, y: tuple, z: tuple = None, cell: int = 96) -> list:
    """The X/Y/Z plot: `draw(**{x_name: xv, y_name: yv, z_name: zv})` -> one PIL image per cell.

    x, y, z are (name, values) pairs, e.g. ('seed', [0, 1]), ('checkpoint', [...]), ('scale', [0, 0.5, 1]).
    Returns one labeled grid per z value (rows = y, columns = x)."""
    (xn, xs), (yn, ys) = x, y
    zn, zs = z if z else (None, [None])
    out = []
    for zv in zs:
        images = []
        for yv in ys:
            for xv in xs:
                kw = {xn: xv, yn: yv}
                if zn:
                    kw[zn] = zv
                images.append(draw(**kw))
        g = label_grid(images, [f"{yn}={v}" for v in ys], [f"{xn}={v}" for v in xs], cell=cell, label_width=110)
        if zn:  # a title strip naming the z value
            titled = Image.new("RGB", (g.width, g.height + 16), (255, 255, 255))
            from PIL import ImageDraw
            ImageDraw.Draw(titled).text((3, 2), f"{zn}={zv}", fill=(0, 0, 0))
            titled.paste(g, (0, 16))
            g = titled
        out.append(g)
    return out


def grid_browser(grid: Grid, cell: int = 128):
    """A small widget to browse a Grid: checkpoint slider, strength and prompt dropdowns, all seeds shown.

    Core ipywidgets only (works with ipywidgets 7.7 on Colab and 8.x)."""
    import ipywidgets as W
    ck = W.SelectionSlider(options=[(grid.row_label(c, grid.scales[0]).split(" x")[0], c) for c in grid.checkpoints],
                           value=grid.checkpoints[-1], description="checkpoint", continuous_update=False,
                           layout=W.Layout(width="420px"))
    sc = W.Dropdown(options=grid.scales, value=grid.scales[-1], description="strength",
                    layout=W.Layout(width="200px"))
    pr = W.Dropdown(options=[(p, i) for i, p in enumerate(grid.prompts)], value=0, description="prompt",
                    layout=W.Layout(width="420px"))
    img = W.Image(format="png")
    caption = W.HTML()

    def update(*_):
        p = grid.prompts[pr.value]
        rows = [(ck.value, sc.value)]
        images = [grid.cells[(ck.value, sc.value, p, s)] for s in grid.seeds]
        pic = label_grid(images, [grid.row_label(*rows[0])], [f"seed {s}" for s in grid.seeds], cell=cell,
                         label_width=100)
        buf = io.BytesIO()
        pic.save(buf, format="PNG")
        img.value = buf.getvalue()
        caption.value = f"<code>{p}</code> — {grid.settings['steps']} steps, guidance {grid.settings['guidance_scale']}"

    for w in (ck, sc, pr):
        w.observe(update, names="value")
    update()
    return W.VBox([W.HBox([ck, sc]), pr, caption, img])
