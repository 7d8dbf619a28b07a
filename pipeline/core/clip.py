"""A clip's frames → an H.264 MP4 that plays and loops inline in chats, within a size limit.

Torch-free (numpy, Pillow and PyAV, whose wheel ships FFmpeg with libx264): the worker encodes without the GPU, and
anything may import it. The file has no audio track (Telegram's sendAnimation then loops it like a GIF) and its index
(``moov``) comes first ("faststart"), so a chat client starts playing before the whole file is in. When the file is
over ``max_bytes``, the best quality that fits is searched for (a bisection over the CRF, between the quality
asked for and the lowest claybot sends), at full size, then at smaller sizes; what was given up is logged.
"""

from __future__ import annotations

import logging
import math
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from pipeline.core.errors import BadImage, ClaybotError

logger = logging.getLogger(__name__)

CRF_START = 20  # x264's constant rate factor: lower is better and bigger; 18–23 looks clean
CRF_MAX = 38  # past this H.264 turns to mush: a smaller picture at a sane CRF looks better
SCALES = (1.0, 0.75, 0.5, 0.35, 0.25)  # of each side, tried in turn when not even CRF_MAX fits
MIN_SIDE = 32  # px: smaller than this, a clip is not worth sending
PRESET = "medium"  # x264's speed/size trade-off; a clip costs seconds of GPU, encoding is a small part


class ClipTooLarge(ClaybotError):
    """The clip cannot be made to fit the size limit (the message says which limit)."""


@dataclass(frozen=True)
class EncodedClip:
    """An MP4 file and what it took to make it fit."""

    data: bytes
    width: int
    height: int
    frames: int  # frames in the file, each held frame counted as often as it is shown
    fps: int  # the file's frame rate
    crf: int
    attempts: int  # encodings made (1 when the first fitted)


ASPECT_SLACK = 0.05  # a clip's shape may be this far (in log ratio, ~5 %) from the picture's, for a larger clip


def clip_size(width: int, height: int, megapixels: float, multiple: int) -> tuple[int, int]:
    """The size a clip of a width×height picture is made at: sides in multiples of ``multiple`` (what the model's VAE
    and patches divide by), at most ``megapixels``, the largest such shape within ~5 % of the picture's aspect (or
    the nearest, when none is that close); one multiple a side at the least, and a picture too thin for the area
    gets a long side as long as the area allows."""
    if width < 1 or height < 1 or multiple < 1:
        raise ValueError(f"no clip size for a {width}×{height} picture in multiples of {multiple}")
    area, aspect, m = megapixels * 1e6 * (1 + 1e-9), width / height, multiple
    shapes = []
    for h in range(m, int(math.sqrt(area / aspect)) + 2 * m, m):
        for w in {max(m, math.floor(h * aspect / m) * m), max(m, math.ceil(h * aspect / m) * m)}:
            if w * h <= area:
                shapes.append((w, h))
    if not shapes:  # too thin for the area: the short side one multiple, the long side as long as the area allows
        long = max(m, math.floor(area / m / m) * m)
        return (long, m) if aspect >= 1 else (m, long)

    def error(shape: tuple[int, int]) -> float:
        return abs(math.log(shape[0] / shape[1] / aspect))

    slack = max(ASPECT_SLACK, min(error(shape) for shape in shapes))
    return max((shape for shape in shapes if error(shape) <= slack), key=lambda s: (s[0] * s[1], -error(s)))


def _check_frames(frames: Sequence[np.ndarray] | np.ndarray) -> list[np.ndarray]:
    """The frames as a list of H×W×3 uint8 arrays of one size, or a ValueError saying what is wrong."""
    frames = list(frames)
    if not frames:
        raise ValueError("a clip needs at least one frame")
    shape = frames[0].shape
    for i, frame in enumerate(frames):
        if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
            raise ValueError(f"frame {i} is {frame.dtype} {frame.shape}; frames are height×width×3 uint8 RGB")
        if frame.shape != shape:
            raise ValueError(f"frame {i} is {frame.shape[1]}×{frame.shape[0]}, frame 0 {shape[1]}×{shape[0]}")
    return frames


