"""The SDXL picture engine: a group of decoded, tagged photos sharing one batch key → one img2img call → PNGs.

The Stylizer (pipeline/gpu/stylizer.py) does the work; this engine turns each job's settled picture options into
its ``Photo``, runs the group under its time limit, halves nothing but retries one by one when the GPU runs out of
memory, holds each result to the chat's rating (img2img can add what the photo did not have) and answers.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any

from pipeline.core.jobs import Done, ErrorKind, Progress, Started, Update
from pipeline.core.kinds import PictureSpec
from pipeline.core.settings import GpuSettings
from pipeline.gpu.engine import (
    INTERNAL_REASON,
    OOM_REASON,
    DecodedJob,
    JobTimeout,
    LinkDown,
    MakeDone,
    Run,
    deliver,
    free_gpu_memory,
    is_out_of_memory,
)
from pipeline.gpu.stylizer import Photo, Stylized, Stylizer

logger = logging.getLogger(__name__)


class PictureEngine:
    """SDXL img2img with the styles' LoRAs (``engine = "sdxl"``)."""

    def __init__(self, settings: GpuSettings, tagger: Any, *, stylizer: Stylizer | None = None) -> None:
        # only the styles this engine makes: another engine's style must not stop the one LoRA being fused
        mine = {name: style for name, style in settings.styles.items() if style.engine == "sdxl"}
        if len(mine) != len(settings.styles):
            settings = settings.model_copy(update={"styles": mine})
        self.stylizer = stylizer if stylizer is not None else Stylizer(settings, tagger=tagger)

    def warm_up(self) -> None:
        self.stylizer.warm_up()

    def run(self, group: list[DecodedJob], run: Run) -> None:
        ids = tuple(job.id for job in group)
        first = group[0].job  # the group's shared style, strength, speed and working size (its batch key)
        spec = first.spec
        assert isinstance(spec, PictureSpec)
        run.send(Update(ids, Started(len(ids))))

        def on_step(step: int, total: int) -> None:
            run.send(Update(ids, Progress(step, total)))
            if time.monotonic() > run.deadline:
                raise JobTimeout

        def fail_all(reason: str, kind: ErrorKind) -> None:
            for job_id in ids:
                run.fail(job_id, reason, kind)

        photos = [_photo(job) for job in group]
        try:
            results = self.stylizer.run(photos, style=first.style, strength=spec.strength, speed=spec.speed,
                                        work_size=first.work_size, on_step=on_step, tags=[job.tags for job in group])
        except LinkDown:  # a progress message could not be sent: the connection is gone, no photo's fault
            raise
        except JobTimeout:
            fail_all(f"This took longer than the {run.limit_text()} limit and was stopped; please try again later.",
                     ErrorKind.TIMEOUT)
            return
        except Exception as err:
            if not is_out_of_memory(err):
                logger.exception("batch %s failed", list(ids))
                fail_all(INTERNAL_REASON, ErrorKind.INTERNAL)
                return
            free_gpu_memory()
            if len(group) == 1:
                logger.warning("job %s ran out of GPU memory alone", ids[0])
                fail_all(OOM_REASON, ErrorKind.TOO_LARGE)
                return
            logger.warning("batch of %d ran out of GPU memory; retrying one job at a time", len(group))
            for job in group:
                self.run([job], run)
            return

        def done(job: DecodedJob, result: Stylized) -> MakeDone:
            return lambda png, extra: Done(
                image=png, width=result.image.width, height=result.image.height, tags=result.tags,
                prompt=result.prompt, seed=result.seed, style=first.style, strength=spec.strength,
                ratings=result.ratings, timings={**job.timings, **result.timings, **extra}, speed=spec.speed,
                words=_words(job))

        deliver(run, [(job, result.image, done(job, result)) for job, result in zip(group, results, strict=True)])


def _words(job: DecodedJob) -> str:
    spec = job.job.spec
    assert isinstance(spec, PictureSpec)
    return spec.words


def _photo(job: DecodedJob) -> Photo:
    """A job's decoded photo with its own settled values: every option of its spec that ``Photo`` has a field for
    (so a new per-photo option is a PictureSpec field and a Photo field of the same name, and no line here)."""
    spec = job.job.spec
    assert isinstance(spec, PictureSpec)
    values = {f.name: getattr(spec, f.name) for f in dataclasses.fields(Photo) if hasattr(spec, f.name)}
    return Photo(job.image, job.job.seed, **values)
