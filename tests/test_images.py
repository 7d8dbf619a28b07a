"""Untrusted bytes become an upright RGB photo, or a clear reason why not."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from pipeline.core.errors import BadImage, TooLarge
from pipeline.core.images import decode_photo, output_size, working_size
from tests.conftest import photo_bytes

LIMIT = 40_000_000


def _encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def test_exif_orientation_6_gives_a_portrait_image():
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to view
    image = decode_photo(photo_bytes((128, 96), exif=exif.tobytes()), max_pixels=LIMIT)
    assert image.size == (96, 128)


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P", "CMYK", "L", "I;16"])
def test_any_mode_becomes_rgb(mode):
    if mode == "I;16":
        source = Image.fromarray(np.full((20, 30), 65535, dtype=np.uint16))
        fmt = "PNG"
    else:
        source = Image.new("RGB", (30, 20), (10, 200, 30)).convert(mode)
        fmt = "JPEG" if mode == "CMYK" else "PNG"
    image = decode_photo(_encode(source, fmt), max_pixels=LIMIT)
    assert image.mode == "RGB" and image.size == (30, 20)
    if mode == "I;16":  # full-scale 16-bit white must stay white, not clip or go dark
        assert image.getpixel((0, 0)) == (255, 255, 255)


def test_transparency_becomes_white():
    source = Image.new("RGBA", (10, 10), (255, 0, 0, 0))
    assert decode_photo(_encode(source, "PNG"), max_pixels=LIMIT).getpixel((5, 5)) == (255, 255, 255)


def test_gif_gives_its_first_frame():
    frames = [Image.new("RGB", (16, 16), c) for c in [(255, 0, 0), (0, 0, 255)]]
    data = _encode(frames[0], "GIF", save_all=True, append_images=frames[1:])
    r, g, b = decode_photo(data, max_pixels=LIMIT).getpixel((8, 8))
    assert r > 200 and b < 50


def test_unreadable_bytes_say_it_is_not_an_image():
    with pytest.raises(BadImage, match="not an image I can read"):
        decode_photo(b"%PDF-1.7 certainly not a photo", max_pixels=LIMIT)


def test_truncated_image_says_it_is_damaged():
    data = photo_bytes((256, 256))
    with pytest.raises(BadImage, match="damaged or cut off"):
        decode_photo(data[: len(data) // 3], max_pixels=LIMIT)


def test_empty_file_is_refused():
    with pytest.raises(BadImage, match="empty"):
        decode_photo(b"", max_pixels=LIMIT)


def test_too_many_pixels_are_refused_before_decoding():
    data = photo_bytes((400, 300))
    with pytest.raises(TooLarge, match="400×300 pixels"):
        decode_photo(data, max_pixels=100_000)


def test_unsupported_format_is_named():
    data = _encode(Image.new("RGB", (8, 8)), "TIFF")
    with pytest.raises(BadImage, match="TIFF files are not supported"):
        decode_photo(data, max_pixels=LIMIT)


@pytest.mark.parametrize(("size", "mp"), [((4032, 3024), 1.0), ((3024, 4032), 1.0), ((1000, 1000), 1.0),
                                          ((128, 96), 0.0164), ((5000, 300), 1.0)])
def test_working_size_keeps_aspect_in_multiples_of_64(size, mp):
    w, h = working_size(*size, mp)
    assert w % 64 == 0 and h % 64 == 0
    assert abs(w * h / 1e6 - mp) / mp < 0.35 or min(w, h) == 64
    assert abs(w / h - size[0] / size[1]) / (size[0] / size[1]) < 0.3


def test_output_size_has_the_exact_aspect_ratio():
    w, h = output_size(4032, 3024, 1.0)
    assert abs(w / h - 4 / 3) < 0.01 and abs(w * h - 1e6) < 2e4
