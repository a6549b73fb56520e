"""Textual inversion (Gal et al. 2022): learn new token vectors only; the UNet and the text encoder stay frozen.

    sdkit.train(TrainConfig(method="textual-inversion", token="<sks>", init_token="glyph", num_vectors=2,
                            trigger_token="sks", model="mini", data="data_samples/glyph", lr=5e-3))
    python -m sdkit export RUN --format embedding --out sks.safetensors
    pipe.load_textual_inversion("sks.safetensors", token="<sks>")

How it works here:
- the token (and, for several vectors, `<sks>_1`, `<sks>_2`, ... — diffusers' convention, which
  `load_textual_inversion` and the pipelines' prompt conversion use) is added to the tokenizer and the embedding
  table grows by that many rows;
- the vectors are one small trainable tensor; a forward hook on the token-embedding layer puts them in place of
  the new rows. Nothing else has a gradient, so no frozen row can drift (diffusers' example instead trains the
  whole table and restores the old rows after every step, with optimizer state for all 49,408 rows);
- a caption gets the token where its `trigger_token` word is (`a white sks glyph` -> `a white <sks> glyph`), or
  in front when it has neither; several vectors are written out as `<sks> <sks>_1 ...` before tokenizing.

Export (`--format embedding`): one safetensors file with `emb_params` of shape (vectors, dim): AUTOMATIC1111's
embedding layout (its prompt word is the file name) and one that diffusers' `load_textual_inversion` reads.
"""
from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import nn

from ..config import ConfigError
from ..data.files import write_safetensors
from .base import PIPELINE_EXPORTS, Method

__all__ = ["TextualInversionMethod", "TokenVectors", "write_embedding"]


class TokenVectors(nn.Module):
    """The learned vectors of the new token ids `first_id .. first_id + n - 1`, put in place by a forward hook."""

    def __init__(self, first_id: int, vectors: torch.Tensor):
        super().__init__()
        self.first_id = int(first_id)
        self.vectors = nn.Parameter(vectors.clone())

    def bake(self, text_encoder) -> None:
        """Write the vectors into the embedding table's rows and remove the hook and this module: the encoder is
        then a plain CLIPTextModel that save_pretrained writes whole (a pipeline export)."""
        emb = text_encoder.get_input_embeddings()
        with torch.no_grad():
            emb.weight[self.first_id:self.first_id + self.vectors.shape[0]] = self.vectors.to(emb.weight.dtype)
        self.handle.remove()
        del text_encoder._modules["sdkit_token_vectors"]

    def hook(self, module, inputs, output):
        ids = inputs[0]
        mask = (ids >= self.first_id) & (ids < self.first_id + self.vectors.shape[0])
        if not bool(mask.any()):
            return output
        out = output.clone()
        out[mask] = self.vectors[ids[mask] - self.first_id].to(out.dtype)
        return out


