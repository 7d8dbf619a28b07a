"""Intake: where a request becomes one settled ``Job``, in the chat process, every default decided here once.

The front ends' flow, `claybot stylize` and `claybot sweep` all come through ``take_in``; queue backends, the worker
and the journal carry the job as it is and never decide a default again.
"""

from __future__ import annotations

import asyncio
import dataclasses
import secrets

from pipeline.core.errors import BadImage, TooLarge
from pipeline.core.images import probe_photo
from pipeline.core.jobs import MAX_CLIP_FRAMES, MAX_SEED, BadRequest, ErrorKind, Failed, Job, JobFailed, Kind
from pipeline.core.settings import FRAME_STEP, AnimateSettings, GpuSettings

PROBE_TIMEOUT = 10.0  # seconds to read a photo's header
ANIMATE_OFF = "Clips are not switched on here: the operator has not set [animate] enabled = true."


async def take_in(gpu: GpuSettings, image: bytes, *, style: str | None = None, strength: float | None = None,
                  speed: str | None = None, seed: int | None = None, max_rating: str | None = None,
                  trigger_weight: float | None = None, structure_scale: float | None = None,
                  identity_scale: float | None = None, reply_to: tuple[str, str] | None = None,
                  kind: Kind = Kind.PICTURE, seconds: float | None = None, max_bytes: int = 0) -> Job:
    """The job a request asks for, every ``None`` settled from the config: BadRequest for an option the config
    does not allow, JobFailed for a photo that cannot be used (its header is read off the event loop). A clip
    (``Kind.CLIP``) plays about ``seconds`` (default: [animate] frames at its fps), in a file of at most
    ``max_bytes`` (the chat's attachment limit; 0: [animate] max_mb)."""
    clip: dict = {}
    if kind is Kind.CLIP:
        if not gpu.animate.enabled:
            raise BadRequest(ANIMATE_OFF)
        clip = {**clip_options(gpu.animate, seconds), "max_bytes": max_bytes}
    style = style or gpu.pipeline.default_style
    if style not in gpu.styles:
        raise BadRequest(f"There is no style called {style[:40]!r}; try: {', '.join(sorted(gpu.styles))}.")
    settings = gpu.styles[style]
    speed = settings.speed if speed is None else speed
    if speed not in gpu.speed_names():
        raise BadRequest(f"There is no speed preset called {speed[:40]!r}; try: {', '.join(gpu.speed_names())}.")
    # The options' own checks (Job's), before the photo is read; the working size comes from the photo.
    options = Job(
        b"", style=style, speed=speed, kind=kind, max_rating=max_rating, reply_to=reply_to, work_size=(1, 1),
        strength=round(float(settings.default_strength if strength is None else strength), 4),
        seed=secrets.randbelow(MAX_SEED + 1) if seed is None else seed,
        trigger_weight=settings.trigger_weight if trigger_weight is None else trigger_weight,
        structure_scale=settings.structure.scale if structure_scale is None else structure_scale,
        identity_scale=settings.identity.scale if identity_scale is None else identity_scale, **clip)
    max_pixels = int(gpu.pipeline.max_input_megapixels * 1e6)
    try:
        async with asyncio.timeout(PROBE_TIMEOUT):  # a header takes milliseconds; a stuck reader never holds a job
            size = await asyncio.to_thread(probe_photo, image, max_pixels=max_pixels)
    except TimeoutError:
        raise JobFailed(Failed("That file took too long to read; please send it as a JPEG or PNG.",
                               ErrorKind.BAD_IMAGE)) from None
    except TooLarge as err:
        raise JobFailed(Failed(str(err), ErrorKind.TOO_LARGE)) from None
    except BadImage as err:
        raise JobFailed(Failed(str(err), ErrorKind.BAD_IMAGE)) from None
    return dataclasses.replace(options, image=image, work_size=gpu.pipeline.work_size(*size))


def clip_options(animate: AnimateSettings, seconds: float | None) -> dict:
    """A clip's frames, fps, hold and time limit: [animate]'s, with the frame count for ``seconds`` the nearest
    the model makes (k·step + 1; with ``family = "auto"``, 8k + 1, which both families make)."""
    frames = animate.frames
    if seconds is not None:
        step = FRAME_STEP.get(animate.family, max(FRAME_STEP.values()))
        most = (MAX_CLIP_FRAMES - 1) // step * step + 1
        longest = most / animate.fps
        if not 0 < seconds <= longest:  # also refuses NaN
            raise BadRequest(f"A clip can be up to {longest:.1f} seconds long at {animate.fps} fps, not {seconds:g}.")
        frames = min(most, max(1, round(seconds * animate.fps / step)) * step + 1)
    return {"frames": frames, "fps": animate.fps, "hold": animate.hold, "time_limit": animate.timeout}
