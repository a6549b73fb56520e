"""What AUTOMATIC1111's and ComfyUI's LoRA loaders do with a kohya-layout file, written out for the tests: they find
each file module by matching its name against the model's modules (kohya naming), and a `.diff` tensor is added
to the weight as it is (A1111's "full" network module, ComfyUI's "diff" patch): W + strength x diff."""
from sdkit.methods.kohya import kohya_name


def kohya_to_modules(kohya: dict, unet, text_encoder) -> dict:
    """{kohya module name: (part, module path)} found by matching names against the models' modules, the way
    A1111 and ComfyUI load a file. Raises KeyError naming every kohya module that matches no model module."""
    table = {kohya_name(n, "unet"): ("unet", n) for n, _ in unet.named_modules() if n}
    table.update({kohya_name(n, "text_encoder"): ("text_encoder", n) for n, _ in text_encoder.named_modules() if n})
    names = sorted({k.split(".")[0] for k in kohya})
    missing = [n for n in names if n not in table]
    if missing:
        raise KeyError(f"{len(missing)} kohya module(s) match no module of the model: {missing[:5]}")
    return {n: table[n] for n in names}


def apply_diff_file(tensors: dict, unet, text_encoder, strength: float = 1.0) -> int:
    """Add every `<name>.diff` of the file to its module's weight (shape must match, as both loaders require);
    returns how many modules were patched. Any other key in the file is an error (nothing may be left over)."""
    leftover = [k for k in tensors if not k.endswith(".diff")]
    if leftover:
        raise KeyError(f"keys a diff loader would not consume: {leftover[:5]}")
    models = {"unet": unet, "text_encoder": text_encoder}
    found = kohya_to_modules(tensors, unet, text_encoder)
    for name, (part, path) in found.items():
        weight = models[part].get_submodule(path).weight
        diff = tensors[f"{name}.diff"]
        if diff.shape != weight.shape:
            raise ValueError(f"{name}: diff {tuple(diff.shape)} does not fit weight {tuple(weight.shape)}")
        weight.data += strength * diff.to(weight.dtype)
    return len(found)
