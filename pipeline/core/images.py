"""Untrusted photo bytes → a clean RGB image, and the sizes the pipeline works at.

Only Pillow and numpy here: the chat side may use it to check a photo before queueing it.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from pipeline.core.errors import BadImage, TooLarge

logger = logging.getLogger(__name__)

try:  # HEIC/AVIF from phones; optional so a broken plugin never stops the bot
    import pillow_heif

    pillow_heif.register_heif_opener()
except Exception:  # pragma: no cover - depends on the platform's wheel
    logger.info("pillow-heif not available: HEIC/AVIF photos will be refused")

ACCEPTED_FORMATS = frozenset({"JPEG", "PNG", "WEBP", "GIF", "BMP", "MPO", "HEIF", "AVIF"})
SIZE_MULTIPLE = 64  # SDXL's UNet and VAE need sides divisible by 8 · 2^(down blocks); 64 is safe for all


def _open(data: bytes, max_pixels: int) -> Image.Image:
    """Open from the header alone: refuse non-images, unsupported formats and decompression bombs early."""
    if not data:
        raise BadImage("That file is empty.")
    with _read_errors():
        image = Image.open(io.BytesIO(data))
    width, height = image.size
    if width * height > max_pixels:
        raise TooLarge(f"That image is {width}×{height} pixels; the limit is {max_pixels / 1e6:.0f} megapixels.")
    if image.format not in ACCEPTED_FORMATS:
        raise BadImage(f"{image.format or 'That'} files are not supported: send a JPEG, PNG, WebP, GIF or HEIC.")
    return image


@contextlib.contextmanager
def _read_errors():
    """Pillow's many read errors → BadImage/TooLarge with a message for the user."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            yield
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as err:
        raise TooLarge("That image has too many pixels to work on.") from err
    except UnidentifiedImageError as err:
        raise BadImage("That file is not an image I can read.") from err
    except (OSError, SyntaxError, ValueError, EOFError) as err:
        raise BadImage("That image is damaged or cut off; please send it again.") from err


def probe_photo(data: bytes, *, max_pixels: int) -> tuple[int, int]:
    """The upright size of a photo from its header alone, no pixel decoded; raises as decode_photo does."""
    image = _open(data, max_pixels)
    width, height = image.size
    try:
        orientation = image.getexif().get(0x0112, 1)
    except Exception:  # a broken EXIF block is ignored here as in decode_photo
        orientation = 1
    return (height, width) if orientation in (5, 6, 7, 8) else (width, height)


def decode_photo(data: bytes, *, max_pixels: int) -> Image.Image:
    """Decode uploaded bytes into an upright RGB image, refusing what is not a photo or is too large."""
    image = _open(data, max_pixels)
    with _read_errors():
        image.seek(0)  # GIF/WebP animations: the first frame
        image.load()
    try:
        image = ImageOps.exif_transpose(image)
    except Exception:  # a broken EXIF block must not cost the user their photo
        logger.info("ignoring unreadable EXIF orientation")
    return to_rgb(image)


def to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode (RGBA, P, LA, CMYK, 16-bit, float) → 8-bit RGB; transparency becomes white."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        # Pillow's own conversion clips 16-bit values to 255; scale the range down instead.
        array = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if image.mode.startswith("I;16") or array.max() > 255 else 255.0
        image = Image.fromarray(np.clip(array / peak * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if image.mode != "RGB":
        image = image.convert("RGB")
    return image


# SDXL's training aspect buckets at 1 MP. With pipeline.resolution_buckets every photo snaps to one of these shapes
# (scaled to the configured megapixels), so a compiled UNet meets a handful of shapes instead of one per photo.
SDXL_BUCKETS = ((1024, 1024), (1152, 896), (896, 1152), (1216, 832), (832, 1216), (1344, 768), (768, 1344),
                (1536, 640), (640, 1536))


def working_size(width: int, height: int, megapixels: float, *, buckets: bool = False) -> tuple[int, int]:
    """The size the model works at: about ``megapixels``, the photo's aspect ratio, sides in multiples of 64."""
    if buckets:
        aspect = width / height
        width, height = min(SDXL_BUCKETS, key=lambda b: abs(math.log(b[0] / b[1] / aspect)))
    scale = math.sqrt(megapixels * 1e6 / (width * height))
    return (
        max(SIZE_MULTIPLE, round(width * scale / SIZE_MULTIPLE) * SIZE_MULTIPLE),
        max(SIZE_MULTIPLE, round(height * scale / SIZE_MULTIPLE) * SIZE_MULTIPLE),
    )


def output_size(width: int, height: int, megapixels: float) -> tuple[int, int]:
    """The size of the answer: about ``megapixels`` with the photo's exact aspect ratio."""
    scale = math.sqrt(megapixels * 1e6 / (width * height))
    return max(1, round(width * scale)), max(1, round(height * scale))


def encode_png(image: Image.Image) -> bytes:
    """PNG bytes of an image; the same image always gives the same bytes."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=False)
    return buffer.getvalue()
