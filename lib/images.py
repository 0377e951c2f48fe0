"""One image file to an RGB picture, the same way for training (lib.data) and prediction
(lib.predict): Pillow and numpy only, so prediction never needs torch.

First frame of an animation, EXIF rotation applied, any mode to RGB (transparency onto white,
16-bit scaled to 8 bits, not clipped), and a one-line reason when the file cannot be used.
"""
from __future__ import annotations

import hashlib
import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".pbm"}
RESAMPLE = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR, "nearest": Image.NEAREST,
            "lanczos": Image.LANCZOS}
ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated file is reported, not half-decoded


def load_rgb(path) -> tuple[Image.Image, str]:
    """The picture and the sha1 of the file's bytes; ValueError with the reason if unusable."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise ValueError(f"cannot read: {e.strerror or e}") from None
    if not data:
        raise ValueError("empty file")
    digest = hashlib.sha1(data).hexdigest()
    try:
        with Image.open(io.BytesIO(data)) as img:
            # Checked by hand: Pillow only warns between 1x and 2x its limit (and warnings are global).
            if img.size[0] * img.size[1] > (Image.MAX_IMAGE_PIXELS or float("inf")):
                raise Image.DecompressionBombError("too many pixels")
            img.seek(0)  # first frame of an animation
            img.load()
            return to_rgb(ImageOps.exif_transpose(img)), digest
    except Image.DecompressionBombError:
        raise ValueError("larger than Pillow's decompression-bomb limit") from None
    except UnidentifiedImageError:
        raise ValueError("not a readable image") from None
    except (OSError, SyntaxError, EOFError, ValueError) as e:
        detail = str(e).splitlines()[0][:120] if str(e) else type(e).__name__
        raise ValueError(f"corrupt or truncated: {detail}") from None


def to_rgb(img: Image.Image) -> Image.Image:
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16-bit: keep the top 8 bits, not a clipped white
        arr = np.asarray(img, dtype=np.float64)
        scale = 257.0 if arr.max() > 255 else 1.0
        img = Image.fromarray(np.clip(np.rint(arr / scale), 0, 255).astype(np.uint8))
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        background = Image.new("RGB", img.size, (255, 255, 255))
        rgba = img.convert("RGBA")
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return img.convert("RGB")


def fit_square(img: Image.Image, side: int, interpolation: str) -> np.ndarray:
    """Shorter side to ``side`` and centre-cropped square, in one resampling step (HWC uint8)."""
    resample = RESAMPLE.get(interpolation, Image.BILINEAR)
    return np.asarray(ImageOps.fit(img, (side, side), method=resample), dtype=np.uint8)
