"""Untrusted input never crashes anything: photo bytes and command arguments, fuzzed with hypothesis."""

from __future__ import annotations

import asyncio
import io
import zlib

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageFile

from bot.options import UserError, parse_strength
from bot.telegram.buttons import parse_button
from bot.telegram.help import caption_pattern
from pipeline.core.errors import BadImage, TooLarge
from pipeline.core.images import decode_photo, probe_photo
from pipeline.core.jobs import MAX_SEED, MAX_STRENGTH, MIN_STRENGTH
from tests.conftest import photo_bytes

LIMIT = 4_000_000
CAPTION = caption_pattern(["clay", "clay_v2"])
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


def test_a_header_claiming_huge_dimensions_is_refused_before_decoding(monkeypatch):
    # A PNG whose header says 100000×100000: refused from the header, no 40 GB allocation attempted.
    buffer = io.BytesIO()
    Image.new("L", (1, 1)).save(buffer, format="PNG")
    data = bytearray(buffer.getvalue())
    data[16:24] = (100_000).to_bytes(4, "big") * 2  # IHDR width and height
    data[29:33] = zlib.crc32(data[12:29]).to_bytes(4, "big")  # and its CRC: a valid header, not a damaged file
    decoded = []  # every image whose pixels Pillow started to decode
    load = ImageFile.ImageFile.load
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda image: decoded.append(image.size) or load(image))

    with pytest.raises(TooLarge):
        decode_photo(bytes(data), max_pixels=LIMIT)
    with pytest.raises(TooLarge):
        probe_photo(bytes(data), max_pixels=LIMIT)
    assert decoded == []

    # the spy does see a decode: a photo of the same shape within the limit is decoded through it
    decode_photo(photo_bytes((32, 24), fmt="PNG"), max_pixels=LIMIT)
    assert decoded and set(decoded) == {(32, 24)}


@settings(max_examples=500, deadline=None)
@given(st.text(max_size=40))
def test_any_strength_text_is_a_valid_strength_or_a_usage_message(text):
    try:
        value = parse_strength(text)
    except UserError as err:
        assert "Usage: /clay" in str(err)
        return
    assert value is None or MIN_STRENGTH <= value <= MAX_STRENGTH


# -- what users type and what comes back in buttons ---------------------------------------------------------------


@settings(max_examples=500, deadline=None)
@given(st.one_of(st.text(max_size=70),
                 st.lists(st.text(max_size=12), min_size=4, max_size=4).map(lambda parts: "|".join(["c2", *parts]))))
@example("c2|clay|nan|1|")  # found by this test: a float() that is not a strength
@example("c2|clay|0.5|99999999999999999999999|")  # found by this test: a seed torch cannot take
@example("c2|clay|inf||")
@example("c2|clay|-0.5|-3|")
@example("c2|clay|0.5|7|fast")  # a valid one, so the checks below run
@example("c2|likeness|||")  # an edit picture's Again: no strength, a new seed
def test_button_data_is_a_valid_request_or_refused(data):
    try:
        style, strength, seed, speed = parse_button(data)
    except ValueError:
        return
    assert strength is None or MIN_STRENGTH <= strength <= MAX_STRENGTH  # None: an edit picture's (no strength)
    assert seed is None or 0 <= seed <= MAX_SEED
    assert style is None or style == style.strip() and "|" not in style
    assert speed is None or speed.isascii() and "|" not in speed and len(speed) <= 32


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=80))
def test_any_caption_is_a_command_for_us_with_a_valid_strength_or_not_ours(caption):
    match = CAPTION.match(caption)
    if match is None:
        return
    try:
        strength = parse_strength(match.group(3))
    except UserError as err:
        assert "Usage: /clay" in str(err)
        return
    assert strength is None or MIN_STRENGTH <= strength <= MAX_STRENGTH


@settings(max_examples=300, deadline=None)
@given(st.integers(min_value=-(2**70), max_value=2**70))
def test_any_seed_is_taken_or_refused_before_it_reaches_the_queue(seed):
    from pipeline.core.intake import take_in
    from pipeline.core.jobs import BadRequest, JobFailed
    from pipeline.core.settings import GpuSettings

    try:
        asyncio.run(take_in(GpuSettings(), b"", seed=seed))
    except BadRequest as err:
        assert "Seed" in str(err)
        assert not 0 <= seed <= MAX_SEED
        return
    except JobFailed:  # the seed was taken: only the (empty) photo was refused, after the options
        pass
    assert 0 <= seed <= MAX_SEED
