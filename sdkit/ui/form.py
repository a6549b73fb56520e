"""A form for a run, generated from the config's field table (`sdkit.config.config_fields`): one widget per field.

    form = ConfigForm(TrainConfig(data="data_samples/glyph"))
    form.widget          # tabs per group (model, data, method, ...), each field's help as its tooltip
    form.config          # the TrainConfig the form holds now (raises ConfigError if a field is invalid)
    form.config = cfg    # fill the form from a config

Which widget a field gets comes from its FieldSpec (type, optional, choices, min, max, widget="path"):
bool -> Checkbox (Optional[bool] -> Dropdown default/yes/no) · choices -> Dropdown · int with a small range -> IntSlider, else BoundedIntText ·
float with a range and short decimals -> FloatSlider, else Text (so 1e-4 stays 1e-4) · Optional[number] -> Text
(empty = default) · List[int] -> comma-separated Text · List[str] -> Textarea, one item per line (prompts contain
commas) · str -> Text. Only core widgets whose API is the same in ipywidgets 7.7 (Colab) and 8.
The method Dropdown lists the registry's methods as they are when the form is built; the line under it says what the
chosen one does (the first line of its class docstring).
"""
from __future__ import annotations

import dataclasses
import html
import importlib.util
import typing
from pathlib import Path

import ipywidgets as W

from ..config import GROUPS, ConfigError, FieldSpec, TrainConfig, config_fields
from ..models import PRESETS as MODEL_PRESETS
from ..registry import method_class

__all__ = ["ConfigForm", "PRESETS", "apply_preset"]

_EMPTY = ""  # the Dropdown value that stands for None (ipywidgets 7 and 8 treat a None value differently)


def _t4_safe(cfg: TrainConfig) -> dict:
    """A free Colab T4 (16 GB, sm75: fp16 yes, bf16 no)."""
    has_bnb = importlib.util.find_spec("bitsandbytes") is not None
    return {"mixed_precision": "fp16", "gradient_checkpointing": True, "batch_size": 1,
            "optimizer": "adamw8bit" if has_bnb else "adamw"}


def _cpu_quick(cfg: TrainConfig) -> dict:
    """A laptop without a GPU: the mini pipeline (or a tiny random one), a minute of training."""
    mini_ok = (Path(MODEL_PRESETS["mini"]["path"]()) / "model_index.json").is_file()
    return {"model": "mini" if mini_ok else "tiny", "mixed_precision": "no", "gradient_checkpointing": False,
            "optimizer": "adamw", "attention": "sdpa", "resolution": None, "steps": 60, "batch_size": 4,
            "lr": 1e-3, "sample_every": 20, "sample_steps": 10, "checkpoint_every": 30}


def _sdxl_t4_lora(cfg: TrainConfig) -> dict:
    """SDXL LoRA on a free Colab T4 (docs/SDXL.md; its memory budget is an estimate, not a measurement): UNet LoRA
    on attention, 1024 px, batch 1, fp16 with the fp16-fix VAE (the sdxl preset), checkpointing, 8-bit Adam,
    cached latents (so no random crop/flip/jitter)."""
    has_bnb = importlib.util.find_spec("bitsandbytes") is not None
    return {"model": "sdxl", "method": "lora", "lora_rank": 16, "lora_targets": "to_q,to_k,to_v,to_out.0",
            "train_text_encoder": False, "resolution": 1024, "batch_size": 1, "mixed_precision": "fp16",
            "gradient_checkpointing": True, "optimizer": "adamw8bit" if has_bnb else "adamw", "cache_latents": True,
            "center_crop": True, "random_flip": False, "color_jitter": 0.0, "validation_split": 0.0, "lr": 1e-4}


# name -> function(current config) -> field changes. The form shows them in a Dropdown + Apply.
PRESETS = {"T4 safe": _t4_safe, "CPU quick": _cpu_quick, "sdxl-t4-lora": _sdxl_t4_lora}  # sdxl: issue #11


def apply_preset(cfg: TrainConfig, name: str) -> TrainConfig:
    return dataclasses.replace(cfg, **PRESETS[name](cfg))


def method_summary(name) -> str:
    """The first line of a registered method's class docstring ("" for an unknown name)."""
    try:
        doc = (method_class(name).__doc__ or "").strip()
    except KeyError:
        return ""
    return doc.splitlines()[0].strip() if doc else ""


