"""An awkward and partly broken data folder, as learners' folders are. `build_corpus(root)` writes it and returns
what a correct scan must find: {"good": {relpath: expected caption or None}, "broken": {relpath: words the error
must contain}, "noise": [relpaths never used], "exif_rotated": relpath, "unreadable_effective": bool}."""
from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image


def _pattern(w=48, h=40, seed=0):
    """A picture that is not a flat color (so duplicates checks see distinct images)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w]
    a = np.stack([(xx * (3 + seed) + yy * 2) % 256, (yy * (5 + seed)) % 256, (xx * yy // (seed + 1)) % 256], -1)
    return (a + rng.integers(0, 20, a.shape)).clip(0, 255).astype(np.uint8)


def _png_with_big_header(w: int, h: int) -> bytes:
    """A valid-looking PNG whose header claims w x h pixels (a decompression bomb needs no real pixel data)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + \
        chunk(b"IEND", b"")


def build_corpus(root) -> dict:
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    good, broken, noise = {}, {}, []

    def save(name, im, caption=None, **kw):
        im.save(root / name, **kw)
        if caption is not None:
            (root / name).with_suffix(".txt").write_bytes(caption if isinstance(caption, bytes) else
                                                          caption.encode("utf-8"))

    # ---- valid but awkward -----------------------------------------------------------------------------------
    save("cmyk.jpg", Image.fromarray(_pattern(seed=1)).convert("CMYK"), "a cmyk picture")
    good["cmyk.jpg"] = "a cmyk picture"
    p = Image.fromarray(_pattern(seed=2)).convert("P", palette=Image.ADAPTIVE, colors=16)
    save("palette_transparent.png", p, "palette with transparency", transparency=0)
    good["palette_transparent.png"] = "palette with transparency"
    la = Image.merge("LA", [Image.fromarray(_pattern(seed=3)[..., 0]), Image.new("L", (48, 40), 128)])
    save("grey_alpha.png", la, "grey with alpha")
    good["grey_alpha.png"] = "grey with alpha"
    rgba = np.dstack([_pattern(seed=4), np.tile(np.linspace(0, 255, 48, dtype=np.uint8), (40, 1))])
    save("rgba.png", Image.fromarray(rgba, "RGBA"), "rgba picture")
    good["rgba.png"] = "rgba picture"
    i16 = (np.mgrid[:40, :48][1] * 1300).astype(np.uint16)
    save("sixteen_bit.png", Image.fromarray(i16), "sixteen bit")
    good["sixteen_bit.png"] = "sixteen bit"
    save("one_bit.png", Image.fromarray(_pattern(seed=5)[..., 0] > 128), "one bit")
    good["one_bit.png"] = "one bit"
    # EXIF orientation 6 (rotate 90 clockwise to display): stored 48 wide x 40 high, displayed 40 x 48
    ex = Image.Exif()
    ex[0x0112] = 6
    save("rotated.jpg", Image.fromarray(_pattern(seed=6)), "rotated by exif", exif=ex.tobytes())
    good["rotated.jpg"] = "rotated by exif"
    frames = [Image.fromarray(_pattern(seed=7 + k)).convert("P") for k in range(3)]
    frames[0].save(root / "animated.gif", save_all=True, append_images=frames[1:], duration=100, loop=0)
    (root / "animated.txt").write_text("an animation")
    good["animated.gif"] = "an animation"
    save("picture.webp", Image.fromarray(_pattern(seed=10)), "a webp")
    good["picture.webp"] = "a webp"
    save("picture_tiff.tiff", Image.fromarray(_pattern(seed=11)), "a tiff")
    good["picture_tiff.tiff"] = "a tiff"
    save("picture_bmp.bmp", Image.fromarray(_pattern(seed=12)), "a bmp")
    good["picture_bmp.bmp"] = "a bmp"
    save("UPPER.JPG", Image.fromarray(_pattern(seed=13)), "upper case extension", format="JPEG")
    good["UPPER.JPG"] = "upper case extension"
    save("café crème 01.png", Image.fromarray(_pattern(seed=14)), "unicode name")
    good["café crème 01.png"] = "unicode name"
    save("bom_crlf.png", Image.fromarray(_pattern(seed=15)), b"\xef\xbb\xbfa caption\r\nwith  CRLF \r\n")
    good["bom_crlf.png"] = "a caption with CRLF"
    save("empty_caption.png", Image.fromarray(_pattern(seed=16)), "")
    good["empty_caption.png"] = ""
    save("red_ball_(2).png", Image.fromarray(_pattern(seed=17)))  # no caption file: caption from the name
    good["red_ball_(2).png"] = "red ball"
    (root / "sub" / "deeper").mkdir(parents=True)
    save("sub/deeper/nested.png", Image.fromarray(_pattern(seed=18)), "a nested file")
    good["sub/deeper/nested.png"] = "a nested file"

    # ---- broken ----------------------------------------------------------------------------------------------
    buf = io.BytesIO()
    Image.fromarray(_pattern(64, 64, seed=19)).save(buf, format="PNG")
    (root / "truncated.png").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    broken["truncated.png"] = "truncated"
    (root / "zero.png").write_bytes(b"")
    broken["zero.png"] = "empty file"
    (root / "text.png").write_text("<html>404 Not Found</html>\n")
    broken["text.png"] = "not an image"
    os.symlink(root / "gone_missing.png", root / "dangling.png")
    broken["dangling.png"] = "broken symbolic link"
    (root / "bomb.png").write_bytes(_png_with_big_header(30000, 30000))  # 900 Mpx > 2 x PIL's 89 Mpx limit
    broken["bomb.png"] = "decompression bomb"
    locked = root / "locked.png"
    Image.fromarray(_pattern(seed=20)).save(locked)
    os.chmod(locked, 0)
    try:  # root (as in many containers) reads it anyway: then it is a good file
        locked.read_bytes()
        unreadable_effective = False
        good["locked.png"] = "locked"
    except PermissionError:
        unreadable_effective = True
        broken["locked.png"] = "permission denied"

    # ---- noise that must be ignored --------------------------------------------------------------------------
    (root / ".ipynb_checkpoints").mkdir()
    Image.fromarray(_pattern(seed=1)).save(root / ".ipynb_checkpoints" / "cmyk-checkpoint.png")
    (root / "__MACOSX").mkdir()
    (root / "__MACOSX" / "._cmyk.jpg").write_bytes(b"\x00\x05\x16\x07junk")
    (root / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (root / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0")
    Image.fromarray(_pattern(seed=21)).save(root / ".hidden.png")
    (root / ".hidden_dir").mkdir()
    Image.fromarray(_pattern(seed=22)).save(root / ".hidden_dir" / "x.png")
    noise += [".ipynb_checkpoints/cmyk-checkpoint.png", "__MACOSX/._cmyk.jpg", ".DS_Store", "Thumbs.db",
              ".hidden.png", ".hidden_dir/x.png"]
    (root / "notes.md").write_text("not an image")
    return {"good": good, "broken": broken, "noise": noise, "exif_rotated": "rotated.jpg",
            "unreadable_effective": unreadable_effective, "not_images": ["notes.md"]}
