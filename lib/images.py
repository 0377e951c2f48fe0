"""One image file to an RGB picture, the same way for training (lib.train.data) and prediction
(lib.ship.predict): Pillow and numpy only, so prediction never needs torch.

First frame of an animation, EXIF rotation applied, any mode to RGB (transparency onto white,
16-bit scaled to 8 bits, not clipped), and a one-line reason when the file cannot be used.
"""
from __future__ import annotations

import hashlib
import io
import os
import stat

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".pbm"}
RESAMPLE = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR, "nearest": Image.NEAREST,
            "lanczos": Image.LANCZOS}
ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated file is reported, not half-decoded
# Files are read whole into memory. An uncompressed 8-bit RGB TIFF at Pillow's decompression-bomb limit
# (89 Mpx) is 268 MB; anything over this cap is a mistake (a disk image, a video renamed), not a photo.
MAX_FILE_BYTES = 512 * 2**20
KINDS = {stat.S_ISFIFO: "a named pipe (FIFO)", stat.S_ISCHR: "a character device", stat.S_ISBLK: "a block device",
         stat.S_ISSOCK: "a socket", stat.S_ISDIR: "a folder"}


def unusable_file(path, st: os.stat_result | None = None) -> str | None:
    """Why ``path`` (symlinks followed) cannot be an image file, or None. A FIFO blocks its reader for
    ever and /dev/zero never ends, whatever their names: only regular files under the size cap are read."""
    try:
        st = st or os.stat(path)
    except OSError as e:
        return f"cannot read: {e.strerror or e}"
    if not stat.S_ISREG(st.st_mode):
        kind = next((name for test, name in KINDS.items() if test(st.st_mode)), "not a regular file")
        return f"not a regular file: {kind}"
    if st.st_size > MAX_FILE_BYTES:
        return f"larger than the {MAX_FILE_BYTES // 2**20} MB cap of an image file ({st.st_size / 2**20:.0f} MB)"
    return None


def read_image_file(path) -> bytes:
    """The bytes of a regular file under the size cap; ValueError with the reason otherwise. Opened
    without blocking and checked on the open file: a FIFO put in place after the folder was listed
    cannot hang the run either."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as e:
        raise ValueError(f"cannot read: {e.strerror or e}") from None
    with os.fdopen(fd, "rb") as fh:
        why = unusable_file(path, os.fstat(fd))
        if why:
            raise ValueError(why)
        try:
            data = fh.read(MAX_FILE_BYTES + 1)
        except OSError as e:
            raise ValueError(f"cannot read: {e.strerror or e}") from None
    if len(data) > MAX_FILE_BYTES:   # it grew after the check
        raise ValueError(f"larger than the {MAX_FILE_BYTES // 2**20} MB cap of an image file")
    return data


def load_rgb(path) -> tuple[Image.Image, str]:
    """The picture and the sha1 of the file's bytes; ValueError with the reason if unusable."""
    data = read_image_file(path)
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
