"""Push a trained run to the Hugging Face Hub: exported weights, the sample grid and a model card.

    python -m sdkit push runs/glyph --repo you/glyph-lora --dry-run /tmp/upload   # write the folder, send nothing
    python -m sdkit push runs/glyph --repo you/glyph-lora --private               # create the repo and upload
    sdkit.hub.push("runs/glyph", "you/glyph-lora", private=True)

The upload folder holds what a user downloads: the weights in the run's default formats (LoRA: kohya file for
A1111/ComfyUI + diffusers' pytorch_lora_weights.safetensors; full/DreamBooth: a diffusers pipeline; textual
inversion: the embedding; LoHa/LoKr: the LyCORIS file; hypernetwork: the .pt), `grid.png` (the newest sample grid)
and `README.md`, a model card whose YAML front matter the Hub reads (base_model, license, tags, instance_prompt).

The token comes only from the environment: HF_TOKEN, or huggingface_hub's own login (`hf auth login`, Colab's
Secrets panel). It goes to `HfApi(token=...)` and nowhere else: not to disk, not to the card, not to the output.
Local paths (your data folder, a local base model) are written as their folder names only.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path

from .data.captions import has_trigger, insert_trigger
from .data.files import write_safetensors
from .export import export
from .methods import make_method
from .models import PRESETS
from .run import Run
from .version import __version__

__all__ = ["HubError", "default_formats", "hub_token", "upload_layout", "build_upload_folder", "model_card",
           "push"]

DEFAULT_LICENSE = "creativeml-openrail-m"  # SD 1.x derivatives inherit it
LICENSES_BY_BASE = {"stabilityai/stable-diffusion-2-1-base": "openrail++"}
SDKIT_URL = "https://github.com/sdkit-course/sdkit"
_REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
TOKEN_HELP = ("Fix: create a token with write access at https://huggingface.co/settings/tokens and set it in the "
              "environment: `export HF_TOKEN=hf_...` (or `hf auth login`). On Colab: add it in the Secrets panel "
              "(the key icon) as HF_TOKEN, then `from google.colab import userdata; import os; "
              "os.environ[\"HF_TOKEN\"] = userdata.get(\"HF_TOKEN\")`. sdkit never writes the token anywhere.")


class HubError(ValueError):
    """A push that cannot go ahead as asked (no token, bad repo id, a format this run cannot export...)."""


# ---- 1. the token: environment only ---------------------------------------------------------------------------
def hub_token() -> str:
    """HF_TOKEN, else huggingface_hub's login (its token file, Colab secrets). Raises HubError when there is none."""
    from huggingface_hub import get_token
    token = os.environ.get("HF_TOKEN") or get_token()
    if not token:
        raise HubError(f"HF_TOKEN: no Hugging Face token in the environment or huggingface_hub's login. {TOKEN_HELP}")
    return token


# ---- 2. what goes where in the upload folder -------------------------------------------------------------------
def _stem(repo: str) -> str:
    return re.sub(r"[^\w.-]", "_", repo.split("/")[-1]) or "model"


def upload_layout(repo: str) -> dict:
    """format -> path under the upload folder ("." = the folder itself: a pipeline, diffusers' LoRA file)."""
    stem = _stem(repo)
    return {"kohya": f"{stem}.safetensors", "diffusers": ".", "pipeline": ".", "single-file": f"{stem}-sd.safetensors",
            "embedding": f"{stem}-embedding.safetensors", "lycoris": f"{stem}-lycoris.safetensors",
            "hypernetwork": f"{stem}.pt"}


def default_formats(run) -> tuple:
    """What `push` uploads when no format is given: the run's method says (`Method.hub_formats`)."""
    return tuple(make_method(run.config).hub_formats)


def _formats(run, formats) -> tuple:
    if formats is None:
        formats = default_formats(run)
    if isinstance(formats, str):
        formats = [f.strip() for f in formats.split(",") if f.strip()]
    known = tuple(make_method(run.config).export_formats)
    bad = [f for f in formats if f not in known]
    if bad:
        raise HubError(f"--format: {', '.join(bad)}; a {run.config.method} run exports as one or more of "
                       f"{', '.join(known)} (comma-separated). Fix: leave it out for the method's default "
                       f"({run.config.method}: {', '.join(default_formats(run))}).")
    return tuple(dict.fromkeys(formats))


def _local_paths(run) -> dict:
    """Local paths that must not be published -> what to write instead (their folder names)."""
    c = run.config
    out = {}
    for value in (c.data, c.model, c.class_data, str(run.path)):
        p = Path(value or "").expanduser()
        if not value or not (p.exists() or os.sep in value):
            continue  # empty, or a name (preset, Hub id) rather than a path
        name = p.resolve().name or value
        for text in {value, str(p), str(p.resolve())}:
            if os.sep in text and text != name:
                out[text] = name
    return dict(sorted(out.items(), key=lambda kv: -len(kv[0])))  # longest first: no partial replacements