def _even_size(width: int, height: int, scale: float) -> tuple[int, int]:
    """The frame size at ``scale``: even sides (4:2:0 chroma halves them), at least MIN_SIDE unless the frames are
    smaller than that already."""
    def side(x: int) -> int:
        floor = min(MIN_SIDE, x - x % 2) if x >= 2 else 2
        return max(floor, int(x * scale) // 2 * 2)

    return side(width), side(height)


def _encode(frames: list[np.ndarray], size: tuple[int, int], fps: int, hold: int, crf: int, preset: str) -> bytes:
    import av

    rate = fps * hold
    # faststart moves the index to the front in a second pass that reopens the file by name: a real file it is.
    with tempfile.TemporaryDirectory(prefix="claybot-clip-") as folder:
        path = Path(folder) / "clip.mp4"
        _write(av, path, frames, size, rate, hold, crf, preset)
        return path.read_bytes()


def _write(av: Any, path: Path, frames: list[np.ndarray], size: tuple[int, int], rate: int, hold: int, crf: int,
           preset: str) -> None:
    with av.open(str(path), mode="w", format="mp4", options={"movflags": "+faststart"}) as container:
        stream = container.add_stream("libx264", rate=rate)
        stream.width, stream.height = size
        stream.pix_fmt = "yuv420p"  # what every player (and Telegram's animation check) expects
        stream.options = {"crf": str(crf), "preset": preset}
        stream.codec_context.time_base = Fraction(1, rate)
        shown = 0
        for array in frames:
            if (array.shape[1], array.shape[0]) != size:
                array = np.asarray(Image.fromarray(array).resize(size, Image.Resampling.LANCZOS))
            for _ in range(hold):  # "on twos": the same picture for two frames of the file
                frame = av.VideoFrame.from_ndarray(array, format="rgb24")
                frame.pts = shown
                frame.time_base = Fraction(1, rate)
                container.mux(stream.encode(frame))
                shown += 1
        container.mux(stream.encode(None))  # flush the frames x264 held back for look-ahead


def encode_mp4(frames: Sequence[np.ndarray] | np.ndarray, fps: int, *, hold: int = 1, max_bytes: int | None = None,
               crf: int = CRF_START, preset: str = PRESET) -> EncodedClip:
    """Encode frames (height×width×3 uint8 RGB) as an H.264 MP4 without audio, each shown ``hold`` times at
    ``fps × hold`` frames a second; over ``max_bytes``, the best quality that fits, at the largest size that fits.

    The file's size falls as the CRF rises (about half per +6), so at each size one encoding at CRF_MAX says
    whether any quality fits, and a bisection between ``crf`` and CRF_MAX finds the lowest CRF that does: at most
    2 + ⌈log2(CRF_MAX − crf)⌉ encodings (7 from CRF_START) when the full size fits at all, one more per size down."""
    if not 1 <= fps <= 240 or hold not in (1, 2, 3, 4):
        raise ValueError(f"fps must be 1–240 and hold 1–4 (got fps {fps}, hold {hold})")
    if not 0 <= crf <= CRF_MAX:
        raise ValueError(f"crf must be 0–{CRF_MAX} (got {crf})")
    if max_bytes is not None and max_bytes < 1:
        raise ValueError(f"max_bytes must be at least 1, or None for no limit (got {max_bytes})")
    checked = _check_frames(frames)
    height, width = checked[0].shape[:2]
    made: dict[tuple[tuple[int, int], int], bytes] = {}  # (size, crf) → the file: a tiny clip's sizes coincide

    def encoded(size: tuple[int, int], step_crf: int) -> bytes:
        if (size, step_crf) not in made:
            made[size, step_crf] = _encode(checked, size, fps, hold, step_crf, preset)
            logger.debug("clip: %d bytes at %d×%d, crf %d", len(made[size, step_crf]), *size, step_crf)
        return made[size, step_crf]

    def result(data: bytes, size: tuple[int, int], step_crf: int) -> EncodedClip:
        return EncodedClip(data, size[0], size[1], len(checked) * hold, fps * hold, step_crf, len(made))

    full = _even_size(width, height, 1.0)
    first = encoded(full, crf)
    if max_bytes is None or len(first) <= max_bytes:
        return result(first, full, crf)
    logger.info("clip is %d bytes at %d×%d, crf %d: over the %d-byte limit; searching for the best quality that "
                "fits", len(first), *full, crf, max_bytes)
    size = full
    for scale in SCALES:
        size = _even_size(width, height, scale)
        if len(encoded(size, CRF_MAX)) > max_bytes:
            continue  # not even the lowest quality fits at this size
        fails, fits = crf - 1, CRF_MAX  # a CRF known (or, below crf, taken) not to fit; the lowest known to fit
        while fits - fails > 1:
            middle = (fails + fits) // 2
            if len(encoded(size, middle)) <= max_bytes:
                fits = middle
            else:
                fails = middle
        data = made[size, fits]
        given_up = [f"quality: crf {crf} → {fits}"] if fits > crf else []
        if size != full:
            given_up.append(f"size: {full[0]}×{full[1]} → {size[0]}×{size[1]}")
        better = made.get((size, fits - 1))
        logger.info("clip re-encoded to fit %d bytes: %d bytes; gave up %s (%d encodings%s)", max_bytes, len(data),
                    ", ".join(given_up), len(made),
                    f"; crf {fits - 1} was {len(better)} bytes" if better is not None else "")
        return result(data, size, fits)
    raise ClipTooLarge(f"The clip does not fit in {_mib(max_bytes)} even at {size[0]}×{size[1]} and the "
                       f"lowest quality claybot sends (crf {CRF_MAX}).")


MAX_RESULT_BYTES = 50 * 1024 * 1024  # as [animate] max_mb allows


def check_result_mp4(data: bytes) -> None:
    """A cheap look at a result that says it is a clip: BadImage unless it starts as an MP4 does (an ``ftyp`` box
    of a sane length) and is no larger than a clip may be. Decoding it is the player's business."""
    size = int.from_bytes(data[:4], "big") if len(data) >= 8 else 0
    if data[4:8] != b"ftyp" or not 8 <= size <= min(len(data), 256):
        raise BadImage(f"it is not an MP4 ({len(data):,} bytes starting {data[:8]!r})")
    if len(data) > MAX_RESULT_BYTES:
        raise BadImage(f"it is {len(data):,} bytes, over {MAX_RESULT_BYTES:,}")


def _mib(size: int) -> str:
    return f"{size / 1024 / 1024:.2f} MiB" if size >= 1024 * 1024 else f"{size} bytes"
