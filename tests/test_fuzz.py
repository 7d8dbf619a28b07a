"""Untrusted input never crashes anything: photo bytes and command arguments, fuzzed with hypothesis."""

from __future__ import annotations

import io

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from bot.flow import MAX_STRENGTH, MIN_STRENGTH, UserError, parse_strength
from pipeline.errors import BadImage
from pipeline.images import decode_photo, probe_photo
from tests.conftest import photo_bytes

LIMIT = 4_000_000
SEEDS = [photo_bytes((32, 24), fmt=fmt) for fmt in ("JPEG", "PNG", "GIF", "WEBP", "BMP")]


def _check(data: bytes) -> None:
    """Either an upright RGB image no larger than the limit, or BadImage/TooLarge (TooLarge is a BadImage)."""
    try:
        size = probe_photo(data, max_pixels=LIMIT)
    except BadImage:
        size = None
    try:
        image = decode_photo(data, max_pixels=LIMIT)
    except BadImage:
        return
    assert image.mode == "RGB" and image.width * image.height <= LIMIT
    if size is not None:
        assert image.size == size  # the probe (which batches jobs) agrees with the decode


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=4096))
def test_random_bytes_never_crash_the_decoder(data):
    _check(data)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(SEEDS), st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=12),
       st.integers(0, 10_000))
def test_damaged_real_images_never_crash_the_decoder(seed, flips, cut):
    data = bytearray(seed)
    for position, value in flips:
        data[position % len(data)] = value
    _check(bytes(data[: max(1, len(data) - cut)]))


def test_a_header_claiming_huge_dimensions_is_refused_before_decoding():
    # A PNG whose header says 100000×100000: refused from the header, no 40 GB allocation attempted.
    buffer = io.BytesIO()
    Image.new("L", (1, 1)).save(buffer, format="PNG")
    data = bytearray(buffer.getvalue())
    data[16:24] = (100_000).to_bytes(4, "big") * 2  # IHDR width and height (the CRC is now wrong too)
    _check(bytes(data))


@settings(max_examples=500, deadline=None)
@given(st.text(max_size=40))
def test_any_strength_text_is_a_valid_strength_or_a_usage_message(text):
    try:
        value = parse_strength(text)
    except UserError as err:
        assert "Usage: /clay" in str(err)
        return
    assert value is None or MIN_STRENGTH <= value <= MAX_STRENGTH