def _strip_local_paths(path: Path, paths: dict):
    """Rewrite a .safetensors file's metadata with local paths replaced by folder names (kohya's ss_* fields carry
    the data folder and base model path)."""
    from safetensors import safe_open
    from safetensors.torch import load_file
    with safe_open(str(path), "pt") as f:
        meta = f.metadata() or {}
    clean = {}
    for k, v in meta.items():
        for old, new in paths.items():
            v = v.replace(old, new)
        clean[k] = v
    if clean != meta:
        write_safetensors(load_file(str(path)), str(path), metadata=clean)


def build_upload_folder(run, folder, repo: str, formats=None, checkpoint=None, license=None, base_model=None) -> dict:
    """Export `run` into `folder` with its sample grid and a model card. Returns {format: written path, "grid":
    path or None, "card": path}."""
    run = run if isinstance(run, Run) else Run(run)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    layout = upload_layout(repo)
    written = {}
    for fmt in _formats(run, formats):
        target = folder if layout[fmt] == "." else folder / layout[fmt]
        try:
            written[fmt] = Path(export(run, fmt, out=target, checkpoint=checkpoint))
        except ModuleNotFoundError as e:
            raise HubError(f"--format {fmt}: its exporter ({e.name}) is not part of this sdkit. Fix: choose another "
                           f"--format, or update sdkit.") from None
        if written[fmt].suffix == ".safetensors":
            _strip_local_paths(written[fmt], _local_paths(run))
    grid = run.grid()
    if grid is not None and Path(grid).is_file():
        written["grid"] = folder / "grid.png"
        shutil.copyfile(grid, written["grid"])
    else:
        written["grid"] = None
    card = model_card(run, repo, written, license=license, base_model=base_model)
    written["card"] = folder / "README.md"
    written["card"].write_text(card, encoding="utf-8")
    return written


# ---- 3. the model card ---------------------------------------------------------------------------------------
def _base_model(run, base_model=None) -> tuple:
    """(Hub id or None, what to call it in the text). A local folder or local preset has no Hub id: the Hub rejects
    a base_model that is not a model id, so it only appears in the text, by name."""
    if base_model:
        return base_model, base_model
    model = str(run.config.model)
    if model in PRESETS:
        target = PRESETS[model]["path"]
        if isinstance(target, str):
            return target, target
        return None, f"{model} (sdkit's local `{model}` pipeline, not on the Hub)"
    if not Path(model).expanduser().exists() and _REPO_ID.fullmatch(model):
        return model, model
    return None, f"a local pipeline (`{Path(model).name}`)"


def _sample_prompts(run) -> list:
    grid = run.grid()
    if grid is not None and (Path(grid).parent / "prompts.txt").is_file():
        return [p for p in (Path(grid).parent / "prompts.txt").read_text(encoding="utf-8").splitlines() if p]
    return list(run.config.sample_prompts)


def _trigger(run) -> tuple:
    """(trigger word/token, instance prompt)."""
    c = run.config
    trigger = c.token or c.trigger_token
    prompts = _sample_prompts(run)
    if c.instance_prompt:
        return trigger, c.instance_prompt
    instance = next((p for p in prompts if trigger and has_trigger(p, trigger)), None)
    if instance is None and prompts:  # the prompt as training saw it: trigger_token in front of the caption
        instance = insert_trigger(prompts[0], c.trigger_token) if c.trigger_token else prompts[0]
    return trigger, instance or ""


