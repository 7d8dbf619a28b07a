"""The worker's clip path: one ``Kind.CLIP`` job (a picture, decoded and tagged by the worker loop) → an MP4 Done.

The worker loop (``pipeline.gpu.worker``) decodes every job of a batch and tags it once (the SFW gate on the
picture); a clip then goes here, one at a time: the Animator makes its frames with per-step Progress under the
job's time limit, a few frames spread over the clip are rated as a picture is (the SFW gate on what the model made),
pipeline.core.clip encodes them within ``[animate] max_mb`` (or the job's ``max_bytes``, the chat's attachment
limit, when smaller), and the answer is a ``Done`` whose ``media`` says it holds an MP4.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from pipeline.core.clip import ClipTooLarge, encode_mp4
from pipeline.core.jobs import MP4, Done, ErrorKind, Failed, Progress, Started, Update
from pipeline.core.safety import CLIP_REFUSED, over_limit, rated_frames, worst

if TYPE_CHECKING:
    from collections.abc import Callable

    from pipeline.core.jobs import Message
    from pipeline.core.settings import GpuSettings
    from pipeline.gpu.animate import Animator
    from pipeline.gpu.worker import DecodedJob

logger = logging.getLogger(__name__)

NO_ANIMATOR_REASON = "This claybot's picture engine makes no clips (its [animate] is not enabled); ask its operator."
CLIP_REASON = "Something went wrong while making your clip; please try again."
CLIP_OOM_REASON = "The GPU ran out of memory on this clip; please try a shorter one or a smaller picture."
CLIP_ENCODE_REASON = "Your clip was made but could not be saved as a video; please try again."


class ClipTagger:
    """What a clips-only worker (``queue.worker_kinds = ["clip"]``) keeps of the picture models: the tagger, which
    rates a clip's picture and frames and names what is in it; not SDXL, whose many GB its GPU is spared. It stands
    in for the Stylizer in the worker loop, which asks it only for ``settings`` and ``tagger`` for a clip."""

    def __init__(self, settings: GpuSettings) -> None:
        from pipeline.core import models
        from pipeline.core.models import TAGGER_FILES
        from pipeline.gpu.stylizer import pick_device, pick_dtype
        from pipeline.gpu.tagger import Tagger

        self.settings = settings
        self.device = pick_device(settings.pipeline.device)
        self.dtype = pick_dtype(settings.pipeline.dtype, self.device)
        folder = models.resolve(settings.tagger.model, "tagger.model", models.ModelStore.of(settings.pipeline),
                                allow_patterns=TAGGER_FILES)
        self.tagger = Tagger(folder, settings.tagger, use_cuda=self.device.type == "cuda")
        logger.info("clips only: loaded the tagger on %s, not the picture models", self.device)

    def run(self, *args: object, **kwargs: object) -> list:
        """A picture reached a clips-only worker (an entry written by hand or by another version): it fails."""
        raise RuntimeError("this worker serves clips only (queue.worker_kinds) and has no picture models")

    def warm_up(self) -> None:
        """Nothing to warm up: the tagger has no lazy start worth a throw-away run."""


def run_clip(stylizer, animator: Animator, job: DecodedJob, timeout: float, deadline: float,
             send: Callable[[Message], None]) -> None:
    """Animate one decoded, tagged picture and answer its job: Started, Progress per step, then Done or Failed
    (past ``deadline``, the batch's ``timeout`` seconds from its start, stopped between two steps)."""
    from pipeline.gpu.animate import ClipLengthError, ClipTimeout, motion_prompt
    from pipeline.gpu.prompt import prompt_tags
    from pipeline.gpu.worker import TAG_REASON, _free_gpu_memory, _is_out_of_memory, _LinkDown, limit_text

    ids, spec = (job.id,), job.task.job
    style = stylizer.settings.styles[spec.style]
    tags = prompt_tags(job.tags, stylizer.settings.tagger, style)  # what is in the picture, as a picture's prompt

    def fail(reason: str, kind: ErrorKind) -> None:
        send(Update(ids, Failed(reason, kind)))

    def on_step(step: int, total: int) -> None:
        send(Update(ids, Progress(step, total)))

    send(Update(ids, Started(1)))
    try:
        clip = animator.run(job.photo.image, prompt=motion_prompt(style, tags), seed=spec.seed,
                            negative_prompt=style.animate.negative_prompt, on_step=on_step,
                            time_limit=max(0.0, deadline - time.monotonic()), frames=spec.frames, fps=spec.fps,
                            hold=spec.hold)
    except _LinkDown:  # a progress message could not be sent: the connection is gone, no picture's fault
        raise
    except ClipTimeout:  # its message counts from the clip's start; the user's limit counts from the batch's
        fail(f"This clip took longer than the {limit_text(timeout)} limit and was stopped; please try again later.",
             ErrorKind.TIMEOUT)
        return
    except ClipLengthError as err:
        fail(str(err), ErrorKind.INTERNAL)
        return
    except Exception as err:
        if _is_out_of_memory(err):
            _free_gpu_memory()
            logger.warning("clip %s ran out of GPU memory", job.id)
            fail(CLIP_OOM_REASON, ErrorKind.TOO_LARGE)
        else:
            logger.exception("clip %s failed", job.id)
            fail(CLIP_REASON, ErrorKind.INTERNAL)
        return
    started = time.perf_counter()
    frame_ratings = _frame_ratings(stylizer, clip.frames, clip.fps, job.id)
    check_s = time.perf_counter() - started
    max_rating = spec.max_rating
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
        limits = (animator.settings.max_bytes, spec.max_bytes or animator.settings.max_bytes)
        encoded = encode_mp4(clip.frames, clip.fps, hold=clip.hold, max_bytes=min(limits))
    except ClipTooLarge as err:
        fail(str(err), ErrorKind.TOO_LARGE)
        return
    except Exception:
        logger.exception("clip %s could not be encoded", job.id)
        fail(CLIP_ENCODE_REASON, ErrorKind.INTERNAL)
        return
    timings = {**job.timings, **clip.timings, "check": check_s, "encode": time.perf_counter() - started}
    send(Update(ids, Done(
        image=encoded.data, width=encoded.width, height=encoded.height, tags=tags, prompt=clip.prompt, seed=clip.seed,
        style=spec.style, strength=spec.strength, ratings=ratings, timings=timings, speed=spec.speed,
        media=MP4)))


def _frame_ratings(stylizer, frames, fps: int, job_id: str) -> list[dict[str, float]] | None:
    """The tagger's rating scores of the checked frames; None when one of them cannot be rated."""
    from PIL import Image

    from pipeline.gpu.worker import _tag

    picks = rated_frames(len(frames), fps)  # one frame per 0.5 s at most, five at least
    tags = _tag(stylizer, [Image.fromarray(frames[i]) for i in picks], [job_id] * len(picks))
    if any(frame_tags is None for frame_tags in tags):
        return None
    return [frame_tags.ratings for frame_tags in tags]
