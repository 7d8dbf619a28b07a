"""pipeline.core.clip: frames → an H.264 MP4 a chat plays and loops inline, within a size limit.

Every file is decoded back with PyAV, as a player would: the codec, the frame count and rate, the audio track (there
must be none), the index before the data (faststart), and the pictures themselves.
"""

from __future__ import annotations

import io
import logging
import math
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from pipeline.core.clip import CRF_START, ClipTooLarge, clip_size, encode_mp4

ROOT = Path(__file__).resolve().parent.parent


def moving_square(frames: int = 9, size: tuple[int, int] = (128, 96)) -> list[np.ndarray]:
    """Smooth frames a codec can keep close: a colour gradient with a square that moves 6 px a frame."""
    width, height = size
    x = np.linspace(0, 1, width, dtype=np.float32)[None, :]
    y = np.linspace(0, 1, height, dtype=np.float32)[:, None]
    base = np.stack([200 * x + 30 + 0 * y, 160 * y + 40 + 0 * x, 120 + 0 * x + 0 * y], axis=-1)
    out = []
    for i in range(frames):
        frame = base.copy()
        left = 8 + 6 * i
        frame[height // 4: height // 4 + 24, left: left + 24] = (240, 230, 40)
        out.append(frame.round().astype(np.uint8))
    return out


def decode(data: bytes) -> tuple[av.video.stream.VideoStream, list[np.ndarray], int]:
    """The video stream, its decoded frames (RGB) and the number of audio streams of an MP4 file."""
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(stream)]
        return stream, frames, len(container.streams.audio)


def mean_error(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float32) - b.astype(np.float32)).mean())


def test_clip_is_an_h264_mp4_without_audio_with_every_frame_at_the_rate_asked():
    frames = moving_square(9)
    clip = encode_mp4(frames, fps=8)

    stream, decoded, audio_streams = decode(clip.data)
    assert stream.codec_context.name == "h264"
    assert stream.codec_context.pix_fmt == "yuv420p"
    assert stream.average_rate == 8
    assert len(decoded) == 9 == clip.frames
    assert audio_streams == 0  # Telegram's sendAnimation loops an MP4 only when it has no sound
    assert (decoded[0].shape[1], decoded[0].shape[0]) == (clip.width, clip.height) == (128, 96)
    # faststart: the index comes before the data, so a chat client plays it before the whole file is in
    assert 0 < clip.data.find(b"moov") < clip.data.find(b"mdat")


def test_first_frame_is_the_picture_and_the_square_moves():
    frames = moving_square(9)
    _, decoded, _ = decode(encode_mp4(frames, fps=8).data)
    assert mean_error(decoded[0], frames[0]) < 3.0
    assert mean_error(decoded[0], frames[4]) > 4 * mean_error(decoded[0], frames[0])  # not just any frame


def test_on_twos_shows_each_frame_twice_at_twice_the_rate():
    frames = moving_square(9)
    clip = encode_mp4(frames, fps=12, hold=2)

    stream, decoded, _ = decode(clip.data)
    assert stream.average_rate == 24 and clip.fps == 24
    assert len(decoded) == 18 == clip.frames
    for i, frame in enumerate(frames):
        first, second = decoded[2 * i], decoded[2 * i + 1]
        assert mean_error(first, frame) < 3.0 and mean_error(second, frame) < 3.0, i
    assert mean_error(decoded[0], decoded[2]) > 1.0  # the picture changes every second frame, not every frame


def panned_photo(frames: int = 9, size: tuple[int, int] = (256, 192)) -> list[np.ndarray]:
    """A real photo (detail costs bytes, as in a clip), panned 4 px a frame."""
    photo = Image.open(ROOT / "examples" / "photo.jpg").convert("RGB")
    width, height = size
    return [np.asarray(photo.crop((4 * i, 0, 4 * i + width, height))) for i in range(frames)]


def test_a_clip_over_the_limit_is_encoded_again_until_it_fits_and_says_so(caplog):
    frames = panned_photo(17)
    full = encode_mp4(frames, fps=8)
    assert full.attempts == 1 and full.crf == CRF_START
    limit = len(full.data) // 3

    with caplog.at_level(logging.INFO, logger="pipeline.core.clip"):
        clip = encode_mp4(frames, fps=8, max_bytes=limit)

    assert len(clip.data) <= limit
    assert clip.attempts > 1 and (clip.crf > CRF_START or clip.width < 256)
    assert f"re-encoded to fit {limit} bytes" in caplog.text
    _, decoded, _ = decode(clip.data)
    assert len(decoded) == 17  # still the whole clip


def grainy(frames: int = 9, size: tuple[int, int] = (128, 96)) -> list[np.ndarray]:
    """Frames full of film grain (noise a codec cannot predict): their size falls steadily with each CRF step."""
    rng = np.random.default_rng(7)
    width, height = size
    x = np.linspace(0, 1, width)[None, :, None]
    y = np.linspace(0, 1, height)[:, None, None]
    base = np.concatenate([180 * x + 40 + 0 * y, 150 * y + 50 + 0 * x, 120 + 0 * x + 0 * y], axis=-1)
    return [np.clip(base + rng.normal(0, 40, base.shape), 0, 255).astype(np.uint8) for _ in range(frames)]