def _load_code(fmt: str, repo: str, path: Path, base: str, trigger: str, prompt: str) -> str:
    """diffusers code (or where to copy the file) for one exported format."""
    name = path.name
    def q(text):  # a Python string literal in double quotes
        return json.dumps(text, ensure_ascii=False)
    head = ("import torch\nfrom diffusers import StableDiffusionPipeline\n\n"
            f"pipe = StableDiffusionPipeline.from_pretrained({q(base)}, torch_dtype=torch.float16).to(\"cuda\")\n")
    tail = f"image = pipe({q(prompt)}, num_inference_steps=25).images[0]\n"
    if fmt == "diffusers":
        return head + f"pipe.load_lora_weights({q(repo)}, weight_name=\"pytorch_lora_weights.safetensors\")\n" + tail
    if fmt == "kohya":
        return (head + f"pipe.load_lora_weights({q(repo)}, weight_name={q(name)})  # the kohya file (also A1111, "
                f"ComfyUI)\n" + tail)
    if fmt == "pipeline":
        return ("import torch\nfrom diffusers import StableDiffusionPipeline\n\n"
                f"pipe = StableDiffusionPipeline.from_pretrained({q(repo)}, torch_dtype=torch.float16).to(\"cuda\")\n"
                + tail)
    if fmt == "single-file":
        return ("import torch\nfrom diffusers import StableDiffusionPipeline\n\n"
                f"pipe = StableDiffusionPipeline.from_single_file(\"https://huggingface.co/{repo}/blob/main/{name}\", "
                f"torch_dtype=torch.float16).to(\"cuda\")\n" + tail)
    if fmt == "embedding":
        token = trigger or "<concept>"
        return (head + f"pipe.load_textual_inversion({q(repo)}, weight_name={q(name)}, token={q(token)})\n" + tail)
    if fmt == "lycoris":
        return f"# copy {name} to A1111's models/Lora (1.5+ reads LoHa/LoKr) or ComfyUI's models/loras\n"
    if fmt == "hypernetwork":
        return f"# copy {name} to A1111's models/hypernetworks and pick it in Settings > Hypernetwork\n"
    return f"# {name}\n"


def model_card(run, repo: str, written: dict, license=None, base_model=None) -> str:
    """README.md for the repo: YAML front matter the Hub reads, then method, trigger, samples, usage, settings."""
    from huggingface_hub import ModelCardData
    run = run if isinstance(run, Run) else Run(run)
    c, recorded = run.config, run.recorded
    hub_base, base_text = _base_model(run, base_model)
    trigger, instance = _trigger(run)
    method = c.method
    strategy = make_method(c)  # the method's own tags, name and settings rows (LoRA DreamBooth adds "dreambooth")
    tags = ["stable-diffusion", "stable-diffusion-diffusers", "text-to-image", "diffusers", *strategy.tags(), "sdkit"]
    license = license or LICENSES_BY_BASE.get(hub_base or "", DEFAULT_LICENSE)
    data = ModelCardData(base_model=hub_base, library_name="diffusers", license=license,
                         pipeline_tag="text-to-image", tags=list(dict.fromkeys(tags)), instance_prompt=instance or None)
    formats = [f for f in written if f not in ("grid", "card")]
    base_link = f"[{hub_base}](https://huggingface.co/{hub_base})" if hub_base else base_text
    prompts = _sample_prompts(run)
    prompt = instance or (prompts[0] if prompts else "a photo")
    L = [f"# {repo.split('/')[-1]}", "",
         f"A **{strategy.title()}** trained on {base_link} with sdkit {__version__} "
         f"({run.final_step} steps).", ""]
    if trigger:
        L += [f"**Trigger:** `{trigger}` — write it in the prompt, e.g. `{instance or trigger}`.", ""]
    elif instance:
        L += [f"**Example prompt:** `{instance}`.", ""]
    if written.get("grid"):
        shown = "; prompts (rows): " + "; ".join(f"`{p}`" for p in prompts) if prompts else ""
        L += ["![samples](grid.png)", "",
              f"*Samples at step {int(Path(run.grid()).parent.name[5:])}{shown}"
              f"; seeds {', '.join(str(s) for s in c.sample_seeds)}; {c.sample_steps} denoising steps, "
              f"guidance {c.guidance_scale}.*", ""]
    L += ["## Files", "", "| file | format | loads in |", "|---|---|---|"]
    where = {"kohya": "A1111, ComfyUI, kohya; diffusers `load_lora_weights`",
             "diffusers": "diffusers `load_lora_weights`", "pipeline": "diffusers `from_pretrained`",
             "single-file": "A1111 / ComfyUI checkpoints; diffusers `from_single_file`",
             "embedding": "diffusers `load_textual_inversion`; A1111 embeddings",
             "lycoris": "A1111, ComfyUI", "hypernetwork": "A1111 hypernetworks"}
    for fmt in formats:
        p = Path(written[fmt])
        name = "model_index.json + unet/, vae/, text_encoder/, ..." if fmt == "pipeline" else (
            "pytorch_lora_weights.safetensors" if fmt == "diffusers" else p.name)
        L.append(f"| `{name}` | {fmt} | {where.get(fmt, '')} |")
    L += ["", "## Use it", ""]
    code_base = hub_base or "<the base pipeline: a diffusers folder or Hub id>"
    for fmt in formats:
        code = _load_code(fmt, repo, Path(written[fmt]), code_base, trigger, prompt).rstrip()
        L += [f"{fmt}:", "", "```python", code, "```", ""]
    rows = [("method", method), ("steps", f"{c.steps} (trained to step {run.final_step})"),
            ("learning rate", f"{c.lr:g} ({c.lr_scheduler}, warm-up {c.lr_warmup_steps})"),
            ("batch", f"{c.batch_size} x {recorded.get('num_processes', 1)} process(es) x {c.grad_accum} accumulation"
                      f" = {recorded.get('global_batch_size', c.batch_size * c.grad_accum)} images per step"),
            ("resolution", f"{c.resolution} px" if c.resolution else "the base model's native size"),
            ("mixed precision", c.mixed_precision),
            ("optimizer", c.optimizer), ("seed", c.seed)]
    rows[3:3] = strategy.card_rows()
    if run.metrics:
        rows.append(("final loss", f"{run.metrics[-1]['loss']:.4f}"))
    L += ["## Training settings", "", "| setting | value |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rows]
    data_dir = Path(c.data).expanduser().resolve()
    n = len([p for p in data_dir.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".webp")]) \
        if data_dir.is_dir() else None
    L += ["", "## Training data", "",
          f"{n if n is not None else 'An unknown number of'} images from a folder named `{data_dir.name}`"
          + (f", every caption replaced by `{c.instance_prompt}`" if c.instance_prompt else ", with their captions")
          + (f" (trigger `{c.trigger_token}` put in front)" if c.trigger_token else "") + ". The images are not "
          "part of this repository; check that you may share what the model learned from them.", "",
          "## How it was made", "",
          f"Trained and pushed with [sdkit]({SDKIT_URL}) {__version__} (`python -m sdkit push`); the run's full "
          f"settings are in the run directory's config.yaml (`python -m sdkit train --config config.yaml` reproduces "
          f"it with the same data; not uploaded, since it holds local paths). "
          f"License: {license}" + (" (inherited from Stable Diffusion 1.x)." if license == DEFAULT_LICENSE else "."),
          ""]
    return f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(L)


