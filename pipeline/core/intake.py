"""Intake: where a request becomes one settled ``Job``, in the chat process, every default decided here once.

The front ends' flow, `claybot stylize`, `claybot animate` and `claybot sweep` all come through ``take_in``; the
kind of job (``pipeline.core.kinds``) settles its own options; queue backends, the worker and the journal carry the
job as it is and never decide a default again.
"""

from __future__ import annotations

import asyncio
import dataclasses
import secrets
from collections.abc import Mapping
from typing import Any

from pipeline.core.errors import BadImage, BadRequest, TooLarge
from pipeline.core.images import probe_photo
from pipeline.core.jobs import MAX_SEED, ErrorKind, Failed, Job, JobFailed, Spec
from pipeline.core.kinds import DEFAULT_KIND, kind_of
from pipeline.core.settings import GpuSettings

PROBE_TIMEOUT = 10.0  # seconds to read a photo's header


def settle(gpu: GpuSettings, *, kind: str = DEFAULT_KIND, style: str | None = None,
           options: Mapping[str, Any] | None = None) -> tuple[str, Spec]:
    """The style and the kind's settled options of a request, without its photo: BadRequest for a kind that is
    off or unknown, a style the config lacks, or an option the kind does not allow. Cheap: admission runs it
    before anything is downloaded."""
    job_kind = kind_of(kind)
    if (reason := job_kind.enabled(gpu)) is not None:
        raise BadRequest(reason)
    style = style or gpu.pipeline.default_style
    if style not in gpu.styles:
        raise BadRequest(f"There is no style called {style[:40]!r}; try: {', '.join(sorted(gpu.styles))}.")
    return style, job_kind.settle(gpu, style, options or {})


async def take_in(gpu: GpuSettings, image: bytes, *, kind: str = DEFAULT_KIND, style: str | None = None,
                  seed: int | None = None, max_rating: str | None = None, reply_to: tuple[str, str] | None = None,
                  options: Mapping[str, Any] | None = None) -> Job:
    """The job a request asks for, every ``None`` settled from the config (``options``: the kind's own, e.g. a
    picture's strength or a clip's seconds): BadRequest for an option the config does not allow, JobFailed for a
    photo that cannot be used (its header is read off the event loop)."""
    style, spec = settle(gpu, kind=kind, style=style, options=options)
    # The options' own checks (Job's), before the photo is read; the working size comes from the photo.
    job = Job(b"", style=style, seed=secrets.randbelow(MAX_SEED + 1) if seed is None else seed, work_size=(1, 1),
              spec=spec, max_rating=max_rating, reply_to=reply_to)
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
    return dataclasses.replace(job, image=image, work_size=gpu.pipeline.work_size(*size))