def test_a_grainy_clip_over_the_limit_keeps_the_best_quality_that_fits_not_the_lowest(caplog):
    # issue 31, item 5: CRF 20 → 32 → 38 in big steps left a grainy clip at crf 38, seven times under the limit
    frames = grainy()
    limit = len(encode_mp4(frames, fps=8, crf=33).data)  # somewhere between the ladder's old steps

    with caplog.at_level(logging.INFO, logger="pipeline.core.clip"):
        clip = encode_mp4(frames, fps=8, max_bytes=limit)

    assert len(clip.data) <= limit and (clip.width, clip.height) == (128, 96)
    assert CRF_START < clip.crf <= 33
    assert len(encode_mp4(frames, fps=8, crf=clip.crf - 1).data) > limit  # one step better would not fit
    assert clip.attempts <= 7  # a bisection, not every CRF in turn
    line = next(r.getMessage() for r in caplog.records if "re-encoded to fit" in r.getMessage())
    assert f"gave up quality: crf {CRF_START} → {clip.crf}" in line and "crf " in line


def test_a_clip_too_large_at_full_size_keeps_the_best_quality_that_fits_a_size_smaller():
    frames = grainy(size=(256, 192))
    limit = len(encode_mp4(frames, fps=8, crf=38).data) - 1  # not even the lowest quality fits at full size

    clip = encode_mp4(frames, fps=8, max_bytes=limit)

    assert len(clip.data) <= limit and (clip.width, clip.height) == (192, 144)  # the next size down
    if clip.crf > CRF_START:  # one step better at that size would not fit
        resized = [np.asarray(Image.fromarray(f).resize((192, 144), Image.Resampling.LANCZOS)) for f in frames]
        assert len(encode_mp4(resized, fps=8, crf=clip.crf - 1).data) > limit


def test_a_clip_that_cannot_fit_fails_naming_the_limit():
    with pytest.raises(ClipTooLarge, match="does not fit in 100 bytes"):
        encode_mp4(moving_square(5), fps=8, max_bytes=100)


@pytest.mark.parametrize(("size", "expected"), [((33, 17), (32, 16)), ((2, 2), (2, 2)), ((5, 3), (4, 2))])
def test_odd_and_tiny_frames_are_encoded_at_even_sides(size, expected):
    frames = [np.full((size[1], size[0], 3), 128, np.uint8)] * 3
    clip = encode_mp4(frames, fps=4)
    _, decoded, _ = decode(clip.data)
    assert (clip.width, clip.height) == expected
    assert decoded[0].shape[:2] == (expected[1], expected[0]) and len(decoded) == 3


@pytest.mark.parametrize(("frames", "message"), [
    ([], "at least one frame"),
    ([np.zeros((8, 8, 3), np.float32)], "uint8"),
    ([np.zeros((8, 8), np.uint8)], "height×width×3"),
    ([np.zeros((8, 8, 3), np.uint8), np.zeros((8, 16, 3), np.uint8)], "frame 1 is 16×8"),
])
def test_frames_that_are_not_a_clip_are_refused(frames, message):
    with pytest.raises(ValueError, match=message):
        encode_mp4(frames, fps=8)


@pytest.mark.parametrize(("kwargs", "message"), [({"fps": 0}, "fps"), ({"fps": 8, "hold": 5}, "hold"),
                                                 ({"fps": 8, "crf": 51}, "crf"),
                                                 ({"fps": 8, "max_bytes": 0}, "max_bytes")])
def test_settings_out_of_range_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        encode_mp4(moving_square(2), **kwargs)


@pytest.mark.parametrize(("picture", "megapixels", "multiple"), [
    ((640, 480), 0.4, 32), ((480, 640), 0.4, 32), ((1280, 720), 0.9, 32), ((1000, 1000), 0.4, 16),
    ((8000, 1000), 0.4, 32), ((1000, 8000), 0.4, 32), ((100, 100), 0.4, 32), ((128, 64), 0.006, 32),
    ((3000, 2000), 4.0, 16),
])
def test_clip_size_keeps_the_aspect_within_the_area_in_the_multiples_asked(picture, megapixels, multiple):
    width, height = clip_size(*picture, megapixels, multiple)
    assert width % multiple == 0 and height % multiple == 0
    assert width * height <= megapixels * 1e6
    assert abs(math.log(width / height / (picture[0] / picture[1]))) <= 0.05
    # as large as that allows: one multiple more on both sides would be over the area or off the aspect
    assert (width + multiple) * (height + multiple) > megapixels * 1e6 or \
        abs(math.log((width + multiple) / (height + multiple) / (picture[0] / picture[1]))) > 0.05


def test_clip_size_examples():
    assert clip_size(1280, 704, 1280 * 704 / 1e6, 32) == (1280, 704)  # Wan 2.2's own size stays
    assert clip_size(1024, 768, 0.4, 32) == (704, 544)
    assert clip_size(128, 64, 0.006, 32) == (64, 32)  # 2:1 at 2048 px, not 96×32 (3:1) at 3072
    assert clip_size(4000, 3000, 0.0005, 32) == (32, 32)  # less than one multiple squared: the smallest
    assert clip_size(1000, 8000, 0.0005, 32) == (32, 32)
    assert clip_size(800, 100, 0.006, 32) == (160, 32)  # 8:1 does not fit 6000 px² in 32s: as long as it can