class TextualInversionMethod(Method):
    """New token vectors only (Gal et al. 2022); the UNet and the text encoder stay frozen."""
    name = "textual-inversion"
    display_name = "textual inversion"
    export_formats = {"embedding": "{name}-embedding.safetensors", **PIPELINE_EXPORTS}
    hub_formats = ("embedding",)
    hub_tags = ("textual_inversion",)
    recipe = dict(token="<sks>", init_token="glyph", num_vectors=2, trigger_token="sks", lr=5e-3)

    @classmethod
    def check_config(cls, config):
        token = config.token.strip()
        if not token:
            raise ConfigError("token: textual inversion needs the new token that names the concept. Fix: "
                              "--token '<sks>' (a string the tokenizer does not know yet).")
        if re.search(r"\s", token):
            raise ConfigError(f"token: {token!r} contains whitespace; a token is one word. Fix: e.g. '<sks>'.")

    def __init__(self, config):
        super().__init__(config)
        token = config.token.strip()
        self.token = token
        self.tokens = [token] + [f"{token}_{i}" for i in range(1, config.num_vectors)]
        self.module = None

    def trains_text_encoder(self) -> bool:
        return True  # the gradient flows through the (frozen) text encoder to the vectors

    # ---- models ----------------------------------------------------------------------------------------------
    def prepare_pipeline(self, pipe):
        """Add the token(s) to the tokenizer, grow the embedding table, install the vectors (initialized)."""
        tok, te = pipe.tokenizer, pipe.text_encoder
        if self.token in tok.get_vocab():
            raise ConfigError(f"token: {self.token!r} is already in the tokenizer's vocabulary, so its meaning would "
                              f"be overwritten. Fix: a new string such as '<{self.token.strip('<>')}-ti>'.")
        added = tok.add_tokens(self.tokens)
        ids = tok.convert_tokens_to_ids(self.tokens)
        if added != len(self.tokens) or ids != list(range(ids[0], ids[0] + len(ids))):
            raise ConfigError(f"token: could not add {self.tokens} as new consecutive tokens (got ids {ids}). Fix: "
                              f"choose a token string not already added to this tokenizer.")
        te.resize_token_embeddings(len(tok), mean_resizing=False)
        emb = te.get_input_embeddings()
        weight = emb.weight.detach().float()
        c = self.config
        if c.init_token:
            init_ids = tok.encode(c.init_token, add_special_tokens=False)
            if not init_ids or len(init_ids) > 8:
                raise ConfigError(f"init_token: {c.init_token!r} is {len(init_ids)} tokens for this tokenizer; "
                                  f"expected a word of 1-8 pieces. Fix: a common word for the concept's class "
                                  f"(e.g. glyph, dog, painting).")
            pieces = weight[init_ids]
            # one vector per piece when the counts match (kohya's way: 'glyph' = 'gly' + 'ph' -> 2 vectors);
            # otherwise every vector starts at the pieces' mean
            vectors = pieces if len(init_ids) == len(self.tokens) else pieces.mean(0).repeat(len(self.tokens), 1)
        else:
            g = torch.Generator().manual_seed(c.seed)
            vectors = torch.randn(len(self.tokens), weight.shape[1], generator=g) * weight.std()
        with torch.no_grad():  # the table's rows hold the same values (what a plain save of the encoder would keep)
            emb.weight[ids[0]:ids[0] + len(ids)] = vectors.to(emb.weight.dtype)
        self.module = TokenVectors(ids[0], vectors)
        te.add_module("sdkit_token_vectors", self.module)  # moves with the encoder (.to(device), dtype)
        self.module.handle = emb.register_forward_hook(self.module.hook)

    def prepare_models_for_count(self, unet, text_encoder):
        """Preflight (no tokenizer): the vectors as prepare_pipeline makes them, after the existing rows."""
        emb = text_encoder.get_input_embeddings()
        vectors = torch.zeros(len(self.tokens), emb.weight.shape[1], device=emb.weight.device)
        self.module = TokenVectors(emb.weight.shape[0], vectors)

    def card_rows(self):
        c = self.config
        return [("token / vectors", f"`{c.token}` / {c.num_vectors} (init `{c.init_token}`)")]

    def write_export(self, format, state, out, info):
        if format != "embedding":
            return super().write_export(format, state, out, info)
        return write_embedding(state["token_vectors"].float(), self.token, out)

    def setup(self, unet, text_encoder):
        if self.module is None:
            raise RuntimeError("textual inversion: prepare_pipeline(pipe) must run before setup()")
        unet.requires_grad_(False)
        text_encoder.requires_grad_(False)
        self.module.vectors.requires_grad_(True)
        return [{"params": [self.module.vectors], "lr": self.config.lr}]

    def merge(self, pipe) -> None:
        """Pipeline export: the trained vectors go into the embedding table's rows; the hook goes."""
        pipe.text_encoder.sdkit_token_vectors.bake(pipe.text_encoder)

    def state_dict(self, unet, text_encoder):
        return {"token_vectors": self.module.vectors.detach()}

    def load_state_dict(self, unet, text_encoder, state):
        v = state["token_vectors"]
        if v.shape != self.module.vectors.shape:
            raise ConfigError(f"textual inversion checkpoint holds {tuple(v.shape)} vectors, this run expects "
                              f"{tuple(self.module.vectors.shape)} (num_vectors x embedding size). Fix: resume with "
                              f"the num_vectors the run was trained with.")
        with torch.no_grad():
            self.module.vectors.copy_(v.to(self.module.vectors.device, self.module.vectors.dtype))

    # ---- captions ----------------------------------------------------------------------------------------------
    def with_token(self, caption: str) -> str:
        """Put the token in a caption: in place of the trigger word if it has one, else in front."""
        if self.token in caption:
            return caption
        trigger = self.config.trigger_token.strip()
        if trigger and re.search(rf"(?<!\S){re.escape(trigger)}(?!\S)", caption):
            return re.sub(rf"(?<!\S){re.escape(trigger)}(?!\S)", self.token, caption)
        return f"{self.token} {caption}".strip()

    def expand(self, caption: str) -> str:
        """`<sks>` -> `<sks> <sks>_1 ...` for several vectors (what diffusers' pipelines do with a loaded one)."""
        if len(self.tokens) == 1:
            return caption
        return re.sub(rf"{re.escape(self.token)}(?!_\d)", " ".join(self.tokens), caption)

    def convert_captions(self, captions):
        return [self.expand(self.with_token(c)) if c else c for c in captions]

    def sample_prompt(self, prompt: str) -> str:
        """Sample prompts go to a pipeline, which expands several vectors itself: only put the token in."""
        return self.with_token(prompt)


# ---- export ------------------------------------------------------------------------------------------------------
def write_embedding(vectors, token: str, out, dtype=torch.float32) -> Path:
    """Write the embedding as `{"emb_params": (n, dim)}` safetensors (AUTOMATIC1111 and diffusers read it)."""
    out = Path(out)
    if out.suffix != ".safetensors":
        out = out / f"{token.strip('<>') or 'embedding'}.safetensors"
    out.parent.mkdir(parents=True, exist_ok=True)
    write_safetensors({"emb_params": vectors.to(dtype).contiguous()}, str(out),
              metadata={"token": token, "num_vectors": str(vectors.shape[0]), "dim": str(vectors.shape[1]),
                        "format": "textual-inversion (A1111 emb_params)"})
    return out
