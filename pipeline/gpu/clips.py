"""The clip engine (``engine = "animate"``): a clip job (a picture, decoded and tagged by the worker loop) → an MP4.

The worker loop (``pipeline.gpu.worker``) decodes every job of a batch and tags it once (the SFW gate on the
picture); each clip then goes here, one at a time: the Animator makes its frames with per-step Progress under the
job's time limit, a few frames spread over the clip are rated as a picture is (the SFW gate on what the model made),
pipeline.core.clip encodes them within the job's ``max_bytes`` (``[animate] max_mb`` or the chat's attachment
limit, when smaller), and the answer is a ``Done`` whose ``media`` says it holds an MP4.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from pipeline.core.clip import ClipTooLarge, encode_mp4
from pipeline.core.jobs import MP4, Done, ErrorKind, Failed, Progress, Started, Update
from pipeline.core.kinds import ClipSpec
from pipeline.core.safety import CLIP_REFUSED, over_limit, rated_frames, worst
from pipeline.core.settings import GpuSettings
from pipeline.gpu.engine import TAG_REASON, DecodedJob, LinkDown, Run, free_gpu_memory, is_out_of_memory

if TYPE_CHECKING:
    from pipeline.gpu.animate import Animator

logger = logging.getLogger(__name__)

CLIP_REASON = "Something went wrong while making your clip; please try again."
CLIP_OOM_REASON = "The GPU ran out of memory on this clip; please try a shorter one or a smaller picture."
CLIP_ENCODE_REASON = "Your clip was made but could not be saved as a video; please try again."


class ClipEngine:
    """Image-to-video (``[animate]``): each clip of a group, one at a time, each a GPU's worth."""

    def __init__(self, settings: GpuSettings, tagger: Any, *, animator: Animator | None = None) -> None:
        from pipeline.gpu.animate import Animator

        self.settings = settings
        self.animator = animator if animator is not None else Animator(settings)

    def warm_up(self) -> None:
        """Nothing: a throw-away clip would cost as much as a real one."""

    def run(self, group: list[DecodedJob], run: Run) -> None:
        for job in group:
            run_clip(self.settings, self.animator, job, run)


def run_clip(settings: GpuSettings, animator: Animator, job: DecodedJob, run: Run) -> None:
    """Animate one decoded, tagged picture and answer its job: Started, Progress per step, then Done or Failed
    (past ``run.deadline``, the batch's time limit from its start, stopped between two steps)."""
    from pipeline.gpu.animate import ClipLengthError, ClipTimeout, motion_prompt
    from pipeline.gpu.prompt import prompt_tags

    ids, spec = (job.id,), job.job.spec
    assert isinstance(spec, ClipSpec)
    style = settings.styles[job.job.style]
    tags = prompt_tags(job.tags, settings.tagger, style)  # what is in the picture, as a picture's prompt

    def fail(reason: str, kind: ErrorKind) -> None:
        run.send(Update(ids, Failed(reason, kind)))

    def on_step(step: int, total: int) -> None:
        run.send(Update(ids, Progress(step, total)))

    run.send(Update(ids, Started(1)))
    try:
        clip = animator.run(job.image, prompt=motion_prompt(style, tags), seed=job.job.seed,
                            negative_prompt=style.animate.negative_prompt, on_step=on_step,
                            time_limit=max(0.0, run.deadline - time.monotonic()), frames=spec.frames, fps=spec.fps,
                            hold=spec.hold)
    except LinkDown:  # a progress message could not be sent: the connection is gone, no picture's fault
        raise
    except ClipTimeout:  # its message counts from the clip's start; the user's limit counts from the batch's
        fail(f"This clip took longer than the {run.limit_text()} limit and was stopped; please try again later.",
             ErrorKind.TIMEOUT)
        return
    except ClipLengthError as err:
        fail(str(err), ErrorKind.INTERNAL)
        return
    except Exception as err:
        if is_out_of_memory(err):
            free_gpu_memory()
            logger.warning("clip %s ran out of GPU memory", job.id)
            fail(CLIP_OOM_REASON, ErrorKind.TOO_LARGE)
        else:
            logger.exception("clip %s failed", job.id)
            fail(CLIP_REASON, ErrorKind.INTERNAL)
        return
    started = time.perf_counter()
    frame_ratings = _frame_ratings(run, clip.frames, clip.fps, job.id)
    check_s = time.perf_counter() - started
    max_rating = job.job.max_rating
    if frame_ratings is None and max_rating is not None:  # a clip that cannot be checked is not sent
        fail(TAG_REASON, ErrorKind.INTERNAL)
        return
    if any(over_limit(ratings, max_rating) for ratings in frame_ratings or []):
        logger.info("clip %s: a frame was over the chat's rating limit %s; not sent", job.id, max_rating)
        fail(CLIP_REFUSED, ErrorKind.NOT_ALLOWED)
        return
    ratings = worst([job.tags.ratings, *(frame_ratings or [])])
    started = time.perf_counter()
    try:
        encoded = encode_mp4(clip.frames, clip.fps, hold=clip.hold,
                             max_bytes=spec.max_bytes or animator.settings.max_bytes)
    except ClipTooLarge as err:
        fail(str(err), ErrorKind.TOO_LARGE)
        return
    except Exception:
        logger.exception("clip %s could not be encoded", job.id)
        fail(CLIP_ENCODE_REASON, ErrorKind.INTERNAL)
        return
    timings = {**job.timings, **clip.timings, "check": check_s, "encode": time.perf_counter() - started}
    run.send(Update(ids, Done(
        image=encoded.data, width=encoded.width, height=encoded.height, tags=tags, prompt=clip.prompt, seed=clip.seed,
        style=job.job.style, ratings=ratings, timings=timings, media=MP4)))


def _frame_ratings(run: Run, frames: Any, fps: int, job_id: str) -> list[dict[str, float]] | None:
    """The tagger's rating scores of the checked frames; None when one of them cannot be rated."""
    from PIL import Image

    picks = rated_frames(len(frames), fps)  # one frame per 0.5 s at most, five at least
    tags = run.tag([Image.fromarray(frames[i]) for i in picks], [job_id] * len(picks))
    if any(frame_tags is None for frame_tags in tags):
        return None
    return [frame_tags.ratings for frame_tags in tags]
