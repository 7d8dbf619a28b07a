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

from pipeline.core.images import encode_png
from pipeline.core.jobs import Done, ErrorKind, Progress, Started, Update
from pipeline.core.kinds import PictureSpec
from pipeline.core.safety import OUTPUT_REFUSED, over_limit
from pipeline.core.settings import GpuSettings
from pipeline.gpu.engine import (
    TAG_REASON,
    DecodedJob,
    JobTimeout,
    LinkDown,
    Run,
    free_gpu_memory,
    is_out_of_memory,
)
from pipeline.gpu.stylizer import Photo, Stylizer

logger = logging.getLogger(__name__)

INTERNAL_REASON = "Something went wrong while making your clay picture; please try again."
OOM_REASON = "The GPU ran out of memory on this photo; please try a smaller one."
ENCODE_REASON = "Your clay picture was made but could not be saved; please try again."


class PictureEngine:
    """SDXL img2img with the styles' LoRAs (``engine = "sdxl"``)."""

    def __init__(self, settings: GpuSettings, tagger: Any, *, stylizer: Stylizer | None = None) -> None:
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

        # The result is held to the same rating limit as the photo: img2img can add what the photo did not have.
        started = time.perf_counter()
        checked = [job.job.max_rating is not None for job in group]
        to_check = [(result.image, job.id) for job, result, check in zip(group, results, checked, strict=True)
                    if check]
        output_tags = iter(run.tag([image for image, _ in to_check], [i for _, i in to_check]) if to_check else [])
        check_s = (time.perf_counter() - started) / len(group)
        for job, result, check in zip(group, results, checked, strict=True):
            max_rating = job.job.max_rating
            job_tags = next(output_tags) if check else None
            if check and job_tags is None:  # a result that cannot be checked is not sent: the chat asked for it
                run.fail(job.id, TAG_REASON, ErrorKind.INTERNAL)
                continue
            if job_tags is not None and over_limit(job_tags.ratings, max_rating):  # not None: checked
                logger.info("job %s: the result was over the chat's rating limit %s; not sent", job.id, max_rating)
                run.fail(job.id, OUTPUT_REFUSED, ErrorKind.NOT_ALLOWED)
                continue
            started = time.perf_counter()
            try:
                png = encode_png(result.image)
            except Exception:
                logger.exception("job %s: the result could not be encoded", job.id)
                run.fail(job.id, ENCODE_REASON, ErrorKind.INTERNAL)
                continue
            timings = {**job.timings, **result.timings, "check": check_s, "encode": time.perf_counter() - started}
            run.send(Update((job.id,), Done(
                image=png, width=result.image.width, height=result.image.height, tags=result.tags,
                prompt=result.prompt, seed=result.seed, style=first.style, strength=spec.strength,
                ratings=result.ratings, timings=timings, speed=spec.speed)))


def _photo(job: DecodedJob) -> Photo:
    """A job's decoded photo with its own settled values: every option of its spec that ``Photo`` has a field for
    (so a new per-photo option is a PictureSpec field and a Photo field of the same name, and no line here)."""
    spec = job.job.spec
    assert isinstance(spec, PictureSpec)
    values = {f.name: getattr(spec, f.name) for f in dataclasses.fields(Photo) if hasattr(spec, f.name)}
    return Photo(job.image, job.job.seed, **values)