# ---- 4. the push -------------------------------------------------------------------------------------------------
def _network_errors() -> tuple:
    """Exceptions a Hub call raises for network, auth or permission problems (turned into a HubError)."""
    errors = [OSError]
    try:
        from huggingface_hub.errors import HfHubHTTPError
        errors.append(HfHubHTTPError)
    except ImportError:
        pass
    try:
        import httpx
        errors.append(httpx.HTTPError)
    except ImportError:
        pass
    return tuple(errors)


def push(run, repo: str, formats=None, private: bool = False, dry_run=None, checkpoint=None, license=None,
         base_model=None, api=None, commit_message=None) -> dict:
    """Export `run`, write its card and upload both to the Hub repo `repo` (created if missing).

    dry_run: a folder: write the upload folder there and stop before any network call.
    api: an object with create_repo and upload_folder (default: HfApi(token=<from the environment>)).
    Returns build_upload_folder's dict plus "url" (None for a dry run)."""
    if not _REPO_ID.fullmatch(repo or ""):
        raise HubError(f"--repo: {repo!r}; expected a Hub model id of the form user/name (or org/name). "
                       f"Fix: e.g. --repo yourname/glyph-lora.")
    run = run if isinstance(run, Run) else Run(run)
    if dry_run is not None:
        if Path(dry_run).is_dir() and any(Path(dry_run).iterdir()):
            raise HubError(f"--dry-run {dry_run}: the folder is not empty; the upload folder must hold only what "
                           f"would be uploaded. Fix: name a new folder, or delete this one first.")
        written = build_upload_folder(run, dry_run, repo, formats, checkpoint, license, base_model)
        written["url"] = None
        return written
    token = None
    if api is None:
        token = hub_token()  # before any export: fail in a second, not after minutes of writing weights
    with tempfile.TemporaryDirectory(prefix="sdkit-push-") as tmp:
        folder = Path(tmp) / _stem(repo)
        written = build_upload_folder(run, folder, repo, formats, checkpoint, license, base_model)
        if api is None:
            from huggingface_hub import HfApi
            api = HfApi(token=token)
        step = "create_repo"
        try:
            api.create_repo(repo_id=repo, repo_type="model", private=private, exist_ok=True)
            step = "upload_folder"
            api.upload_folder(repo_id=repo, repo_type="model", folder_path=str(folder),
                              commit_message=commit_message or f"sdkit {run.config.method} from run {run.path.name}")
        except _network_errors() as e:
            first = str(e).splitlines()[0][:300] if str(e) else ""
            raise HubError(f"--repo {repo}: {step} failed ({e.__class__.__name__}: {first}). Fix: check the "
                           f"network, that the token has write access (a 'write' token, or a fine-grained one with "
                           f"write permission on this namespace) and that {repo.split('/')[0]!r} is your user or an "
                           f"organization you can write to.") from None
    written["url"] = f"https://huggingface.co/{repo}"
    return written