def _short_decimals(x) -> bool:
    return x is not None and abs(round(float(x), 2) - float(x)) < 1e-12


class _Field:
    """One config field: its widget, how to read/write it, and the line under it that shows its error."""

    def __init__(self, spec: FieldSpec, default):
        self.spec = spec
        self.name, self.group = spec.name, spec.group
        self.type, self.optional = spec.type, spec.optional
        self.is_list, self.item_type = spec.is_list, spec.item_type
        self.kind, self.widget = self._make(default)
        _set_tooltip(self.widget, spec.help)
        self.error = W.HTML(value="", layout=W.Layout(margin="0 0 0 210px"))
        self.help = W.HTML(value=self._help_html(), layout=W.Layout(margin="-4px 0 4px 210px"))
        if spec.name == "method":  # say what the chosen method does, under the field
            self.widget.observe(lambda _: setattr(self.help, "value", self._help_html()), names="value")
        self.box = W.VBox([self.widget, self.help, self.error])

    def _help_html(self) -> str:
        text = _esc(self.spec.help)
        if self.spec.name == "method" and method_summary(self.widget.value):
            text += f"<br><b>{_esc(self.widget.value)}</b>: {_esc(method_summary(self.widget.value))}"
        return f"<span style='color:#666;font-size:90%'>{text}</span>"

    # ---- which widget ----
    def _make(self, default):
        s, t = self.spec, self.type
        common = dict(description=self.name, style={"description_width": "200px"},
                      layout=W.Layout(width="560px"))
        if s.choices is not None:
            options = [("(from the model)" if c is None else str(c), _EMPTY if c is None else c)
                       for c in s.choices]
            return "choice", W.Dropdown(options=options, value=_EMPTY if default is None else default, **common)
        if t is bool and self.optional:  # Optional[bool]: "default" (None) is a third state a Checkbox lacks
            options = [("(default)", _EMPTY), ("yes", True), ("no", False)]
            return "choice", W.Dropdown(options=options, value=_EMPTY if default is None else default, **common)
        if t is bool:
            return "bool", W.Checkbox(value=bool(default), indent=True, **common)
        lo, hi = s.min, s.max
        if t is int and not self.optional and lo is not None and hi is not None:
            if hi - lo <= 256:
                return "int", W.IntSlider(value=default, min=lo, max=hi, step=1, **common)
            return "int", W.BoundedIntText(value=default, min=lo, max=hi, step=1, **common)
        if (t is float and not self.optional and lo is not None and hi is not None and hi - lo <= 100
                and _short_decimals(default)):
            step = 0.01 if hi - lo <= 1 else 0.1 if hi - lo <= 10 else 0.5
            return "float", W.FloatSlider(value=default, min=lo, max=hi, step=step, **common)
        if self.is_list and self.item_type is str:
            return "lines", W.Textarea(value="\n".join(default or []), placeholder="one per line", **common)
        if self.is_list:
            return "csv", W.Text(value=", ".join(str(v) for v in default or []), placeholder="comma-separated",
                                 **common)
        placeholder = "empty: default" if self.optional else ("folder" if s.widget == "path" else "")
        return "text", W.Text(value="" if default is None else str(default), placeholder=placeholder, **common)

    # ---- widget <-> value ----
    def get(self):
        """The field's value from the widget; ConfigError('name: ...') when the text does not parse."""
        v = self.widget.value
        if self.kind == "choice":
            return None if v == _EMPTY else v
        if self.kind in ("bool", "int", "float"):
            return v
        if self.kind == "lines":
            return [line.strip() for line in v.splitlines() if line.strip()]
        if self.kind == "csv":
            return [self._parse(s.strip(), self.item_type) for s in v.split(",") if s.strip()]
        v = v.strip()
        if v == "" and (self.optional or self.type is not str):
            return None if self.optional else self._parse(v, self.type)
        return self._parse(v, self.type)

    def _parse(self, text, t):
        if t is str:
            return text
        try:
            return t(text) if t is not int else int(text.replace("_", ""))
        except ValueError:
            raise ConfigError(f"{self.name}: {text!r} is not {'an integer' if t is int else 'a number'}. "
                              f"Fix: type a number like {'8' if t is int else '1e-4'}"
                              f"{' or leave it empty for the default' if self.optional else ''}.") from None

    def set(self, value):
        if self.kind == "choice":
            self.widget.value = _EMPTY if value is None else value
        elif self.kind in ("bool", "int", "float"):
            self.widget.value = value
        elif self.kind == "lines":
            self.widget.value = "\n".join(value or [])
        elif self.kind == "csv":
            self.widget.value = ", ".join(str(v) for v in value or [])
        else:
            self.widget.value = "" if value is None else str(value)


