"""What every queue backend checks when a job is submitted: the options, and the photo's header."""

from __future__ import annotations

import asyncio
import secrets
from dataclasses import dataclass

from pipeline.core.errors import BadImage, TooLarge
from pipeline.core.images import probe_photo
from pipeline.core.jobs import MAX_SEED, MAX_STRENGTH, MIN_STRENGTH, BadRequest, ErrorKind, Failed, StyleRequest
from pipeline.core.safety import check_rating
from pipeline.core.settings import DEFAULT_SPEED, GpuSettings

PROBE_TIMEOUT = 10.0  # seconds to read a photo's header


@dataclass(frozen=True)
class Intake:
    """A request with its defaults filled in and the size it will be stylized at."""

    style: str
    strength: float
    seed: int
    trigger_weight: float | None
    max_rating: str | None
    work_size: tuple[int, int]
    speed: str = DEFAULT_SPEED
    structure_scale: float | None = None
    identity_scale: float | None = None

    @property
    def batch_key(self) -> str:
        """Jobs with equal keys can share one pipeline call (prompts, seeds and trigger weights may differ)."""
        w, h = self.work_size
        return f"{self.style}|{self.strength:g}|{w}x{h}|{self.speed}"


def resolve_options(gpu: GpuSettings, request: StyleRequest) -> tuple[str, float]:
    """The style and strength a request asks for, defaults filled in; BadRequest for what the config lacks."""
    style = request.style or gpu.pipeline.default_style
    if style not in gpu.styles:
        raise BadRequest(f"There is no style called {style!r}; try: {', '.join(sorted(gpu.styles))}.")
    strength = gpu.styles[style].default_strength if request.strength is None else request.strength
    if not MIN_STRENGTH <= strength <= MAX_STRENGTH:
        raise BadRequest(f"Strength must be between {MIN_STRENGTH:g} and {MAX_STRENGTH:g}, not {strength:g}.")
    if request.seed is not None and not 0 <= request.seed <= MAX_SEED:
        raise BadRequest(f"Seed must be a whole number from 0 to {MAX_SEED}, not {request.seed}.")
    try:
        check_rating(request.max_rating)
    except ValueError as err:
        raise BadRequest(f"max_rating {err}") from None
    return style, round(float(strength), 4)


def resolve_speed(gpu: GpuSettings, request: StyleRequest, style: str) -> str:
    """The speed preset a request asks for (None: the style's); BadRequest naming the ones there are."""
    speed = gpu.styles[style].speed if request.speed is None else request.speed
    if speed not in gpu.speed_names():
        raise BadRequest(f"There is no speed preset called {str(speed)[:40]!r}; try: {', '.join(gpu.speed_names())}.")
    return speed


async def take_in(gpu: GpuSettings, request: StyleRequest) -> Intake | Failed:
    """Options checked (BadRequest raised) and the photo's header read off the event loop; a bad photo → Failed."""
    style, strength = resolve_options(gpu, request)
    speed = resolve_speed(gpu, request, style)
    max_pixels = int(gpu.pipeline.max_input_megapixels * 1e6)
    try:
        async with asyncio.timeout(PROBE_TIMEOUT):  # a header takes milliseconds; a stuck reader never holds a job
            size = await asyncio.to_thread(probe_photo, request.image, max_pixels=max_pixels)
    except TimeoutError:
        return Failed("That file took too long to read; please send it as a JPEG or PNG.", ErrorKind.BAD_IMAGE)
    except TooLarge as err:
        return Failed(str(err), ErrorKind.TOO_LARGE)
    except BadImage as err:
        return Failed(str(err), ErrorKind.BAD_IMAGE)
    seed = request.seed if request.seed is not None else secrets.randbelow(MAX_SEED + 1)
    return Intake(style, strength, seed, request.trigger_weight, request.max_rating, gpu.pipeline.work_size(*size),
                  speed=speed, structure_scale=request.structure_scale, identity_scale=request.identity_scale)
