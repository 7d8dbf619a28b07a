"""Untrusted photo bytes → a clean RGB image, and the sizes the pipeline works at.

Only Pillow and numpy here: the chat side may use it to check a photo before queueing it.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import warnings
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

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
# The longest side may be at most this many times the shortest. SDXL was trained on aspect buckets up to 4:1
# (2048×512; SDXL_BUCKETS below keeps the common ones, up to 2.4:1). Twice the most extreme bucket still leaves a
# 1 MP photo a short side of ~350 px and the tagger (which pads to a square) a strip of 1/8 of its input; beyond
# it a photo is a line, and a 200000×8 "photo" of a few KB would otherwise pass the pixel limit.
MAX_ASPECT = 8.0
# How far rounding the sides to multiples of 64 may take the working area above pipeline.megapixels: SDXL's own
# 1024×1024 (and its other buckets) are up to 5 % over 1 MP, and they must stay reachable at megapixels = 1.
AREA_SLACK = 0.05
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# A photo's PNG has a few chunks besides its pixel data, and encoders cut the pixel data into pieces of 8 KB or
# more (libpng's default). Pillow reads every chunk in Python and keeps the private ones: 1.7 million empty chunks
# in 20 MB cost seconds of CPU and ~200 MB per open. So a PNG may have MAX_PNG_CHUNKS chunks, plus one for every
# PNG_CHUNK_BYTES of file (a 40 MB PNG in 8 KB pieces has ~5000 and is taken), and is refused from the walk alone.
MAX_PNG_CHUNKS = 4096
PNG_CHUNK_BYTES = 8192


def _open(data: bytes, max_pixels: int) -> Image.Image:
    """Open from the header alone: refuse non-images, unsupported formats and decompression bombs early."""
    if not data:
        raise BadImage("That file is empty.")
    if data.startswith(PNG_SIGNATURE):
        for _ in png_chunks(data):  # before Pillow reads them one by one
            pass
    with _read_errors():
        image = Image.open(io.BytesIO(data))
    width, height = image.size
    if width * height > max_pixels:
        raise TooLarge(f"That image is {width}×{height} pixels; the limit is {max_pixels / 1e6:.0f} megapixels.")
    if image.format not in ACCEPTED_FORMATS:
        raise BadImage(f"{image.format or 'That'} files are not supported: send a JPEG, PNG, WebP, GIF or HEIC.")
    check_aspect(width, height)
    return image


def check_aspect(width: int, height: int) -> None:
    """Refuse a picture longer than MAX_ASPECT:1 either way (or with a side of 0), from its size alone."""
    long, short = max(width, height), min(width, height)
    if short < 1:
        raise BadImage("That image has no pixels.")
    ratio = long / short
    if ratio > MAX_ASPECT:
        shown = f"{ratio:.0f}" if ratio >= 10 else f"{ratio:.1f}"
        raise BadImage(f"This picture is {shown}:1; send one no longer than {MAX_ASPECT:g}:1.")


@contextlib.contextmanager
def _read_errors() -> Iterator[None]:
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
        orientation = _header_exif(image, data).get(0x0112, 1)
    except Exception:  # a broken EXIF block is ignored here as in decode_photo
        orientation = 1
    return (height, width) if orientation in (5, 6, 7, 8) else (width, height)


def _header_exif(image: Image.Image, data: bytes) -> Image.Exif:
    """The EXIF block without decoding pixels. Pillow's PNG getexif() decodes the whole image to reach an eXIf
    chunk after the pixel data, so for PNG the chunks are walked here instead (lengths and names only)."""
    if image.format != "PNG":
        return image.getexif()
    for kind, start, length in png_chunks(data):
        if kind == b"eXIf":
            exif = Image.Exif()
            exif.load(data[start:start + length])
            return exif
    # No eXIf chunk: what the chunks before the pixels hold (a "Raw profile type exif" text, an XMP orientation),
    # read by Pillow's generic getexif(), which loads nothing.
    return Image.Image.getexif(image)


def png_chunks(data: bytes) -> Iterator[tuple[bytes, int, int]]:
    """(type, start of its data, length) of each chunk of a PNG up to IEND, from lengths and names alone;
    BadImage once there are more than a photo has (MAX_PNG_CHUNKS, plus one per PNG_CHUNK_BYTES of file)."""
    most = MAX_PNG_CHUNKS + len(data) // PNG_CHUNK_BYTES
    position, count = len(PNG_SIGNATURE), 0
    while position + 8 <= len(data):
        count += 1
        if count > most:
            raise BadImage(f"That PNG is cut into over {most:,} pieces, far more than a picture needs; "
                           "please save it again as an ordinary PNG or JPEG and send that.")
        length = int.from_bytes(data[position:position + 4], "big")
        kind = data[position + 4:position + 8]
        yield kind, position + 8, length
        if kind == b"IEND":
            return
        position += 12 + length  # length, type, data, CRC


# A result is a worker's PNG of at most pipeline.megapixels (4 at most), plus the working size's rounding slack.
MAX_RESULT_PIXELS = int(4e6 * (1 + AREA_SLACK))


def check_result_png(data: bytes, *, max_pixels: int = MAX_RESULT_PIXELS) -> tuple[int, int]:
    """The size of a result image from its header alone; BadImage unless it is a PNG as a worker makes them: at
    most ``max_pixels``, and no more bytes than its pixels would take stored uncompressed."""
    if not data.startswith(PNG_SIGNATURE):
        raise BadImage(f"it is not a PNG ({len(data):,} bytes starting {data[:8]!r})")
    for _ in png_chunks(data):
        pass
    with _read_errors():
        width, height = Image.open(io.BytesIO(data), formats=["PNG"]).size
    if width * height > max_pixels:
        raise BadImage(f"it is {width}×{height} pixels, over {max_pixels:,}")
    if len(data) > 8 * width * height + 2**20:  # 16-bit RGBA, stored, with a megabyte of metadata
        raise BadImage(f"it is {len(data):,} bytes for {width}×{height} pixels")
    return width, height


def decode_photo(data: bytes, *, max_pixels: int, keep_pixels: int | None = None,
                 max_bytes: int | None = None) -> Image.Image:
    """Decode uploaded bytes into an upright RGB image, refusing what is not a photo or is too large.

    With ``keep_pixels``, a photo much larger than that is shrunk while it is decoded (JPEG's ``draft``, then
    Pillow's integer ``reduce``) to no less than ``keep_pixels``: the worker never needs more than a few times its
    working area, and the full-size copies of conversion and EXIF rotation would cost memory for nothing.
    With ``max_bytes``, a photo whose decoding would take more memory than that is refused (TooLarge) unread."""
    image = _open(data, max_pixels)
    with _read_errors():
        image.seek(0)  # GIF/WebP animations: the first frame
        if keep_pixels and image.format == "JPEG":
            scale = math.sqrt(keep_pixels / (image.width * image.height))
            if scale < 0.5:  # draft picks a 1/2, 1/4 or 1/8 scale no smaller than the size asked for
                image.draft("RGB", (math.ceil(image.width * scale), math.ceil(image.height * scale)))
        if max_bytes is not None and decode_bytes(image) > max_bytes:
            raise TooLarge(f"That image would take {decode_bytes(image) / 2**20:.0f} MB to open here.")
        image.load()
    if keep_pixels:
        image = _shrink(image, keep_pixels)
    try:
        image = ImageOps.exif_transpose(image)
    except Exception:  # a broken EXIF block must not cost the user their photo
        logger.info("ignoring unreadable EXIF orientation")
    return to_rgb(image)


def decode_bytes(image: Image.Image) -> int:
    """About the memory decoding an opened image takes: Pillow's buffer, 4 bytes a pixel for every multi-band mode
    (shrinking it afterwards works a band at a time and adds little)."""
    mode = image.mode
    per_pixel = 1 if mode in ("1", "L", "P") else 2 if mode.startswith("I;16") else 4
    return image.width * image.height * per_pixel


# Bounded decodes in the chat process (the Discord result's copy of the photo) take at most this much memory each
# (a 40 MP photo in any mode fits) and run one at a time on ONE thread: a burst of big photos then costs one decode,
# and the memory freed after each is reused by the next (on a new thread each time, every thread's malloc arena
# would keep its own few hundred MB).
THUMBNAIL_BUDGET = 256 * 2**20
_THUMBNAILER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="claybot-thumbnail")


def decode_thumbnail(data: bytes, *, max_pixels: int, thumb_pixels: int) -> Image.Image:
    """A small upright RGB copy of a photo (at least ``thumb_pixels`` when the photo has them), decoded under a
    memory bound and one at a time, for the chat process; TooLarge when it would need more than the budget."""
    return _THUMBNAILER.submit(decode_photo, data, max_pixels=max_pixels, keep_pixels=thumb_pixels,
                               max_bytes=THUMBNAIL_BUDGET).result()


_REDUCIBLE = frozenset({"L", "LA", "RGB", "RGBA", "CMYK", "I", "F"})  # modes Pillow's reduce() averages


def _shrink(image: Image.Image, keep_pixels: int) -> Image.Image:
    """Box-average by the largest whole factor that keeps at least ``keep_pixels``."""
    factor = math.isqrt(image.width * image.height // max(1, keep_pixels))
    if factor < 2:
        return image
    if image.mode in _REDUCIBLE:
        return image.reduce(factor)
    # Palette, 1-bit and 16-bit images: made 8-bit RGB a band of rows at a time, each band reduced at once, so the
    # full-size RGB copy never exists (a 5 KB 1-bit PNG of 40 MP would take 160 MB as RGB). Palette indices are
    # never averaged.
    width, height = image.size
    rows = factor * max(1, (1 << 20) // (width * factor))
    out = Image.new("RGB", (math.ceil(width / factor), math.ceil(height / factor)))
    out.info = dict(image.info)  # the EXIF orientation, applied after shrinking
    for top in range(0, height, rows):
        band = to_rgb(image.crop((0, top, width, min(height, top + rows))))
        out.paste(band.reduce(factor), (0, top // factor))
    return out


def to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode (RGBA, P, LA, CMYK, 16-bit, float) → 8-bit RGB; transparency becomes white."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        image = _wide_to_l(image)
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if image.mode != "RGB":
        image = image.convert("RGB")
    return image


def _wide_to_l(image: Image.Image) -> Image.Image:
    """16/32-bit and float greyscale → 8-bit L. Pillow's own conversion clips values to 255, so the range is scaled
    down instead, a band of rows at a time: whole-image copies (numpy's of the pixels, then a float one) of a 40 MP
    photo would take over 1 GB."""
    high = image.getextrema()[1]  # a single band: (low, high) as numbers
    peak = 65535.0 if image.mode.startswith("I;16") or float(high) > 255 else 255.0  # type: ignore[arg-type]
    width, height = image.size
    out = Image.new("L", image.size)
    rows = max(1, (1 << 20) // max(1, width))
    for top in range(0, height, rows):
        box = (0, top, width, min(height, top + rows))
        band = np.asarray(image.crop(box), dtype=np.float32)
        band = np.clip(band * np.float32(255.0 / peak) + np.float32(0.5), 0, 255).astype(np.uint8)
        out.paste(Image.fromarray(band, "L"), box)
    return out


# SDXL's training aspect buckets at 1 MP. With pipeline.resolution_buckets every photo snaps to one of these shapes
# (scaled to the configured megapixels), so a compiled UNet meets a handful of shapes instead of one per photo.
SDXL_BUCKETS = ((1024, 1024), (1152, 896), (896, 1152), (1216, 832), (832, 1216), (1344, 768), (768, 1344),
                (1536, 640), (640, 1536))


def working_size(width: int, height: int, megapixels: float, *, buckets: bool = False) -> tuple[int, int]:
    """The size the model works at: about ``megapixels``, the photo's aspect ratio, sides in multiples of 64.

    Never more than AREA_SLACK above the configured area, whatever the shape (each side is at least 64, so only an
    area under 64×64 gives more: 64×64)."""
    if buckets:
        aspect = width / height
        width, height = min(SDXL_BUCKETS, key=lambda b: abs(math.log(b[0] / b[1] / aspect)))
    area = megapixels * 1e6
    scale = math.sqrt(area / (width * height))
    m = SIZE_MULTIPLE
    nearest = (max(m, round(width * scale / m) * m), max(m, round(height * scale / m) * m))
    if nearest[0] * nearest[1] <= area * (1 + AREA_SLACK):
        return nearest
    # Rounding (or the 64 minimum) went over: the shape nearest the aspect ratio among those within the area.
    def sides(x: float) -> set[int]:
        return {max(m, math.floor(x / m) * m), max(m, math.ceil(x / m) * m)}

    fits = [(w, h) for w in sides(width * scale) for h in sides(height * scale) if w * h <= area]
    if fits:
        aspect = math.log(width / height)
        return min(fits, key=lambda s: (abs(math.log(s[0] / s[1]) - aspect), -s[0] * s[1]))
    # Too thin for the area: the short side at its minimum, the long side as long as the area allows.
    long = max(m, math.floor(area / m / m) * m)
    return (long, m) if width >= height else (m, long)


def output_size(width: int, height: int, megapixels: float) -> tuple[int, int]:
    """The size of the answer: about ``megapixels`` (never more) with the photo's exact aspect ratio."""
    area = megapixels * 1e6
    scale = math.sqrt(area / (width * height))
    w, h = max(1, round(width * scale)), max(1, round(height * scale))
    if w * h > area:  # rounding up on both sides went over
        w, h = max(1, math.floor(width * scale)), max(1, math.floor(height * scale))
    if w * h > area:  # the short side at its 1-pixel minimum: the long side gives way
        w, h = (max(1, math.floor(area / h)), h) if w >= h else (w, max(1, math.floor(area / w)))
    return w, h


def encode_png(image: Image.Image) -> bytes:
    """PNG bytes of an image; the same image always gives the same bytes."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=False)
    return buffer.getvalue()