def _set_tooltip(widget, text):
    # ipywidgets 8 calls it `tooltip`; 7.x `description_tooltip` (8 still accepts it, with a deprecation warning).
    if widget.has_trait("tooltip"):
        widget.tooltip = text
    else:
        widget.description_tooltip = text


def _esc(text: str) -> str:
    return html.escape(str(text), quote=False)


class ConfigForm:
    """Widgets for every TrainConfig field, grouped in tabs; validates on every change.

    `on_change(callback)` registers callback(form) called after each validation; `form.error` is the message of the
    first invalid field (None when the config is valid) and `form.valid` says whether Train may start.
    """

    def __init__(self, config: typing.Optional[TrainConfig] = None, cls=TrainConfig):
        self.cls = cls
        config = config or cls()
        self.fields = {s.name: _Field(s, getattr(config, s.name)) for s in config_fields(cls)}
        self.error = None
        self._listeners = []
        self._quiet = False

        # Presets: a Dropdown and an Apply button (applied on top of the current values).
        self.preset = W.Dropdown(options=list(PRESETS), description="preset", style={"description_width": "60px"},
                                 layout=W.Layout(width="240px"))
        self.apply_button = W.Button(description="Apply preset", icon="magic")
        self.apply_button.on_click(lambda _: self.apply_preset(self.preset.value))
        self.status = W.HTML(value="")

        tabs = W.Tab(children=[W.VBox([fl.box for fl in self.fields.values() if fl.group == g])
                               for g in GROUPS])
        for i, g in enumerate(GROUPS):
            tabs.set_title(i, g)  # set_title: the one spelling ipywidgets 7 and 8 share
        self.tabs = tabs
        self.widget = W.VBox([W.HBox([self.preset, self.apply_button]), tabs, self.status])
        for fl in self.fields.values():
            fl.widget.observe(self._changed, names="value")
        self.validate()

    # ---- the config ----
    @property
    def config(self) -> TrainConfig:
        """The config the form holds now, validated; raises ConfigError naming the first bad field."""
        return self._read().validate()

    @config.setter
    def config(self, cfg: TrainConfig):
        self._quiet = True
        try:
            for name, fl in self.fields.items():
                fl.set(getattr(cfg, name))
        finally:
            self._quiet = False
        self.validate()

    def _read(self) -> TrainConfig:
        return self.cls(**{name: fl.get() for name, fl in self.fields.items()})

    def apply_preset(self, name: str):
        try:
            cfg = self._read()
        except ConfigError:
            cfg = self.cls()
        self.config = apply_preset(cfg, name)
        self.status.value = f"<span style='color:#666'>preset <b>{_esc(name)}</b> applied</span>" + self.status.value

    # ---- validation ----
    @property
    def valid(self) -> bool:
        return self.error is None

    def validate(self):
        """Check the form; show the message next to the field it names; return the error text or None."""
        error = None
        try:
            cfg = self.config
            data = Path(cfg.data).expanduser()
            if not data.is_dir():
                raise ConfigError(f"data: folder {cfg.data!r} does not exist. Fix: give the path of a folder of "
                                  f"images with {cfg.caption_ext} captions.")
        except ConfigError as e:
            error = str(e)
        except Exception as e:  # a bug in a value we did not foresee: show it rather than crash the form
            error = f"{type(e).__name__}: {e}"
        self.error = error
        field = error.split(":", 1)[0].strip() if error else None
        for name, fl in self.fields.items():
            fl.error.value = (f"<span style='color:#c00'>&#9888; {_esc(error)}</span>" if name == field else "")
        if error:
            where = f" (tab <b>{self.fields[field].group}</b>)" if field in self.fields else ""
            self.status.value = f"<span style='color:#c00'>&#9888; {_esc(error)}</span>{where}"
        else:
            self.status.value = "<span style='color:#080'>&#10004; config valid</span>"
        for cb in self._listeners:
            cb(self)
        return error

    def on_change(self, callback):
        self._listeners.append(callback)

    def _changed(self, change):
        if not self._quiet:
            self.validate()

    def __getitem__(self, name):
        """The widget of field `name` (form["steps"].value = 10)."""
        return self.fields[name].widget
